"""``python -m truncfast`` runs the command line (see :mod:`truncfast.cli`)."""

import sys

from .cli import main

sys.exit(main())
