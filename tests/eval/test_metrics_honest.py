"""Issue #16 item 4: rates over nothing are null ("-" in the table); per-token figures count generated tokens so
grammar-on (forced tokens share passes) and grammar-off rows compare."""
from __future__ import annotations

import json
from types import SimpleNamespace

from fmoe.eval.report import cell, markdown
from fmoe.eval.run import Acc


def _step(text, tokens, forced, passes, nbytes, decode_s=1.0):
    return SimpleNamespace(tokens=tokens, forced_tokens=forced, timings={"decode_s": decode_s}, decode_bytes=nbytes,
                           decode_passes=passes, text=text, parse_failure=None, closed_early=0)


def test_zero_attempts_are_null_and_dash():
    a = Acc()
    a.add_turn(_step("just text", 10, 0, 10, 1000))
    m = a.metrics()
    assert m["parse_rate"] is None and m["schema_valid_rate"] is None
    assert json.loads(json.dumps(m))["schema_valid_rate"] is None
    assert cell("schema_valid_rate", m["schema_valid_rate"]) == "-"


def test_per_token_figures_count_forced_tokens():
    on, off = Acc(), Acc()
    on.add_turn(_step("<tool_call>x", 20, 15, 5, 5_000_000))     # 20 tokens in 5 passes (15 forced)
    off.add_turn(_step("<tool_call>x", 20, 0, 20, 20_000_000))   # 20 tokens in 20 passes
    mon, moff = on.metrics(), off.metrics()
    assert mon["bytes_per_pass"] == moff["bytes_per_pass"] == 1_000_000
    assert mon["bytes_per_token"] == 250_000 and moff["bytes_per_token"] == 1_000_000
    assert mon["tok_s"] == 20 and mon["sampled_tok_s"] == 5
    md = markdown({"suite": "s", "model": "m", "backend": "torch", "call_format": "xml", "cases": 1,
                   "kl_reference": {"bits": 4, "experts_per_token": 4, "positions": 1},
                   "variants": [dict(mon, bits=4, experts_per_token=4, grammar=True, kl_vs_reference=0.0)]})
    assert "MB/pass" in md and "sampled/s" in md
