"""``python -m fmoe ...`` = the ``fmoe`` command (fmoe.cli)."""
import sys

from fmoe.cli import main

sys.exit(main())
