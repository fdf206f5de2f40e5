"""Berkeley Function Calling Leaderboard (BFCL) cases: loader and AST checker.

    suite = load_bfcl_suite("/path/to/bfcl", ["simple_python", "multiple"], limit=None)   # -> fmoe.eval.suite.Suite
    res = check_bfcl(calls=[("f", {"x": 1})], ground_truth=[{"f": {"x": [1]}}], functions=[...], split="simple_python")
    res.ok, res.category, res.message, res.tool_ok

The BFCL files are JSON Lines despite their ``.json`` suffix: ``BFCL_v4_<split>.json`` holds
``{"id", "question": [[{role, content}...]], "function": [...]}`` and ``possible_answer/BFCL_v4_<split>.json`` holds
``{"id", "ground_truth": [{func_name: {arg: [acceptable values...]}}...]}``; ``""`` among the acceptable values
means the argument may be omitted. The data stays where the user keeps it (nothing is copied into fmoe).

Checker semantics follow BFCL's AST checker (bfcl_eval/eval_checker/ast_eval/ast_checker.py): per expected call,
the function name must match, every required argument must be present, no argument outside the declaration,
each value of the declared type (an int is accepted for a float), each value among the acceptable ones (strings
compared after BFCL's standardisation: lower case, without spaces and ``,./-_*^``), and any expected argument not
given must be optional (``""`` acceptable). Parallel splits need the same number of calls, matched in any order.
``irrelevance``: no call is the right answer.

Failure categories: wrong_count, wrong_function, missing_argument, unexpected_argument, wrong_type, wrong_value,
unexpected_call (a call in an irrelevance case).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from fmoe.errors import FmoeError

SPLITS = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance")   # shipped in tests/data
# Every single-turn split of BFCL v4 (gorilla bfcl_eval/data/BFCL_v4_<split>.json), checked by the AST checker.
AST_SPLITS = ("simple_python", "simple_java", "simple_javascript", "multiple", "parallel", "parallel_multiple",
              "irrelevance", "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
              "live_irrelevance", "live_relevance", "java", "javascript", "sql")
# Splits with no call as the right answer / with any call as the right answer (no possible_answer file).
NO_CALL_SPLITS = ("irrelevance", "live_irrelevance")
ANY_CALL_SPLITS = ("live_relevance",)
# Splits this single-turn runner cannot score (state across turns, agentic web/memory tools): skipped with a message.
SKIPPED_PREFIXES = ("multi_turn", "memory", "web_search", "format_sensitivity")


def split_language(split: str) -> str:
    """BFCL's test language of a split: "java", "javascript" or "python" (sql: python, as BFCL's AST checker)."""
    if "javascript" in split:
        return "javascript"
    if "java" in split:
        return "java"
    return "python"


def discover_splits(d: Path) -> tuple[list[str], list[str]]:
    """(splits to run, splits skipped) among the BFCL_v4_*.json files of ``d``."""
    run, skipped = [], []
    for f in sorted(d.glob("BFCL_v4_*.json")):
        s = f.name[len("BFCL_v4_"):-len(".json")]
        (skipped if s.startswith(SKIPPED_PREFIXES) else run).append(s)
    return run, skipped
CATEGORIES = ("wrong_count", "wrong_function", "missing_argument", "unexpected_argument", "wrong_type",
              "wrong_value", "unexpected_call")
_TYPE_MAP = {"dict": "object", "float": "number", "tuple": "array", "double": "number", "long": "integer",
             "int": "integer", "str": "string", "bool": "boolean", "list": "array", "Array": "array"}
_KEEP = {"type", "properties", "required", "items", "enum", "description", "minimum", "maximum", "minItems",
         "maxItems"}


class BFCLError(FmoeError):
    pass


# ------------------------------------------------------------------------------------------------- schema mapping
def to_json_schema(node: Any, top: bool = False) -> Any:
    """BFCL's parameter description -> JSON Schema (dict->object, float->number, tuple->array, any->no constraint)."""
    if not isinstance(node, dict):
        return node
    out: dict = {}
    t = node.get("type")
    if isinstance(t, str):
        t = _TYPE_MAP.get(t, t)
        if t != "any":
            out["type"] = t
    for k, v in node.items():
        if k == "type" or k not in _KEEP:
            continue
        if k == "properties" and isinstance(v, dict):
            out[k] = {pk: to_json_schema(pv) for pk, pv in v.items()}
        elif k == "items":
            out[k] = to_json_schema(v)
        elif k == "required" and isinstance(v, list):
            props = node.get("properties") or {}
            req = [r for r in v if r in props]
            if req:
                out[k] = req
        elif k == "enum" and isinstance(v, list):
            if "type" in out and out["type"] in ("integer", "number"):
                v = [x for x in v if isinstance(x, (int, float)) and not isinstance(x, bool)]
            elif out.get("type") == "string":
                v = [str(x) for x in v]
            if v:
                out[k] = v
        else:
            out[k] = v
    if out.get("type") == "object" and "properties" in out:
        out["additionalProperties"] = False
    if top:
        out.setdefault("type", "object")
        out.setdefault("properties", {})
        out["additionalProperties"] = False
    return out


def _as_strings(node: Any, lang: str) -> Any:
    """Java/JavaScript parameters as BFCL gives them to function-calling models: every value a string holding the
    language's literal (BFCL's language_specific_pre_processing), its type named in the description."""
    if not isinstance(node, dict):
        return node
    out = dict(node)
    props = node.get("properties")
    if isinstance(props, dict):
        out["properties"] = {k: _as_strings(v, lang) for k, v in props.items()}
        return out
    t = node.get("type", "any")
    lang_name = "Java" if lang == "java" else "JavaScript"
    desc = (node.get("description") or "").rstrip()
    out = {"type": "string", "description": (desc + " " if desc else "")
           + f"This is {lang_name} {t} type parameter in string representation."}
    return out


def to_openai_tool(fn: dict, language: str = "python") -> dict:
    params = fn.get("parameters") or {}
    if language in ("java", "javascript"):
        params = _as_strings(dict(params, type="object"), language)
    return {"type": "function", "function": {"name": fn["name"], "description": fn.get("description", ""),
                                             "parameters": to_json_schema(params, top=True)}}


# ------------------------------------------------------------------------------------------------------- loading
def _read_jsonl(p: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as e:
        raise BFCLError(f"{p}: cannot read: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise BFCLError(f"{p}: not JSON Lines: {e}") from None


def load_bfcl(path: str | Path, splits: Iterable[str] | None = None) -> list[dict]:
    """Records {id, split, messages, functions, ground_truth} (ground_truth [] for irrelevance)."""
    d = Path(path).expanduser()
    if not d.is_dir():
        raise BFCLError(f"BFCL directory not found: {d}")
    if splits:
        splits = list(splits)
    else:
        splits, skipped = discover_splits(d)
        if skipped:
            import sys

            print(f"fmoe eval: BFCL splits skipped (multi-turn or agentic: this runner scores single turns): "
                  f"{', '.join(skipped)}", file=sys.stderr)
    out = []
    for s in splits:
        if s.startswith(SKIPPED_PREFIXES):
            raise BFCLError(f"BFCL split {s!r} is multi-turn or agentic: fmoe eval scores single turns only")
        qf = d / f"BFCL_v4_{s}.json"
        if not qf.exists():
            raise BFCLError(f"{qf} is missing (known splits: {', '.join(AST_SPLITS)})")
        answers = {}
        if s not in NO_CALL_SPLITS and s not in ANY_CALL_SPLITS:
            af = d / "possible_answer" / f"BFCL_v4_{s}.json"
            if not af.exists():
                raise BFCLError(f"{af} is missing")
            answers = {r["id"]: r["ground_truth"] for r in _read_jsonl(af)}
        for r in _read_jsonl(qf):
            turns = r.get("question") or [[]]
            gt: Any = answers.get(r["id"], [])
            if s in NO_CALL_SPLITS:
                gt = []
            elif s in ANY_CALL_SPLITS:
                gt = [{"__any__": {}}]
            out.append({"id": r["id"], "split": s, "messages": list(turns[0]), "functions": list(r["function"]),
                        "ground_truth": gt, "language": split_language(s)})
    return out


def load_bfcl_suite(path: str | Path, splits: Iterable[str] | None = None, per_split: int | None = None):
    """A Suite (fmoe.eval.suite) of BFCL records; ``per_split`` keeps the first N of each split."""
    from fmoe.eval.suite import Suite

    recs = load_bfcl(path, splits)
    if per_split:
        kept, count = [], {}
        for r in recs:
            if count.get(r["split"], 0) < per_split:
                kept.append(r)
                count[r["split"]] = count.get(r["split"], 0) + 1
        recs = kept
    cases = []
    for r in recs:
        lang = r.get("language", "python")
        cases.append({"id": r["id"], "kind": r["split"], "tools": [to_openai_tool(f, lang) for f in r["functions"]],
                      "messages": [{"role": m["role"], "content": m["content"]} for m in r["messages"]],
                      "expect": {"bfcl": r["ground_truth"]}, "loop": False})
    return Suite.model_validate({"name": f"bfcl:{','.join(sorted({r['split'] for r in recs}))}",
                                 "description": f"BFCL v4 cases from {path}", "max_tokens": 192, "loop": False,
                                 "cases": cases})


# ------------------------------------------------------------------------------------------------------- checking
@dataclass
class CheckResult:
    ok: bool
    category: str | None = None
    message: str = ""
    tool_ok: bool = False        # the right function name(s) / no call where no call is right


def standardize(s: str) -> str:
    return re.sub(r"[ ,./\-_*^]", "", s).lower().replace("'", '"')


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _type_ok(value: Any, schema: dict) -> bool:
    t = (schema or {}).get("type", "any")
    if t == "any":
        return True
    if t == "string":
        return isinstance(value, str)
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t in ("float", "number", "double"):
        return _is_num(value)
    if t == "boolean":
        return isinstance(value, bool)
    if t in ("array", "tuple"):
        if not isinstance(value, list):
            return False
        items = schema.get("items")
        return not isinstance(items, dict) or all(_type_ok(v, items) for v in value)
    if t in ("dict", "object"):
        return isinstance(value, dict)
    return True


def _matches(value: Any, option: Any) -> bool:
    if isinstance(option, dict):
        if not isinstance(value, dict):
            return False
        for k, v in value.items():
            if k not in option or not any(_matches(v, o) for o in _as_options(option[k])):
                return False
        return all("" in _as_options(o) for k, o in option.items() if k not in value)
    if isinstance(option, list):
        return isinstance(value, list) and len(value) == len(option) and all(
            _matches(v, o) for v, o in zip(value, option))
    if isinstance(option, str):
        return isinstance(value, str) and standardize(value) == standardize(option)
    if isinstance(option, bool) or option is None:
        return value is option
    if _is_num(option):
        return _is_num(value) and float(value) == float(option)
    return value == option


def _as_options(o: Any) -> list:
    return o if isinstance(o, list) else [o]


def check_call(name: str, args: dict, expected: dict, functions: list[dict]) -> CheckResult:
    """One call against one expected {func_name: {arg: [acceptable...]}}."""
    (exp_name, exp_args), = expected.items()
    if name != exp_name:
        return CheckResult(False, "wrong_function", f"called {name!r}, expected {exp_name!r}")
    fn = next((f for f in functions if f["name"] == exp_name), None)
    params = (fn or {}).get("parameters") or {}
    props = params.get("properties") or {}
    for r in params.get("required") or []:
        if r not in args:
            return CheckResult(False, "missing_argument", f"{name}: missing required argument {r!r}", True)
    for k, v in args.items():
        if k not in props or k not in exp_args:
            return CheckResult(False, "unexpected_argument", f"{name}: unexpected argument {k!r}", True)
        if not _type_ok(v, props[k]) and not any(_matches(v, o) for o in _as_options(exp_args[k]) if o != ""):
            # a value listed as acceptable is never a type error: BFCL accepts variable names given as strings
            # ("data['sales']" for an array), and a few possible answers contradict their own declaration
            return CheckResult(False, "wrong_type", f"{name}: argument {k!r} = {v!r} is not of type "
                                                    f"{props[k].get('type')!r}", True)
        if not any(_matches(v, o) for o in _as_options(exp_args[k]) if o != ""):
            return CheckResult(False, "wrong_value", f"{name}: argument {k!r} = {v!r} is not one of "
                                                     f"{exp_args[k]!r}", True)
    for k, opts in exp_args.items():
        if k not in args and "" not in _as_options(opts):
            return CheckResult(False, "missing_argument", f"{name}: argument {k!r} not given and not optional", True)
    return CheckResult(True, None, "", True)


def check_bfcl(calls: list[tuple[str, dict]], ground_truth: list[dict], functions: list[dict],
               split: str = "") -> CheckResult:
    """All calls of one turn against the ground truth (``[]``: no call is right). ``functions``: BFCL's own
    declarations (their ``type`` names are understood) or JSON Schema ones."""
    if not ground_truth:
        if calls:
            return CheckResult(False, "unexpected_call", f"no call is right here, got {len(calls)}")
        return CheckResult(True, None, "", True)
    if ground_truth == [{"__any__": {}}]:      # relevance: any call of a declared function is right
        names = {f["name"] for f in functions}
        ok = bool(calls) and all(n in names for n, _ in calls)
        return CheckResult(ok, None if ok else "wrong_count", "" if ok else "a call was expected", ok)
    exp_names = sorted(next(iter(g)) for g in ground_truth)
    tool_ok = sorted(n for n, _ in calls) == exp_names
    if len(calls) != len(ground_truth):
        return CheckResult(False, "wrong_count", f"{len(calls)} call(s), expected {len(ground_truth)}", False)
    if len(ground_truth) == 1:
        r = check_call(calls[0][0], calls[0][1], ground_truth[0], functions)
        r.tool_ok = tool_ok
        return r
    # parallel: match each expected call to a distinct actual call, in any order
    used: set[int] = set()
    for g in ground_truth:
        first_fail = None
        for i, (n, a) in enumerate(calls):
            if i in used:
                continue
            r = check_call(n, a, g, functions)
            if r.ok:
                used.add(i)
                break
            if first_fail is None or (first_fail.category == "wrong_function" and r.category != "wrong_function"):
                first_fail = r
        else:
            fail = first_fail or CheckResult(False, "wrong_count", "no call left to match")
            fail.tool_ok = tool_ok
            return fail
    return CheckResult(True, None, "", True)


def good_answer(ground_truth: list[dict], functions: list[dict] | None = None) -> list[tuple[str, dict]]:
    """Calls built from the first acceptable value of each argument ("" first: the argument is left out). With
    ``functions``, two data quirks are handled: a required argument whose first value is "" gets its first real
    value, and an argument the declaration does not have is left out."""
    decl = {f["name"]: (f.get("parameters") or {}) for f in functions or []}
    def build(v: Any) -> Any:
        if isinstance(v, dict):
            out = {}
            for k, opts in v.items():
                o = _as_options(opts)
                if o and o[0] != "":
                    out[k] = build(o[0])
            return out
        if isinstance(v, list):
            return [build(x) for x in v]
        return v

    calls = []
    for g in ground_truth:
        (name, args), = g.items()
        params = decl.get(name)
        out = {}
        for k, v in args.items():
            o = _as_options(v)
            if params is not None:
                if k not in (params.get("properties") or {}):
                    continue
                if k in (params.get("required") or []):
                    o = [x for x in o if x != ""]
            if o and o[0] != "":
                out[k] = build(o[0])
        calls.append((name, out))
    return calls
