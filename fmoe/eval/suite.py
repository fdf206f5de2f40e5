"""Evaluation suites for ``fmoe eval``: a YAML list of tool-calling cases, validated with pydantic.

    suite = load_suite("my_suite.yaml")     # -> Suite, or raises SuiteError("my_suite.yaml:12: field 'cases[1].expect': ...")
    suite = resolve_suite("demo-heldout")   # a built-in suite name, a YAML path, or "bfcl:DIR[:split,...]"

Format::

    name: my-suite
    description: what it measures
    call_format: auto            # auto (from the chat template) | xml | hermes
    max_tokens: 256              # per assistant turn
    max_call_tokens: 1024        # a tool call started in a turn may run past max_tokens up to this many tokens
    loop: false                  # run each case to a final answer with the tools (needs expect.answer)
    max_steps: 6                 # assistant turns per case when looping
    tools:                       # optional named tool declarations (OpenAI style), referenced by name in cases
      lookup: {name: lookup, description: ..., parameters: {type: object, properties: {...}}}
    cases:
      - id: c1
        kind: single             # free label, used to group results
        tools: [calculator, lookup]          # demo tools by name, names declared above, or inline declarations
        tool_choice: auto        # auto | required | none
        messages: [{role: user, content: "What is 2+2?"}]    # the prompt (ends before the turn to predict)
        reference: [...]         # optional: the reference continuation (assistant/tool messages), for the KL text
        workspace: {notes.txt: "..."}        # files for the file tools when looping
        time_seed: 0             # the demo current_time tool's seeded clock (reproducible answers)
        expect:
          calls: [[{name: calculator, arguments: {expression: "2+2"}}]]   # per assistant turn; [] = no call
          answer: ["4"]          # strings that must all appear in the final answer (case-insensitive)

Every error names the file, the line and the field; unknown fields are errors.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fmoe.tools.demo import TOOL_NAMES as DEMO_TOOL_NAMES
from fmoe.errors import FmoeError

SUITES_DIR = Path(__file__).resolve().parent / "suites"
BUILTIN = {"demo-heldout": SUITES_DIR / "demo_heldout.yaml", "demo-test": SUITES_DIR / "demo_test.yaml"}


class SuiteError(FmoeError):
    """A suite file that cannot be used (message: FILE:LINE: field 'x': why)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    tool_calls: list[dict[str, Any]] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


class Call(_Strict):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class Expect(_Strict):
    calls: list[list[Call]] | None = None      # per assistant turn; [] at a turn = no call is right
    answer: list[str] | None = None            # all must appear (case-insensitive) in the final answer
    bfcl: list[dict[str, Any]] | None = None   # BFCL possible_answer ground truth (checked by fmoe.eval.bfcl)

    @field_validator("answer", mode="before")
    @classmethod
    def _one(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


ToolRef = Union[str, dict[str, Any]]


class Case(_Strict):
    id: str
    kind: str = "case"
    tools: list[ToolRef] = Field(default_factory=list)
    tool_choice: Literal["auto", "required", "none"] = "auto"
    messages: list[Message]
    reference: list[Message] = Field(default_factory=list)
    workspace: dict[str, str] = Field(default_factory=dict)
    thinking: bool = False
    time_seed: int = Field(0, ge=0)            # the demo tools' seeded clock (current_time) for this case
    expect: Expect = Field(default_factory=Expect)
    loop: bool | None = None                   # None: the suite's setting

    @field_validator("messages")
    @classmethod
    def _nonempty(cls, v: list) -> list:
        if not v:
            raise ValueError("a case needs at least one message")
        return v


class Suite(_Strict):
    name: str
    description: str = ""
    call_format: Literal["auto", "xml", "hermes"] = "auto"
    max_tokens: int = Field(256, ge=1)
    max_call_tokens: int = Field(1024, ge=1)   # a started call may run past max_tokens up to this many tokens
    loop: bool = False
    max_steps: int = Field(6, ge=1)
    tools: dict[str, dict[str, Any]] = Field(default_factory=dict)
    cases: list[Case]

    @model_validator(mode="after")
    def _check(self) -> "Suite":
        if not self.cases:
            raise ValueError("'cases' is empty")
        seen: set[str] = set()
        for c in self.cases:
            if c.id in seen:
                raise ValueError(f"duplicate case id {c.id!r}")
            seen.add(c.id)
        return self

    def tool_schemas(self, case: Case) -> list[dict]:
        """OpenAI-style schemas of a case's tools (names resolved against the suite and the demo tools)."""
        out = []
        for t in case.tools:
            if isinstance(t, dict):
                out.append(_as_openai(t))
            elif t in self.tools:
                out.append(_as_openai(self.tools[t]))
            else:
                out.append(demo_tool_schema(t))
        return out

    def case_loops(self, case: Case) -> bool:
        return (self.loop if case.loop is None else case.loop) and bool(case.expect.answer)


def _as_openai(spec: dict) -> dict:
    if spec.get("type") == "function" and isinstance(spec.get("function"), dict):
        return spec
    return {"type": "function", "function": {"name": spec["name"], "description": spec.get("description", ""),
                                             "parameters": spec.get("parameters") or {"type": "object",
                                                                                      "properties": {}}}}


def demo_tool_schema(name: str) -> dict:
    from fmoe.tools.demo import tool_schemas

    schemas = tool_schemas()
    if name not in schemas:
        raise SuiteError(f"unknown tool {name!r} (declare it under 'tools:' or use one of {', '.join(schemas)})")
    return schemas[name]


# ---------------------------------------------------------------------------------------------------------------
def load_suite(path: str | Path) -> Suite:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise SuiteError(f"{path}: cannot read: {e.strerror or e}") from None
    return loads_suite(text, name=str(path))


def loads_suite(text: str, name: str = "<suite>") -> Suite:
    from fmoe.agent.taskfile import validate_yaml

    suite, lines = validate_yaml(text, name, Suite, SuiteError, "a mapping with 'name' and 'cases'")
    # tool references must resolve
    for i, c in enumerate(suite.cases):
        for j, t in enumerate(c.tools):
            if isinstance(t, str) and t not in suite.tools and t not in DEMO_TOOL_NAMES:
                line = lines.get(("cases", i, "tools", j), lines.get(("cases", i), 1))
                raise SuiteError(f"{name}:{line}: field 'cases[{i}].tools[{j}]': unknown tool {t!r} "
                                 f"(declare it under 'tools:' or use a demo tool: {', '.join(DEMO_TOOL_NAMES)})")
            if isinstance(t, dict) and "name" not in t and "function" not in t:
                line = lines.get(("cases", i, "tools", j), 1)
                raise SuiteError(f"{name}:{line}: field 'cases[{i}].tools[{j}]': a tool declaration needs 'name'")
    check_suite_schemas(suite, name, lines)
    return suite


def check_suite_schemas(suite: Suite, name: str = "<suite>", lines: dict | None = None,
                        call_format: str | None = None) -> None:
    """SuiteError naming the case, the tool and the keyword when the grammar could not enforce a tool's schema
    (fmoe.structured.grammar.schema_grammar_check): at load, before any model is converted or loaded."""
    from fmoe.structured.grammar import schema_grammar_check
    from fmoe.structured.schema import UnsupportedSchemaError

    fmt = call_format or (suite.call_format if suite.call_format != "auto" else None)
    lines = lines or {}
    seen: set[str] = set()
    for i, c in enumerate(suite.cases):
        for j, schema in enumerate(suite.tool_schemas(c)):
            key = json.dumps(schema, sort_keys=True)
            if key in seen:
                continue
            try:
                schema_grammar_check([schema], fmt)
            except UnsupportedSchemaError as e:
                ref = c.tools[j]
                fld, line = (f"tools.{ref}", lines.get(("tools", ref), 1)) if isinstance(ref, str) else \
                    (f"cases[{i}].tools[{j}]", lines.get(("cases", i, "tools", j), lines.get(("cases", i), 1)))
                raise SuiteError(f"{name}:{line}: field '{fld}': {e}") from None
            seen.add(key)


def resolve_suite(spec: str, per_split: int | None = None) -> Suite:
    """A built-in name, a YAML path, or ``bfcl:DIR[:split,split]`` (``per_split``: the first N cases of each BFCL
    split; not used by the other kinds)."""
    if spec.startswith("bfcl:"):
        from fmoe.eval.bfcl import load_bfcl_suite

        rest = spec[len("bfcl:"):]
        path, _, splits = rest.partition(":") if not Path(rest).exists() else (rest, "", "")
        return load_bfcl_suite(path, splits.split(",") if splits else None, per_split=per_split)
    if spec in BUILTIN:
        p = BUILTIN[spec]
        if not p.exists():
            raise SuiteError(f"built-in suite {spec!r} is missing ({p})")
        return load_suite(p)
    p = Path(spec)
    if not p.exists():
        raise SuiteError(f"no suite {spec!r}: not a file, not a built-in ({', '.join(BUILTIN)}), not bfcl:DIR")
    return load_suite(p)
