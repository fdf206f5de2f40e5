"""The GPU kernel table's arithmetic (fmoe/bench/cuda_kernels.py) without a GPU: each mat-vec row's fraction of the
read-only peer timed for the same call, and the markdown table, from rows shaped as a real run writes them (the
H200 run of bench/results/session8/call7, committed)."""
import json
from pathlib import Path

from fmoe.bench import cuda_kernels

RUN = Path(__file__).resolve().parents[2] / "bench" / "results" / "session8" / "call7" / "cuda_kernels.json"


def test_fraction_of_the_read_peer_pairs_each_row_with_its_own_call():
    res = json.loads(RUN.read_text())
    rows = res["rows"]
    cuda_kernels.of_read_peer(rows)
    assert sum(r["kernel"] == "read (peer)" for r in rows) == 5     # 2 shapes x (10, 64) rows + gate+up
    for r in rows:
        if "peer" in r["kernel"]:
            assert "fraction_of_read_peer" not in r
            continue
        # the peer of a call reads that call's bytes (to 16 bytes): gate+up's 40 MB, not the same shape's 20 MB
        [peer] = [p for p in rows if p["kernel"] == "read (peer)" and abs(p["bytes"] - r["bytes"]) < 16]
        assert abs(r["fraction_of_read_peer"] - r["bytes_per_s"] / peer["bytes_per_s"]) < 1e-12
    md = cuda_kernels.markdown(res)
    engine_decode = [line for line in md.splitlines() if line.startswith("| cuda | 4 | 1024 x 4096 | 10 |")][0]
    assert engine_decode.split("|")[8].strip() == f"{rows[0]['fraction_of_read_peer']:.2f}"
