import sys, json
sys.path.insert(0, "tests"); sys.path.insert(0, "tests/engine")
import numpy as np
import test_cuda as T
from fmoe.engine.model import Model
from fmoe.storage.convert import convert
from pathlib import Path
import tiny_models
root = Path("/tmp/diag"); root.mkdir(exist_ok=True)
if not (root / "s4" / "manifest.json").exists():
    tiny_models.build_hf(root / "hf", "stream", seed=3)
    convert(root / "hf", root / "s4", bits=4, group_size=64, progress=False, fsync=False)
    from fmoe.demo import MODEL_DIR
    convert(MODEL_DIR, root / "d4", bits=4, group_size=64, progress=False, fsync=False)
for which, path in (("streamed", root / "s4"), ("demo", root / "d4")):
    ids = T._prompt(which, path)
    r32, t32 = T._greedy(Model.load(path, dtype="float32", stream={"mode": "page-cache"}), ids)
    r16, t16 = T._greedy(Model.load(path, dtype="bfloat16", stream={"mode": "page-cache"}), ids)
    g, tg = T._greedy(Model.load(path, dtype="bfloat16", device="cuda", stream={"mode": "page-cache"}), ids)
    rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())
    print(json.dumps({"model": which, "cuda_vs_cpu32": rel(g, r32), "cuda_vs_cpu16": rel(g, r16), "cpu16_vs_cpu32": rel(r16, r32),
                      "cuda_vs_cpu32_last_prompt_pos": rel(g[0], r32[0]),
                      "tokens_cuda_eq_cpu32": tg == t32, "tokens_cuda_eq_cpu16": tg == t16, "tokens_cpu16_eq_cpu32": t16 == t32}))
