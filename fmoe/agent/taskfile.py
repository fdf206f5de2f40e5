"""Task files: a YAML description of one agent run (model, sampling, tools, the task, what to expect).

    task = load_task("task.yaml")        # -> TaskFile, or raises TaskFileError("task.yaml:7: field 'max_steps': ...")
    task.registry                        # the resolved ToolRegistry (load_task(..., resolve_tools=False) skips it)
    task.workspace_path, task.transcript_path, task.model_path   # paths made absolute against the task file

Fields::

    model: path/to/model          # omitted: the embedded demo model (None here; the runtime substitutes it);
                                  # ORG/NAME: from the Hugging Face cache; openai:http://host:8000/v1#NAME: a remote
    api_key_env: MY_KEY           # remote model: the env var with its API key (default FMOE_API_KEY, OPENAI_API_KEY)
    backend: torch                # torch | mlx
    memory_budget: 2GB            # bytes; an int or a size: B, KB/MB/GB/TB (x1000), KiB/MiB/GiB/TiB and K/M/G/T (x1024)
    experts_per_token: 4
    sampling: {temperature: 0.0, top_p: 1.0, top_k: 0, min_p: 0.0, seed: 0}
    thinking: false
    system: "You are ..."
    task: "What is ...?"          # or tasks: [..] (exactly one of the two)
    tools: [calculator, fmoe.tools.demo:get_weather, {file: my_tools.py}, {name: .., description: .., parameters: ..}]
    mcp: [{command: mcp-server-time, args: [..], env: {..}}, {url: http://host/mcp, name: web, timeout: 10}]
                                  # MCP servers (fmoe.tools.mcp): their tools join tools:; started by load_task
    workspace: ./workspace        # root for the file tools (relative to the task file)
    tool_choice: auto             # auto | required | none | {name: lookup}
    parallel_tool_calls: true
    max_steps: 8
    max_tokens: 512
    max_call_tokens: 1024         # a started tool call may run past max_tokens up to this many tokens
    tool_timeout: 30              # seconds per tool call
    max_tool_output: 16384        # bytes of one tool result given back to the model
    transcript: run.jsonl         # relative to the task file
    expect: {calls: [{name: calculator, arguments: {expression: "2+2"}}], answer: "4"}   # answer: a regex

Every error names the file, the line and the field; unknown fields are errors.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from fmoe.errors import FmoeError, TaskFileError
from fmoe.tools.mcp import MCPServerSpec
from fmoe.units import parse_size


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Sampling(_Strict):
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    seed: int | None = 0


class ToolChoiceName(_Strict):
    name: str


class ExpectedCall(_Strict):
    name: str
    arguments: dict[str, Any] | None = None   # the expected arguments (a subset of those actually given)


class Expect(_Strict):
    calls: list[ExpectedCall] | None = None
    answer: str | None = None                  # a regex searched for in the final answer

    @field_validator("answer")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"not a valid regular expression: {e}") from None
        return v


ToolSpec = Union[str, dict[str, Any]]


class TaskFile(_Strict):
    model: str | None = None
    api_key_env: str | None = None
    backend: Literal["torch", "mlx"] = "torch"
    memory_budget: int | None = None
    experts_per_token: int | None = Field(None, ge=1)
    sampling: Sampling = Field(default_factory=Sampling)
    thinking: bool = False
    system: str | None = None
    task: str | None = None
    tasks: list[str] | None = None
    tools: list[ToolSpec] = Field(default_factory=list)
    mcp: list[MCPServerSpec] = Field(default_factory=list)
    workspace: str | None = None
    tool_choice: Union[Literal["auto", "required", "none"], ToolChoiceName] = "auto"
    parallel_tool_calls: bool = True
    max_steps: int = Field(8, ge=1)
    max_tokens: int = Field(512, ge=1)
    max_call_tokens: int = Field(1024, ge=1)
    tool_timeout: float = Field(30.0, gt=0)
    max_tool_output: int = Field(16 * 1024, ge=256)
    transcript: str | None = None
    expect: Expect | None = None

    _path: Path | None = PrivateAttr(default=None)
    _registry: Any = PrivateAttr(default=None)

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return None if v is None else parse_size(v)

    @field_validator("tools", "mcp", mode="before")
    @classmethod
    def _tools_list(cls, v: Any) -> Any:
        return [] if v is None else v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        if v is not None and v.startswith("openai:"):
            from fmoe.agent.remote import parse_remote_spec

            try:
                parse_remote_spec(v)
            except FmoeError as e:
                raise ValueError(str(e)) from None
        return v

    @model_validator(mode="after")
    def _one_task(self) -> "TaskFile":
        if (self.task is None) == (self.tasks is None):
            raise ValueError("give exactly one of 'task' or 'tasks'")
        if self.tasks is not None and not self.tasks:
            raise ValueError("'tasks' is empty")
        return self

    # -- derived -----------------------------------------------------------------------------------------------
    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def base_dir(self) -> Path:
        return self._path.parent if self._path is not None else Path.cwd()

    def _rel(self, p: str | None) -> Path | None:
        return None if p is None else (self.base_dir / Path(p).expanduser())

    @property
    def prompts(self) -> list[str]:
        return [self.task] if self.task is not None else list(self.tasks or [])

    @property
    def workspace_path(self) -> Path | None:
        return self._rel(self.workspace)

    @property
    def transcript_path(self) -> Path | None:
        return self._rel(self.transcript)

    @property
    def is_remote(self) -> bool:
        """``model:`` names an OpenAI-compatible endpoint (openai:URL#NAME; fmoe.agent.remote)."""
        return self.model is not None and self.model.startswith("openai:")

    @property
    def model_path(self) -> Path | None:
        """The model as a path against the task file (None: the embedded demo model)."""
        return self._rel(self.model)

    @property
    def model_ref(self) -> Path | str | None:
        """What the loader resolves (fmoe.engine.loader.resolve_model): ``model_path``, or ``model:`` as written
        when it is a Hugging Face id (ORG/NAME) and no such folder is beside the task file."""
        from fmoe.storage.hf_cache import looks_like_repo_id

        p = self.model_path
        if p is not None and not p.exists() and looks_like_repo_id(self.model):
            return self.model
        return p

    @property
    def registry(self):
        """The ToolRegistry of ``tools`` (resolved by load_task, or now)."""
        if self._registry is None:
            self._registry = self.build_tools()
        return self._registry

    def build_tools(self):
        from fmoe.tools.registry import ToolRegistry

        reg = ToolRegistry()
        for spec in self.tools:
            tools = reg.add_spec(spec, self.base_dir, workspace=self.workspace_path)
            for t in tools:
                t.max_output = self.max_tool_output
        if self.mcp:
            reg.add_mcp(self.mcp, self.base_dir, timeout=self.tool_timeout, max_output=self.max_tool_output,
                        call_format=_task_call_format(self))
        return reg

    def close(self) -> None:
        """Stop what the tools hold (MCP servers); the task's registry is rebuilt if used again."""
        if self._registry is not None:
            self._registry.close()
            self._registry = None


# ---------------------------------------------------------------------------------------------------------------
# YAML positions
# ---------------------------------------------------------------------------------------------------------------
def _node_lines(root: yaml.Node) -> tuple[dict[tuple, int], list[tuple[tuple, int]]]:
    """Map each path (tuple of keys / indices) to the 1-based line of its key (mappings) or item (sequences)."""
    lines: dict[tuple, int] = {(): root.start_mark.line + 1}
    dups: list[tuple[tuple, int]] = []

    def walk(node: yaml.Node, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else str(k.value)
                if key in seen:
                    dups.append((path + (key,), k.start_mark.line + 1))
                seen.add(key)
                lines[path + (key,)] = k.start_mark.line + 1
                walk(v, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[path + (i,)] = item.start_mark.line + 1
                walk(item, path + (i,))

    walk(root, ())
    return lines, dups


def _field_name(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _line_for(lines: dict[tuple, int], loc: tuple) -> tuple[int, tuple]:
    """Longest prefix of loc that has a position (pydantic adds union member names etc. to loc)."""
    loc = tuple(loc)
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]], loc[:n]
    return 1, ()


def _clean_msg(msg: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg


def _format_validation(name: str, lines: dict[tuple, int], e: ValidationError, data: Any) -> str:
    out: list[str] = []
    seen: set[tuple] = set()
    for err in e.errors(include_url=False):
        loc = tuple(err.get("loc", ()))
        line, known = _line_for(lines, loc)
        typ = err.get("type", "")
        if not loc and "'task'" in err.get("msg", ""):  # the task/tasks rule: point at the task line
            for k in ("tasks", "task"):
                if (k,) in lines:
                    line, known, loc = lines[(k,)], (k,), (k,)
                    break
        # pydantic puts union member names into loc: keep only the real path for the field name
        fld = known if known else loc
        if typ == "missing":
            fld = loc
        field = _field_name(fld) or "(top level)"
        if typ == "extra_forbidden":
            msg = "unknown field"
        elif typ == "missing":
            msg = "required field is missing"
        else:
            msg = _clean_msg(err.get("msg", "invalid"))
        key = (line, field)
        if key in seen:  # one message per field (unions report every member)
            continue
        seen.add(key)
        out.append(f"{name}:{line}: field '{field}': {msg}" if field != "(top level)" else f"{name}:{line}: {msg}")
    return "\n".join(out)


def validate_yaml(text: str, name: str, model: type[BaseModel], error: type[FmoeError], expected: str):
    """Parse YAML ``text`` and validate it as ``model``; returns (instance, {field path: line}). Every error is an
    ``error`` naming the file, the line and the field (task files and eval suites share this)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        if e.context_mark is not None and "stream end" in str(e.problem or ""):
            mark = e.context_mark  # unclosed [ { or quote: point where it was opened
        line = mark.line + 1 if mark is not None else 1
        raise error(f"{name}:{line}: YAML syntax error: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise error(f"{name}: YAML error: {e}") from None
    if root is None or data is None:
        raise error(f"{name}:1: empty file (expected {expected})")
    if not isinstance(data, dict):
        raise error(f"{name}:{root.start_mark.line + 1}: expected a mapping of fields, got {type(data).__name__}")
    lines, dups = _node_lines(root)
    if dups:
        dpath, dline = dups[0]
        raise error(f"{name}:{dline}: field '{_field_name(dpath)}': duplicate key")
    try:
        return model.model_validate(data), lines
    except ValidationError as e:
        raise error(_format_validation(name, lines, e, data)) from None


def load_task(path: str | Path, *, resolve_tools: bool = True) -> TaskFile:
    """Read and validate a task file; with resolve_tools, also resolve its tools (errors point at the item)."""
    p = Path(path)
    name = str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise TaskFileError(f"{name}: cannot read: {e.strerror or e}") from None
    return loads_task(text, name=name, path=p, resolve_tools=resolve_tools)


def loads_task(text: str, *, name: str = "<task>", path: str | Path | None = None,
               resolve_tools: bool = True) -> TaskFile:
    """Like load_task, from text (``path`` anchors relative paths; default: the cwd)."""
    task, lines = validate_yaml(text, name, TaskFile, TaskFileError, "a mapping with at least 'task'")
    task._path = Path(path).resolve() if path is not None else None
    if resolve_tools:
        _resolve_tools(task, name, lines)
    return task


def _resolve_tools(task: TaskFile, name: str, lines: dict[tuple, int]) -> None:
    from fmoe.structured.grammar import schema_grammar_check
    from fmoe.tools.registry import ToolRegistry

    reg = ToolRegistry()
    ws = task.workspace_path
    if ws is not None and any(_needs_workspace(s) for s in task.tools) and not ws.is_dir():
        raise TaskFileError(f"{name}:{lines.get(('workspace',), 1)}: field 'workspace': "
                            f"directory does not exist: {ws}")
    call_format = _task_call_format(task)
    for i, spec in enumerate(task.tools):
        try:
            for t in reg.add_spec(spec, task.base_dir, workspace=ws):
                t.max_output = task.max_tool_output
                # a schema the grammar cannot enforce is refused now, before any model is loaded
                schema_grammar_check([t.openai_schema()], call_format)
        except FmoeError as e:
            raise TaskFileError(f"{name}:{lines.get(('tools', i), lines.get(('tools',), 1))}: "
                                f"field 'tools[{i}]': {e}") from None
    if task.mcp:
        try:
            reg.add_mcp(task.mcp, task.base_dir, timeout=task.tool_timeout, max_output=task.max_tool_output,
                        call_format=call_format)
        except FmoeError as e:
            i = getattr(e, "index", None)
            where = (lines.get(("mcp", i), 1), f"mcp[{i}]") if i is not None else (lines.get(("mcp",), 1), "mcp")
            raise TaskFileError(f"{name}:{where[0]}: field '{where[1]}': {e}") from None
    try:
        _check_choice(task, reg, name, lines)
    except TaskFileError:
        reg.close()
        raise
    task._registry = reg


def _task_call_format(task: TaskFile) -> str | None:
    """The call format of the task's model from its chat template (no model load); None when unknown (remote
    models, Hugging Face ids, folders without a template): the schema check then covers the JSON form only."""
    from fmoe.structured.formats import detect_call_format_dir

    try:
        if task.is_remote:
            return None
        ref = task.model_ref
        if ref is None:
            from fmoe.demo import MODEL_DIR

            ref = Path(MODEL_DIR)
        return detect_call_format_dir(ref) if isinstance(ref, Path) else None
    except Exception:  # noqa: BLE001 - only a hint for the schema check
        return None


def _check_choice(task: TaskFile, reg, name: str, lines: dict[tuple, int]) -> None:
    if isinstance(task.tool_choice, ToolChoiceName) and task.tool_choice.name not in reg:
        line = lines.get(("tool_choice", "name"), lines.get(("tool_choice",), 1))
        raise TaskFileError(f"{name}:{line}: field 'tool_choice.name': no tool named "
                            f"{task.tool_choice.name!r} (tools: {', '.join(reg.names()) or 'none'})")
    if task.tool_choice == "required" and not len(reg):
        raise TaskFileError(f"{name}:{lines.get(('tool_choice',), 1)}: field 'tool_choice': "
                            f"'required' but no tools are declared")


def _needs_workspace(spec: Any) -> bool:
    return spec == "files" or (isinstance(spec, dict) and "files" in spec and "root" not in (spec["files"] or {}))
