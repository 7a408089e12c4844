"""``python -m innerear`` runs the command line."""
import sys

from innerear.cli import main

sys.exit(main())
