"""Remote models: the agent's turn against an OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp,
fmoe serve, OpenAI, ...) instead of the local engine.

    model = resolve_remote("openai:http://127.0.0.1:8000/v1#Qwen3.5-35B-A3B")   # None for anything else
    agent = Agent(model, None, registry)        # Agent.turn dispatches to model.turn(...)
    step = model.turn(messages, schemas, settings, tool_choice="auto")           # -> ModelStep

Spec: ``openai:URL#MODEL`` (without ``#MODEL``: the endpoint's first model in /models). The API key comes from the
environment: ``api_key_env`` (a task file's ``api_key_env:``), else ``FMOE_API_KEY``, else ``OPENAI_API_KEY``
(none: "EMPTY", what local servers accept).

Tools go to the endpoint as ``tools`` (OpenAI function schemas) with ``tool_choice`` and ``parallel_tool_calls``.
Nothing constrains the remote's output, so its calls are checked here as the local ones are: each call is written
as a Hermes ``<tool_call>`` block (``ModelStep.text``) and read back by fmoe.structured.parser, which parses the
arguments and validates them with jsonschema. A call whose arguments are not JSON is ``unparsable``, one that fails
its schema ``schema_violation``, one naming no declared tool ``unknown_tool``: the ModelStep keeps the valid calls
before it and the failure, so the agent feeds the error back and ``fmoe eval`` reports the remote's own parse and
schema-valid rates.

Messages are sent in the OpenAI wire format: assistant calls get ids, tool results answer them in order, and a
tool message that answers no call (the agent's feedback on an invalid call) is sent as a user message.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlparse

from fmoe.agent.steps import ModelStep
from fmoe.errors import FmoeError

PREFIX = "openai:"
KEY_ENVS = ("FMOE_API_KEY", "OPENAI_API_KEY")


class RemoteModelError(FmoeError):
    """A remote model spec is malformed, or the endpoint cannot be reached or refuses the request."""


def is_remote_spec(spec: Any) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse_remote_spec(spec: str) -> tuple[str, str | None]:
    """``openai:URL#MODEL`` -> (base url, model name or None)."""
    if not is_remote_spec(spec):
        raise RemoteModelError(f"not a remote model spec: {spec!r} (expected openai:http://HOST:PORT/v1#MODEL)")
    url, _, name = spec[len(PREFIX):].partition("#")
    u = urlparse(url)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise RemoteModelError(f"remote model {spec!r}: expected openai:http://HOST:PORT/v1#MODEL "
                               f"(an http:// or https:// URL)")
    return url.rstrip("/"), (name.strip() or None)


def api_key(api_key_env: str | None = None) -> str:
    """The API key from ``api_key_env`` (which must then be set), else FMOE_API_KEY, else OPENAI_API_KEY."""
    if api_key_env:
        v = os.environ.get(api_key_env)
        if not v:
            raise RemoteModelError(f"api_key_env: the environment variable {api_key_env} is not set")
        return v
    for k in KEY_ENVS:
        if os.environ.get(k):
            return os.environ[k]
    return "EMPTY"


def resolve_remote(spec: Any, api_key_env: str | None = None, **kw) -> "RemoteModel | None":
    """A RemoteModel for an ``openai:`` spec; None for anything else (a local model)."""
    if not is_remote_spec(spec):
        return None
    return RemoteModel.from_spec(spec, api_key_env=api_key_env, **kw)


# ---------------------------------------------------------------------------------------------------- messages
def wire_messages(messages: list[dict]) -> list[dict]:
    """The agent's messages in the OpenAI wire format (ids for calls, JSON-string arguments, tool_call_id)."""
    out: list[dict] = []
    pending: list[tuple[str, str]] = []   # (id, name) of calls not answered yet
    n = 0
    for m in messages:
        role = m.get("role")
        if role == "assistant":
            msg: dict = {"role": "assistant", "content": m.get("content") or ""}
            calls = []
            for c in m.get("tool_calls") or []:
                f = c.get("function", c)
                n += 1
                cid = c.get("id") or f"call_{n}"
                args = f.get("arguments")
                calls.append({"id": cid, "type": "function",
                              "function": {"name": f.get("name"), "arguments": args if isinstance(args, str)
                                           else json.dumps(args if args is not None else {}, ensure_ascii=False)}})
                pending.append((cid, f.get("name")))
            if calls:
                msg["tool_calls"] = calls
                if not msg["content"]:
                    msg["content"] = None
            out.append(msg)
        elif role == "tool":
            content = m.get("content")
            content = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
            if m.get("tool_call_id"):
                pending = [p for p in pending if p[0] != m["tool_call_id"]]
                out.append({"role": "tool", "tool_call_id": m["tool_call_id"], "content": content})
            elif pending:
                i = next((j for j, p in enumerate(pending) if p[1] == m.get("name")), 0)
                cid, _ = pending.pop(i)
                out.append({"role": "tool", "tool_call_id": cid, "content": content})
            else:   # feedback that answers no call (e.g. "Error: invalid tool call: ...")
                out.append({"role": "user", "content": content})
        else:
            out.append({"role": role, "content": m.get("content") if m.get("content") is not None else ""})
    return out


def _tool_choice(choice: Any, tools: list[dict]) -> Any:
    if not tools:
        return None
    if isinstance(choice, dict) and "name" in choice and "function" not in choice:
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


def _calls_text(content: str, calls: list[tuple[str, Any]]) -> str:
    """The remote's turn as fmoe writes turns: content, then one Hermes <tool_call> block per call (arguments as
    the remote sent them when they are not JSON)."""
    blocks = []
    for name, raw in calls:
        try:
            args = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError:
            args = raw   # a string that is not JSON: the parser reports it as unparsable
        blocks.append("<tool_call>\n" + json.dumps({"name": name, "arguments": args}, ensure_ascii=False)
                      + "\n</tool_call>")
    return "\n".join([content] * bool(content) + blocks)


# ---------------------------------------------------------------------------------------------------- the model
@dataclass
class RemoteModel:
    """An OpenAI-compatible endpoint as the agent's model (``is_remote``: Agent.turn calls ``turn``)."""
    base_url: str
    model: str | None = None
    api_key: str = "EMPTY"
    timeout: float = 600.0
    max_retries: int = 2
    extra_body: dict | None = None

    is_remote = True

    def __post_init__(self):
        try:
            from openai import OpenAI
        except ImportError:
            raise RemoteModelError("remote models need the openai package: pip install openai") from None
        self.client = OpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout,
                             max_retries=self.max_retries)
        if self.model is None:
            self.model = self._first_model()

    @classmethod
    def from_spec(cls, spec: str, api_key_env: str | None = None, **kw) -> "RemoteModel":
        url, name = parse_remote_spec(spec)
        return cls(url, name, api_key=api_key(api_key_env), **kw)

    @property
    def spec(self) -> str:
        return f"{PREFIX}{self.base_url}#{self.model}"

    def __str__(self) -> str:
        return self.spec

    def __hash__(self) -> int:   # PrefixCache keys models in a WeakKeyDictionary
        return id(self)

    def _first_model(self) -> str:
        try:
            models = list(self.client.models.list())
        except Exception as e:  # noqa: BLE001
            raise RemoteModelError(f"remote model {self.base_url}: cannot list the models ({_api_error(e)}); "
                                   f"name one: openai:{self.base_url}#MODEL") from None
        if not models:
            raise RemoteModelError(f"remote model {self.base_url}: the endpoint lists no models")
        return models[0].id

    # -- one turn ----------------------------------------------------------------------------------------------
    def request(self, messages: list[dict], tools: list[dict], settings, *, tool_choice: Any = "auto",
                parallel_tool_calls: bool = True) -> dict:
        """The keyword arguments of the chat-completions request for one turn."""
        s = settings.sampling
        kw: dict[str, Any] = {"model": self.model, "messages": wire_messages(messages),
                              "max_tokens": settings.max_tokens}
        if tools:
            kw["tools"] = tools
            choice = _tool_choice(tool_choice, tools)
            if choice is not None:
                kw["tool_choice"] = choice
            kw["parallel_tool_calls"] = bool(parallel_tool_calls)
        extra = dict(self.extra_body or {})
        if s is not None:
            kw["temperature"] = s.temperature
            if s.top_p < 1.0:
                kw["top_p"] = s.top_p
            if s.seed is not None:
                kw["seed"] = s.seed
            if s.top_k:          # not OpenAI's: vLLM, llama.cpp and SGLang read them from the body
                extra["top_k"] = s.top_k
            if getattr(s, "min_p", 0.0):
                extra["min_p"] = s.min_p
        if settings.thinking:    # Qwen-style templates on vLLM / SGLang
            extra.setdefault("chat_template_kwargs", {})["enable_thinking"] = True
        if extra:
            kw["extra_body"] = extra
        return kw

    def turn(self, messages: list[dict], tools: list[dict], settings, *, tool_choice: Any = "auto",
             parallel_tool_calls: bool = True, step: int = 1,
             on_text: Callable[[str], None] | None = None) -> ModelStep:
        """One assistant turn on the endpoint, as a ModelStep whose calls are parsed and schema-checked here."""
        from fmoe.structured.parser import parse_tool_calls

        t0 = time.perf_counter()
        kw = self.request(messages, tools, settings, tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls)
        try:
            resp = self.client.chat.completions.create(**kw)
        except Exception as e:  # noqa: BLE001
            raise RemoteModelError(f"remote model {self.spec}: {_api_error(e)}") from None
        wall = time.perf_counter() - t0
        if not resp.choices:
            raise RemoteModelError(f"remote model {self.spec}: the response has no choices")
        choice = resp.choices[0]
        msg = choice.message
        content = msg.content or ""
        extra = getattr(msg, "model_extra", None) or {}
        reasoning = extra.get("reasoning_content") or extra.get("reasoning") or ""
        raw_calls = [(c.function.name, c.function.arguments) for c in (msg.tool_calls or [])
                     if getattr(c, "function", None) is not None]
        finish = {"tool_calls": "stop", "function_call": "stop"}.get(choice.finish_reason or "stop",
                                                                    choice.finish_reason or "stop")
        text = _calls_text(content, raw_calls)
        if on_text is not None and text:
            on_text(text)
        res = parse_tool_calls(text, "hermes", tools, finished=finish != "length")
        failure = res.failure if res.failure is not None and res.failure.category != "no_call" else None
        usage = resp.usage
        gen = getattr(usage, "completion_tokens", 0) or 0
        prompt = getattr(usage, "prompt_tokens", 0) or 0
        return ModelStep(step=step, text=text, content=res.content if raw_calls else content.strip(),
                         reasoning=reasoning, calls=list(res.calls), parse_failure=failure, tokens=gen,
                         prompt_tokens=prompt, prefilled_tokens=prompt, finish_reason=finish,
                         decode_passes=gen,
                         timings={"prefill_s": 0.0, "decode_s": wall, "prefill_tok_s": 0.0,
                                  "decode_tok_s": gen / wall if wall else 0.0, "step_s": wall})


def _api_error(e: BaseException) -> str:
    status = getattr(e, "status_code", None)
    body = getattr(e, "message", None) or str(e)
    name = type(e).__name__
    if status == 401:
        return (f"401 unauthorized ({body}); set FMOE_API_KEY or OPENAI_API_KEY, or api_key_env: in the task file")
    if status is not None:
        return f"HTTP {status} ({name}): {body}"
    return f"{name}: {body}"
