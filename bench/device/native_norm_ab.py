"""A/B of the CPU decode's RMSNorm by one native call (TorchBackend.native_norm, the default) against torch's op: the
``native_norm`` setting of bench/device/decode_rest_ab.py (sessions 14-15 ran it by this name).

    python3 bench/device/native_norm_ab.py MODEL_DIR [ROUNDS]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_rest_ab import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main([sys.argv[1], "native_norm", *sys.argv[2:3]]))
