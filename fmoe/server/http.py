"""What both API modules do with an HTTP request: read its JSON, validate it, queue its turn, wait for the result
(cancelling the turn when the client goes away), and make ids.

    body = await read_json(request)                         # ApiError 415 unless application/json, 400 on invalid JSON
    req = parse_model(ChatRequest, body)                    # ApiError 400 naming the field ("messages.[0].role")
    tools = check_tools(tools, "tools.[{i}].name", "tools.[{i}].input_schema")   # schemas and names, both APIs
    job = await start_job(request, turn_request)            # ApiError 400 (engine.prepare) / 429 (queue full)
    result = await wait_result(request, job)                # None when the client disconnected (turn cancelled)
    new_id("call_")                                         # "call_" + 24 random letters and digits
"""
from __future__ import annotations

import asyncio
import json
import secrets
import string

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from fmoe.server.engine import Job, QueueFull, RequestError, TurnRequest, TurnResult
from fmoe.server.errors import ApiError

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, n: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(n))


def param_path(loc) -> str:
    """A pydantic error location as OpenAI names fields: ("messages", 0, "role") -> "messages.[0].role"."""
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc)


async def read_json(request: Request) -> dict:
    """The JSON object of a POST body. Only ``Content-Type: application/json`` is read (415 otherwise): a web page
    can send text/plain or a form to 127.0.0.1 without a CORS preflight, but not application/json."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, f"the request body must be sent with Content-Type: application/json (got "
                            f"{media or 'none'!r})", code="unsupported_media_type")
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return body


def check_tools(tools: list[dict], name_param: str, schema_param: str) -> list[dict]:
    """The one check of both APIs' tools (OpenAI-shaped ``{"type": "function", "function": {name, parameters}}``
    after translation): each ``parameters`` is a JSON Schema object valid against the Draft 2020-12 meta-schema (as
    fmoe.tools.schema_tools.SchemaTool checks it), and no name repeats. ``name_param`` / ``schema_param`` name the
    fields in the request's own API ("tools.[{i}].function.parameters", "tools.[{i}].input_schema")."""
    seen: set[str] = set()
    for i, t in enumerate(tools):
        f = t["function"]
        schema = f["parameters"]
        if not isinstance(schema, dict):
            raise ApiError(400, f"tool {f['name']!r}: the parameters must be a JSON Schema object",
                           schema_param.format(i=i), "invalid_value")
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as e:
            at = "/".join(str(p) for p in e.absolute_path) or "(root)"
            raise ApiError(400, f"tool {f['name']!r}: the parameters are not a valid JSON Schema at {at}: "
                                f"{e.message}", schema_param.format(i=i), "invalid_value") from None
        if f["name"] in seen:
            raise ApiError(400, f"duplicate tool name {f['name']!r}", name_param.format(i=i), "invalid_value")
        seen.add(f["name"])
    return tools


def parse_model(cls: type[BaseModel], body: dict) -> BaseModel:
    try:
        return cls.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p in ("function-after", "union"))]
        where = param_path(loc)
        msg = err["msg"]
        if err.get("type") == "missing":
            msg = f"missing required parameter '{where}'"
        else:
            msg = f"invalid value for '{where}': {msg}"
        raise ApiError(400, msg, param=where or None,
                       code="missing_required_parameter" if err.get("type") == "missing" else "invalid_value") from None


async def start_job(request: Request, turn: TurnRequest) -> Job:
    engine = request.app.state.engine
    try:
        prepared = await run_in_threadpool(engine.prepare, turn)
    except RequestError as e:
        raise ApiError(400, e.message, e.param, e.code) from None
    try:
        return engine.submit(prepared, asyncio.get_running_loop())
    except QueueFull as e:
        raise ApiError(429, f"the server is busy: {engine.max_queue} requests are already waiting; retry in "
                            f"{e.retry_after} s", code="queue_full",
                       headers={"Retry-After": str(e.retry_after)}) from None


async def wait_result(request: Request, job: Job, poll_s: float = 0.25) -> TurnResult | None:
    """The turn's result; None (and the turn cancelled at its next token) when the client disconnects first."""
    task = asyncio.ensure_future(job.result())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                job.cancel()
                return None
    finally:
        if not task.done():
            job.cancel()
            task.cancel()
