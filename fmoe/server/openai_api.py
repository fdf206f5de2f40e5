"""OpenAI's Chat Completions API on the engine: ``POST /v1/chat/completions`` and ``GET /v1/models``.

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    r = client.chat.completions.create(model="fmoe", messages=[...], tools=[...], tool_choice="auto")
    r.choices[0].message.tool_calls[0].function.arguments       # a JSON string, valid by construction

Request fields: messages (system, developer, user, assistant with tool_calls, tool), tools, tool_choice (auto,
required, none, {"type": "function", "function": {"name"}}), parallel_tool_calls, response_format (text,
json_object, json_schema: enforced by the grammar), max_tokens / max_completion_tokens, temperature, top_p, top_k,
seed, stop, stream (+ stream_options.include_usage), n (1 only). Other fields are accepted and ignored.
Translation: ``to_turn(ChatRequest) -> TurnRequest`` (chat-template messages, arguments as dicts); responses and
stream chunks are built from the engine's TurnResult / events.
"""
from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse

from fmoe.server.engine import TurnRequest, TurnResult
from fmoe.server.errors import ApiError, error_body
from fmoe.server.http import check_tools, new_id, parse_model, read_json, start_job, wait_result

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
FINISH = {"stop": "stop", "stop_sequence": "stop", "length": "length", "tool_calls": "tool_calls",
          "cancelled": "stop"}


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[dict] = Field(min_length=1)
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    seed: int | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: dict | None = None
    n: int | None = Field(1, ge=1, le=1)


# ----------------------------------------------------------------------------------------------- translation
def _text(content: Any, where: str) -> str:
    """A message's content (a string, null, or a list of text parts) as text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for j, part in enumerate(content):
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text"):
                out.append(str(part.get("text", "")))
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ApiError(400, f"content part of type {kind!r} is not supported (text only)",
                               f"{where}.[{j}].type", "unsupported_content")
        return "".join(out)
    raise ApiError(400, "content must be a string or a list of content parts", where, "invalid_type")


def _arguments(raw: Any, where: str) -> dict:
    if isinstance(raw, dict):
        return raw
    if raw is None or raw == "":
        return {}
    try:
        args = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        raise ApiError(400, "tool call arguments must be a JSON object encoded as a string", where,
                       "invalid_value") from None
    if not isinstance(args, dict):
        raise ApiError(400, "tool call arguments must be a JSON object", where, "invalid_value")
    return args


def to_messages(messages: list[dict]) -> list[dict]:
    """OpenAI messages -> chat-template messages: system/developer messages merged into one first system message,
    content parts joined, tool-call arguments parsed into dicts, tool results named after their call."""
    system: list[str] = []
    out: list[dict] = []
    names: dict[str, str] = {}
    for i, m in enumerate(messages):
        where = f"messages.[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, "each message must be a JSON object", where, "invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise ApiError(400, f"invalid role {role!r}: expected one of 'system', 'developer', 'user', "
                                f"'assistant', 'tool'", f"{where}.role", "invalid_value")
        text = _text(m.get("content"), f"{where}.content")
        if role in ("system", "developer"):
            system.append(text)
        elif role == "user":
            if "content" not in m:
                raise ApiError(400, "a user message needs content", f"{where}.content", "missing_required_parameter")
            out.append({"role": "user", "content": text})
        elif role == "assistant":
            msg: dict = {"role": "assistant", "content": text}
            calls = m.get("tool_calls") or []
            if not isinstance(calls, list):
                raise ApiError(400, "tool_calls must be a list", f"{where}.tool_calls", "invalid_type")
            tcs = []
            for j, c in enumerate(calls):
                f = c.get("function") if isinstance(c, dict) else None
                if not isinstance(f, dict) or not isinstance(f.get("name"), str):
                    raise ApiError(400, "a tool call needs function.name", f"{where}.tool_calls.[{j}].function",
                                   "invalid_value")
                args = _arguments(f.get("arguments"), f"{where}.tool_calls.[{j}].function.arguments")
                if c.get("id"):
                    names[c["id"]] = f["name"]
                tcs.append({"type": "function", "id": c.get("id"), "function": {"name": f["name"], "arguments": args}})
            if tcs:
                msg["tool_calls"] = tcs
            out.append(msg)
        else:   # tool (and the legacy function role)
            name = m.get("name") or names.get(m.get("tool_call_id") or "", "")
            out.append({"role": "tool", "name": name, "content": text, "tool_call_id": m.get("tool_call_id")})
    if not any(m["role"] == "user" for m in out):
        raise ApiError(400, "the messages need at least one user message", "messages", "invalid_value")
    if system:
        out.insert(0, {"role": "system", "content": "\n\n".join(system)})
    return out


def to_tools(tools: list[dict] | None) -> list[dict]:
    out = []
    for i, t in enumerate(tools or []):
        where = f"tools.[{i}]"
        f = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(f, dict):
            raise ApiError(400, "a tool must be {\"type\": \"function\", \"function\": {...}}", where, "invalid_value")
        if not isinstance(f.get("name"), str) or not f["name"]:
            raise ApiError(400, "a tool needs function.name", f"{where}.function.name", "missing_required_parameter")
        params = f.get("parameters", {"type": "object", "properties": {}})
        fn = {"name": f["name"], "description": f.get("description") or "", "parameters": params}
        out.append({"type": "function", "function": fn})
    return check_tools(out, "tools.[{i}].function.name", "tools.[{i}].function.parameters")


def to_tool_choice(choice: Any, tools: list[dict]) -> Any:
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        if choice not in ("auto", "required", "none"):
            raise ApiError(400, f"invalid tool_choice {choice!r}: expected 'auto', 'required', 'none' or "
                                f"{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}", "tool_choice",
                           "invalid_value")
        if choice == "required" and not tools:
            raise ApiError(400, "tool_choice 'required' needs tools", "tool_choice", "invalid_value")
        return choice
    name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
    name = name or choice.get("name")
    if not isinstance(name, str):
        raise ApiError(400, "tool_choice must name a function: {\"type\": \"function\", \"function\": {\"name\": "
                            "...}}", "tool_choice.function.name", "invalid_value")
    if name not in [t["function"]["name"] for t in tools]:
        raise ApiError(400, f"tool_choice names {name!r}, which is not in tools", "tool_choice.function.name",
                       "invalid_value")
    return {"name": name}


def to_response_schema(rf: dict | None) -> Any:
    if not rf or rf.get("type") in (None, "text"):
        return None
    if rf["type"] == "json_object":
        return {"type": "object"}
    if rf["type"] == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict) or not isinstance(js.get("schema", {}), (dict, bool)):
            raise ApiError(400, "response_format json_schema needs {\"name\": ..., \"schema\": {...}}",
                           "response_format.json_schema", "invalid_value")
        return js.get("schema", {})
    raise ApiError(400, f"invalid response_format type {rf['type']!r}: expected text, json_object or json_schema",
                   "response_format.type", "invalid_value")


def to_turn(req: ChatRequest) -> TurnRequest:
    tools = to_tools(req.tools)
    choice = to_tool_choice(req.tool_choice, tools)
    schema = to_response_schema(req.response_format)
    if schema is not None and tools and choice != "none":
        raise ApiError(400, "response_format with tools is not supported: send tool_choice 'none' (or no tools) to "
                            "get a JSON response", "response_format", "unsupported_combination")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    return TurnRequest(messages=to_messages(req.messages), tools=tools, tool_choice=choice,
                       parallel_tool_calls=req.parallel_tool_calls is not False, response_schema=schema,
                       max_tokens=req.max_completion_tokens or req.max_tokens, temperature=req.temperature,
                       top_p=req.top_p or 1.0, top_k=req.top_k or 0, seed=req.seed, stop=stop)


# ----------------------------------------------------------------------------------------------- responses
def usage(r: TurnResult) -> dict:
    return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": r.cached_tokens}}


def tool_call(c, call_id: str) -> dict:
    return {"id": call_id, "type": "function",
            "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}


def completion(r: TurnResult, model: str) -> dict:
    calls = [tool_call(c, new_id("call_")) for c in r.calls]
    msg: dict = {"role": "assistant", "content": (r.content or None) if calls else r.content, "refusal": None}
    if calls:
        msg["tool_calls"] = calls
    return {"id": new_id("chatcmpl-"), "object": "chat.completion", "created": int(time.time()), "model": model,
            "system_fingerprint": "fmoe",
            "choices": [{"index": 0, "message": msg, "logprobs": None, "finish_reason": FINISH[r.finish]}],
            "usage": usage(r)}


def _split(text: str, n: int = 16) -> list[str]:
    return [text[i:i + n] for i in range(0, len(text), n)] or [""]


async def _chunks(job, model: str, include_usage: bool):
    cid, created = new_id("chatcmpl-"), int(time.time())

    def chunk(delta: dict, finish=None, **extra) -> dict:
        c = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
             "system_fingerprint": "fmoe", "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                        "finish_reason": finish}]}
        if include_usage:
            c["usage"] = None
        c.update(extra)
        return {"data": json.dumps(c, ensure_ascii=False)}

    n_calls = 0
    try:
        yield chunk({"role": "assistant", "content": ""})
        async for kind, value in job.events():
            if kind == "text":
                yield chunk({"content": value})
            elif kind == "call":
                head = {"index": n_calls, "id": new_id("call_"), "type": "function",
                        "function": {"name": value.name, "arguments": ""}}
                yield chunk({"tool_calls": [head]})
                for piece in _split(json.dumps(value.arguments, ensure_ascii=False)):
                    yield chunk({"tool_calls": [{"index": n_calls, "function": {"arguments": piece}}]})
                n_calls += 1
            elif kind == "error":
                yield {"data": json.dumps(error_body(500, f"generation failed: {type(value).__name__}: {value}"))}
                break
            elif kind == "done":
                yield chunk({}, FINISH[value.finish])
                if include_usage:
                    c = json.loads(chunk({})["data"])
                    c["choices"], c["usage"] = [], usage(value)
                    yield {"data": json.dumps(c)}
        yield {"data": "[DONE]"}
    finally:
        job.cancel()    # a no-op after "done"; stops the turn when the client went away mid-stream


async def chat_completions(request: Request):
    req = parse_model(ChatRequest, await read_json(request))
    turn = to_turn(req)
    engine = request.app.state.engine
    job = await start_job(request, turn)
    if req.stream:
        include_usage = bool((req.stream_options or {}).get("include_usage"))
        return EventSourceResponse(_chunks(job, engine.name, include_usage), sep="\n")
    result = await wait_result(request, job)
    if result is None:
        return JSONResponse(error_body(499, "client closed the request"), status_code=499)
    return JSONResponse(completion(result, engine.name))


async def list_models(request: Request):
    engine = request.app.state.engine
    return JSONResponse({"object": "list", "data": [
        {"id": engine.name, "object": "model", "created": engine.created, "owned_by": "fmoe",
         "context_length": engine.context}]})
