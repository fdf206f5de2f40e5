"""A task's ``expect:`` verdict: the expected calls (in order, other calls may come between) and an answer regex.

    verdict = check_expect({"calls": [{"name": "calculator", "arguments": {"expression": "2+2"}}], "answer": "4"},
                           result.tool_calls, result.answer)    # -> {passed, calls_ok, answer_ok, missing_calls}
"""
from __future__ import annotations

import json
import re
from typing import Any


def normalize_json(x: Any) -> Any:
    """JSON round trip with sorted keys; integral floats become ints (2.0 == 2)."""
    x = json.loads(json.dumps(x, sort_keys=True, default=str))

    def fix(v):
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, dict):
            return {k: fix(w) for k, w in v.items()}
        if isinstance(v, list):
            return [fix(w) for w in v]
        return v
    return fix(x)


def call_matches(expected: dict, actual: dict) -> bool:
    """Same name; every expected argument present with an equal value after JSON normalisation (expected arguments
    are a subset of those given; None = any arguments)."""
    if expected.get("name") != actual.get("name"):
        return False
    exp_args = expected.get("arguments")
    if exp_args is None:
        return True
    got = normalize_json(actual.get("arguments") or {})
    return all(k in got and got[k] == v for k, v in normalize_json(exp_args).items())


def check_expect(expect, calls: list[dict], answer: str | None) -> dict:
    """expect (taskfile.Expect or dict) -> {passed, calls_ok, answer_ok, missing_calls}. Expected calls must appear
    in order (other calls may come between them); the answer regex is searched for in the final answer."""
    if expect is None:
        return {"passed": True}
    e = expect.model_dump() if hasattr(expect, "model_dump") else dict(expect)
    out: dict[str, Any] = {}
    missing = []
    if e.get("calls"):
        i = 0
        for exp in e["calls"]:
            while i < len(calls) and not call_matches(exp, calls[i]):
                i += 1
            if i == len(calls):
                missing.append(exp)
            else:
                i += 1
        out["calls_ok"] = not missing
        out["missing_calls"] = missing
    if e.get("answer") is not None:
        out["answer_ok"] = answer is not None and re.search(e["answer"], answer) is not None
    out["passed"] = all(v for k, v in out.items() if k.endswith("_ok"))
    return out
