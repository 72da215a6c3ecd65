"""``python -m truncfast`` runs the command line (see ``truncfast._app.cli``)."""

import sys

from truncfast._app.cli import main

sys.exit(main())
