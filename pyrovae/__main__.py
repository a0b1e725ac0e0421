"""``python -m pyrovae`` runs the command line."""

import sys

from pyrovae.cli.main import main

sys.exit(main())
