import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see fmoe/__init__.py; before torch loads

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
