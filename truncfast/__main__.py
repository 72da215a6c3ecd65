"""``python -m truncfast`` runs the command line (see :mod:`truncfast.cli`)."""

import sys

from truncfast._app.cli import main

sys.exit(main())
