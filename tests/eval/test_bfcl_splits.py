"""Issue #16 item 5: every BFCL_v4 split file present loads (live_*, java, javascript, ...), with per-language
schemas and checks; multi-turn and agentic splits are skipped with a message."""
from __future__ import annotations

import json

from fmoe.eval.bfcl import check_bfcl, load_bfcl, load_bfcl_suite

FN = {"name": "get_x", "description": "d", "parameters": {"type": "dict", "properties": {
    "a": {"type": "integer", "description": "an int"}}, "required": ["a"]}}
JFN = {"name": "Foo.bar", "description": "d", "parameters": {"type": "dict", "properties": {
    "list": {"type": "ArrayList", "description": "items"}, "flag": {"type": "boolean"}}, "required": ["list"]}}


def _write(d, split, rows, answers=None):
    (d / f"BFCL_v4_{split}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if answers is not None:
        (d / "possible_answer").mkdir(exist_ok=True)
        (d / "possible_answer" / f"BFCL_v4_{split}.json").write_text("".join(json.dumps(r) + "\n" for r in answers))


def _q(i, fn):
    return {"id": i, "question": [[{"role": "user", "content": "q"}]], "function": [fn]}


def test_every_single_turn_split_loads_and_multi_turn_is_skipped(tmp_path, capsys):
    _write(tmp_path, "live_simple", [_q("ls_0", FN)], [{"id": "ls_0", "ground_truth": [{"get_x": {"a": [1]}}]}])
    _write(tmp_path, "simple_java", [_q("j_0", JFN)],
           [{"id": "j_0", "ground_truth": [{"Foo.bar": {"list": ["new ArrayList<>()"], "flag": ["", "true"]}}]}])
    _write(tmp_path, "simple_javascript", [_q("js_0", JFN)],
           [{"id": "js_0", "ground_truth": [{"Foo.bar": {"list": ["[1, 2]"], "flag": [""]}}]}])
    _write(tmp_path, "live_irrelevance", [_q("li_0", FN)])
    _write(tmp_path, "live_relevance", [_q("lr_0", FN)])
    _write(tmp_path, "multi_turn_base", [{"id": "mt_0", "question": [[], []], "function": []}])
    recs = load_bfcl(tmp_path)
    assert {r["split"] for r in recs} == {"live_simple", "simple_java", "simple_javascript", "live_irrelevance",
                                          "live_relevance"}
    assert "multi_turn_base" in capsys.readouterr().err
    suite = load_bfcl_suite(tmp_path)
    by = {c.id: c for c in suite.cases}
    jparams = by["j_0"].tools[0]["function"]["parameters"]
    assert jparams["properties"]["list"]["type"] == "string" and "Java" in jparams["properties"]["list"]["description"]
    assert by["ls_0"].tools[0]["function"]["parameters"]["properties"]["a"]["type"] == "integer"
    fns = [t["function"] for t in by["j_0"].tools]
    assert check_bfcl([("Foo.bar", {"list": "new ArrayList<>()"})], by["j_0"].expect.bfcl, fns).ok
    assert not check_bfcl([("Foo.bar", {"list": ["x"]})], by["j_0"].expect.bfcl, fns).ok
    fns = [t["function"] for t in by["lr_0"].tools]
    assert check_bfcl([("get_x", {"a": 3})], by["lr_0"].expect.bfcl, fns).ok
    assert not check_bfcl([], by["lr_0"].expect.bfcl, fns).ok
    assert check_bfcl([], by["li_0"].expect.bfcl, fns).ok
    assert not check_bfcl([("get_x", {"a": 3})], by["li_0"].expect.bfcl, fns).ok
