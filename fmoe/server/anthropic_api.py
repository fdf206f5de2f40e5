"""Anthropic's Messages API on the engine: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

    client = anthropic.Anthropic(base_url="http://127.0.0.1:8000", api_key="unused")
    m = client.messages.create(model="fmoe", max_tokens=256, messages=[...], tools=[{"name", "input_schema"}])
    [b for b in m.content if b.type == "tool_use"]          # input: a dict, valid against input_schema

Request fields: system (text or text blocks), messages (text, tool_use and tool_result blocks; thinking blocks are
dropped), tools (name, description, input_schema), tool_choice (auto, any, tool, none; disable_parallel_tool_use),
max_tokens (required), temperature, top_p, top_k, stop_sequences, stream. Other fields are accepted and ignored.
Both APIs run the same turn: the request becomes OpenAI-style tool schemas and chat-template messages
(``to_turn``); streaming is Anthropic's event stream (message_start, content_block_start/delta/stop with text_delta
and input_json_delta, message_delta with stop_reason and usage, message_stop).
"""
from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from fmoe.server.engine import RequestError, TurnRequest, TurnResult
from fmoe.server.errors import ApiError, error_body
from fmoe.server.http import check_tools, new_id, parse_model, read_json, start_job, wait_result

STOP = {"stop": "end_turn", "stop_sequence": "stop_sequence", "length": "max_tokens", "tool_calls": "tool_use",
        "cancelled": "end_turn"}


class MessagesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    max_tokens: int = Field(ge=1)
    messages: list[dict] = Field(min_length=1)
    system: str | list[dict] | None = None
    tools: list[dict] | None = None
    tool_choice: dict | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    stop_sequences: list[str] | None = None
    stream: bool | None = False


# ----------------------------------------------------------------------------------------------- translation
def _blocks(content: Any, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise ApiError(400, "content must be a string or a list of content blocks", where)
    for j, b in enumerate(content):
        if not isinstance(b, dict) or not isinstance(b.get("type"), str):
            raise ApiError(400, "each content block must be an object with a type", f"{where}.[{j}]")
    return content


def _result_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for j, b in enumerate(_blocks(content, where)):
        if b["type"] != "text":
            raise ApiError(400, f"tool_result content of type {b['type']!r} is not supported (text only)",
                           f"{where}.[{j}].type")
        parts.append(str(b.get("text", "")))
    return "".join(parts)


def to_messages(messages: list[dict], system: Any) -> list[dict]:
    out: list[dict] = []
    names: dict[str, str] = {}
    if system:
        text = system if isinstance(system, str) else _result_text(system, "system")
        out.append({"role": "system", "content": text})
    for i, m in enumerate(messages):
        where = f"messages.[{i}]"
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("user", "assistant"):
            raise ApiError(400, f"invalid role {role!r}: expected 'user' or 'assistant'", f"{where}.role")
        blocks = _blocks(m.get("content"), f"{where}.content")
        text, calls, results = [], [], []
        for j, b in enumerate(blocks):
            t, bw = b["type"], f"{where}.content.[{j}]"
            if t == "text":
                text.append(str(b.get("text", "")))
            elif t == "tool_use" and role == "assistant":
                if not isinstance(b.get("name"), str) or not isinstance(b.get("input", {}), dict):
                    raise ApiError(400, "a tool_use block needs a name and an input object", bw)
                names[b.get("id") or ""] = b["name"]
                calls.append({"type": "function", "id": b.get("id"),
                              "function": {"name": b["name"], "arguments": b.get("input") or {}}})
            elif t == "tool_result" and role == "user":
                body = _result_text(b.get("content"), f"{bw}.content")
                if b.get("is_error") and not body.startswith("Error"):
                    body = f"Error: {body}"
                results.append({"role": "tool", "name": names.get(b.get("tool_use_id") or "", ""), "content": body,
                                "tool_call_id": b.get("tool_use_id")})
            elif t in ("thinking", "redacted_thinking"):
                continue
            else:
                raise ApiError(400, f"content block of type {t!r} is not supported in a {role} message", f"{bw}.type")
        if role == "assistant":
            msg: dict = {"role": "assistant", "content": "".join(text)}
            if calls:
                msg["tool_calls"] = calls
            out.append(msg)
        else:
            out.extend(results)
            if text or not results:
                out.append({"role": "user", "content": "".join(text)})
    return out


def to_tools(tools: list[dict] | None) -> list[dict]:
    out = []
    for i, t in enumerate(tools or []):
        where = f"tools.[{i}]"
        if not isinstance(t, dict) or t.get("type", "custom") != "custom":
            kind = t.get("type") if isinstance(t, dict) else None
            raise ApiError(400, f"tool type {kind!r} is not supported (custom tools with an input_schema only)",
                           f"{where}.type")
        if not isinstance(t.get("name"), str) or not t["name"]:
            raise ApiError(400, "a tool needs a name", f"{where}.name")
        if "input_schema" not in t:
            raise ApiError(400, "a tool needs an input_schema object", f"{where}.input_schema")
        out.append({"type": "function", "function": {"name": t["name"], "description": t.get("description") or "",
                                                     "parameters": t["input_schema"]}})
    return check_tools(out, "tools.[{i}].name", "tools.[{i}].input_schema")


def to_tool_choice(choice: dict | None, tools: list[dict]) -> tuple[Any, bool]:
    """(tool choice of the grammar, parallel calls allowed)."""
    if choice is None:
        return "auto", True
    kind = choice.get("type")
    parallel = not choice.get("disable_parallel_tool_use", False)
    if kind == "auto":
        return "auto", parallel
    if kind == "none":
        return "none", parallel
    if kind == "any":
        if not tools:
            raise ApiError(400, "tool_choice 'any' needs tools", "tool_choice.type")
        return "required", parallel
    if kind == "tool":
        name = choice.get("name")
        if name not in [t["function"]["name"] for t in tools]:
            raise ApiError(400, f"tool_choice names {name!r}, which is not in tools", "tool_choice.name")
        return {"name": name}, parallel
    raise ApiError(400, f"invalid tool_choice type {kind!r}: expected auto, any, tool or none", "tool_choice.type")


def to_turn(req: MessagesRequest) -> TurnRequest:
    tools = to_tools(req.tools)
    choice, parallel = to_tool_choice(req.tool_choice, tools)
    return TurnRequest(messages=to_messages(req.messages, req.system), tools=tools, tool_choice=choice,
                       parallel_tool_calls=parallel, max_tokens=req.max_tokens, temperature=req.temperature,
                       top_p=req.top_p or 1.0, top_k=req.top_k or 0, stop=list(req.stop_sequences or []))


# ----------------------------------------------------------------------------------------------- responses
def usage(prompt_tokens: int, cached_tokens: int, output_tokens: int) -> dict:
    """Anthropic's definition, the same in a response, message_start and message_delta: ``input_tokens`` are the
    prompt tokens computed for this request (not read from the cache), ``cache_read_input_tokens`` those whose engine
    state was reused; the prompt is their sum."""
    return {"input_tokens": prompt_tokens - cached_tokens, "output_tokens": output_tokens,
            "cache_read_input_tokens": cached_tokens, "cache_creation_input_tokens": 0}


def result_usage(r: TurnResult) -> dict:
    return usage(r.prompt_tokens, r.cached_tokens, r.completion_tokens)


def message(r: TurnResult, model: str) -> dict:
    content: list[dict] = []
    if r.content:
        content.append({"type": "text", "text": r.content})
    for c in r.calls:
        content.append({"type": "tool_use", "id": new_id("toolu_"), "name": c.name, "input": c.arguments})
    return {"id": new_id("msg_"), "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": STOP[r.finish], "stop_sequence": r.stop_sequence, "usage": result_usage(r)}


def _event(kind: str, data: dict) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps({"type": kind, **data}, ensure_ascii=False), event=kind)


async def _events(job, model: str):
    index, text_open, started = 0, False, False

    def start(cached: int) -> ServerSentEvent:
        return _event("message_start", {"message": {
            "id": new_id("msg_"), "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": usage(job.turn.prompt_tokens, cached, 0)}})

    try:
        async for kind, value in job.events():
            # message_start waits for the engine's "start" (the reused prompt tokens, known before prefill), so
            # its usage is the one message_delta reports
            if kind == "start":
                if not started:
                    started = True
                    yield start(value)
                continue
            if not started and kind != "error":
                started = True
                yield start(value.cached_tokens if kind == "done" else 0)
            if kind == "text":
                if not text_open:
                    yield _event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
                    text_open = True
                yield _event("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": value}})
                continue
            if text_open:
                yield _event("content_block_stop", {"index": index})
                index, text_open = index + 1, False
            if kind == "call":
                yield _event("content_block_start", {"index": index, "content_block": {
                    "type": "tool_use", "id": new_id("toolu_"), "name": value.name, "input": {}}})
                args = json.dumps(value.arguments, ensure_ascii=False)
                for i in range(0, len(args), 16):
                    yield _event("content_block_delta", {"index": index, "delta": {
                        "type": "input_json_delta", "partial_json": args[i:i + 16]}})
                yield _event("content_block_stop", {"index": index})
                index += 1
            elif kind == "error":
                body = error_body(500, f"generation failed: {type(value).__name__}: {value}", anthropic=True)
                yield ServerSentEvent(data=json.dumps(body), event="error")
                return
            elif kind == "done":
                yield _event("message_delta", {"delta": {"stop_reason": STOP[value.finish],
                                                         "stop_sequence": value.stop_sequence},
                                               "usage": result_usage(value)})
                yield _event("message_stop", {})
    finally:
        job.cancel()    # a no-op after "done"; stops the turn when the client went away mid-stream


async def messages(request: Request):
    req = parse_model(MessagesRequest, await read_json(request))
    turn = to_turn(req)
    engine = request.app.state.engine
    try:
        job = await start_job(request, turn)
    except ApiError as e:   # the engine names OpenAI's field
        e.param = e.param.replace(".function.parameters", ".input_schema") if e.param else e.param
        raise
    if req.stream:
        return EventSourceResponse(_events(job, engine.name), sep="\n")
    result = await wait_result(request, job)
    if result is None:
        return JSONResponse(error_body(499, "client closed the request", anthropic=True), status_code=499)
    return JSONResponse(message(result, engine.name))


async def count_tokens(request: Request):
    """The prompt's token count (Claude Code asks before it sends; max_tokens is not needed here): the request
    rendered with the chat template and encoded, nothing more. A prompt longer than the context is counted, not
    refused, and no grammar is compiled."""
    body = await read_json(request)
    body.setdefault("max_tokens", 1)
    turn = to_turn(parse_model(MessagesRequest, body))
    try:
        n = await run_in_threadpool(request.app.state.engine.count_tokens, turn)
    except RequestError as e:
        raise ApiError(400, e.message, e.param, e.code) from None
    return JSONResponse({"input_tokens": n})
