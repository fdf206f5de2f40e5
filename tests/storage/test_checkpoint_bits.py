"""A quantized checkpoint whose config.json names a bit width or group size the kernels do not have is refused with
an error naming the tensor and the supported widths (not a raw ValueError deep in the kernels)."""
import json

import pytest

from fmoe.errors import FmoeError
from tiny_models import build_hf, mlx_convert, to_release_layout


@pytest.mark.parametrize("bits, group", [(7, 64), (4, 48)])
def test_unsupported_width_in_config_is_refused_naming_the_tensor(tmp_path, bits, group):
    from fmoe.engine.model import Model

    build_hf(tmp_path / "hf", "qwen3_5_a", seed=0)
    to_release_layout(tmp_path / "hf", tmp_path / "release")
    mlx_convert(tmp_path / "release", tmp_path / "q4", 4)
    cfg_path = tmp_path / "q4" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    quant = cfg.get("quantization") or cfg["text_config"]["quantization"]
    key = next(k for k in quant if k.endswith("layers.0.mlp.gate"))   # mlx-lm's per-tensor entry (8-bit router)
    quant[key] = {"bits": bits, "group_size": group}
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(FmoeError, match=r"layers\.0\.mlp\.gate.*supported: bits 2, 3, 4, 5, 6, 8"):
        Model.load(tmp_path / "q4")
