"""The BFCL checker on BFCL's own possible_answer data (a subset kept in tests/data, see tests/data/SOURCES.md)."""
from pathlib import Path

import pytest

from fmoe.eval.bfcl import check_bfcl, good_answer, load_bfcl, load_bfcl_suite, to_json_schema

BFCL = Path(__file__).resolve().parents[1] / "data" / "extdata" / "bfcl"  # first 50 questions of each split
SPLITS = ("simple_python", "multiple", "parallel", "parallel_multiple")


@pytest.fixture(scope="module")
def recs():
    return load_bfcl(BFCL)


@pytest.mark.parametrize("split", SPLITS)
def test_good_answers_pass(recs, split):
    rs = [r for r in recs if r["split"] == split]
    assert len(rs) >= 50
    for r in rs:
        res = check_bfcl(good_answer(r["ground_truth"], r["functions"]), r["ground_truth"], r["functions"])
        assert res.ok and res.tool_ok, (r["id"], res)
        # same with the JSON Schema declarations the grammar sees
        fns = [{"name": f["name"], "parameters": to_json_schema(f["parameters"], top=True)} for f in r["functions"]]
        assert check_bfcl(good_answer(r["ground_truth"], fns), r["ground_truth"], fns).ok, r["id"]


def _simple(recs):
    return [r for r in recs if r["split"] == "simple_python"]


def test_wrong_function_name(recs):
    for r in _simple(recs)[:50]:
        calls = good_answer(r["ground_truth"], r["functions"])
        calls[0] = (calls[0][0] + "_x", calls[0][1])
        res = check_bfcl(calls, r["ground_truth"], r["functions"])
        assert not res.ok and res.category == "wrong_function" and not res.tool_ok


def test_dropped_required_argument(recs):
    n = 0
    for r in _simple(recs):
        calls = good_answer(r["ground_truth"], r["functions"])
        req = r["functions"][0]["parameters"].get("required") or []
        if not req or req[0] not in calls[0][1]:
            continue
        del calls[0][1][req[0]]
        res = check_bfcl(calls, r["ground_truth"], r["functions"])
        assert not res.ok and res.category == "missing_argument", (r["id"], res)
        n += 1
    assert n >= 0.9 * len(_simple(recs))


def _mutate(recs, kind):
    n = 0
    for r in _simple(recs):
        calls = good_answer(r["ground_truth"], r["functions"])
        props = r["functions"][0]["parameters"]["properties"]
        name, args = calls[0]
        for k, v in args.items():
            t = props[k].get("type")
            if kind == "type" and t == "integer" and isinstance(v, int):
                args[k] = f"v{v}"
            elif kind == "type" and t == "string" and isinstance(v, str):
                args[k] = [v]
            elif kind == "value" and t == "integer" and isinstance(v, int):
                args[k] = v + 7919
            elif kind == "value" and t == "string" and isinstance(v, str) and "" not in r["ground_truth"][0][name][k]:
                args[k] = v + " zzq"
            else:
                continue
            res = check_bfcl(calls, r["ground_truth"], r["functions"])
            assert not res.ok and res.category == f"wrong_{kind}", (r["id"], k, res)
            n += 1
            break
    return n


def test_wrong_type(recs):
    assert _mutate(recs, "type") >= 0.9 * len(_simple(recs))


def test_wrong_value(recs):
    assert _mutate(recs, "value") >= 0.9 * len(_simple(recs))


def test_parallel_count_and_order(recs):
    for r in [r for r in recs if r["split"] == "parallel"][:40]:
        calls = good_answer(r["ground_truth"], r["functions"])
        assert check_bfcl(list(reversed(calls)), r["ground_truth"], r["functions"]).ok
        res = check_bfcl(calls[:-1], r["ground_truth"], r["functions"])
        assert not res.ok and res.category == "wrong_count"


def test_irrelevance(recs):
    rs = [r for r in recs if r["split"] == "irrelevance"]
    assert rs
    for r in rs[:20]:
        assert check_bfcl([], r["ground_truth"], r["functions"]).ok
        f = r["functions"][0]["name"]
        res = check_bfcl([(f, {})], r["ground_truth"], r["functions"])
        assert not res.ok and res.category == "unexpected_call"


def test_suite_from_bfcl():
    s = load_bfcl_suite(BFCL, ["simple_python", "irrelevance"], per_split=3)
    assert len(s.cases) == 6
    t = s.tool_schemas(s.cases[0])[0]["function"]["parameters"]
    assert t["type"] == "object" and t["additionalProperties"] is False


def test_nested_dict_values():
    gt = [{"f": {"d": [{"a": [1, 2], "b": ["x", ""]}]}}]
    fns = [{"name": "f", "parameters": {"type": "dict", "properties": {"d": {"type": "dict"}}, "required": ["d"]}}]
    assert check_bfcl([("f", {"d": {"a": 2}})], gt, fns).ok
    assert check_bfcl([("f", {"d": {"a": 1, "b": "X"}})], gt, fns).ok
    assert check_bfcl([("f", {"d": {"a": 3}})], gt, fns).category == "wrong_value"
