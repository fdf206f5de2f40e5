"""The official openai SDK against `fmoe serve` on the demo model: tool calls (plain and streamed), the tool-result
round trip with prefix reuse, tool_choice, response_format json_schema, stop strings."""
from __future__ import annotations

import json

from tests.server.conftest import QUESTION, demo_tools


def ask(client, content, **kw):
    return client.chat.completions.create(model="fmoe-demo", messages=[{"role": "user", "content": content}], **kw)


def test_models_and_health(client, server):
    from tests.server.rawhttp import get

    ids = [m.id for m in client.models.list()]
    assert ids == ["fmoe-demo"]
    status, _, h = get(server.url, "/health")
    assert status == 200
    assert h["status"] == "ok" and h["max_queue"] == 8


def test_tool_call(client):
    r = ask(client, QUESTION, tools=demo_tools())
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "calculator"
    assert json.loads(call.function.arguments) == {"expression": "1234 * 5678"}
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0


def test_streamed_tool_call_reassembles(client):
    stream = ask(client, QUESTION, tools=demo_tools(), stream=True, stream_options={"include_usage": True})
    calls: dict[int, dict] = {}
    finish, usage, n_arg_chunks = None, None, 0
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            finish = ch.finish_reason or finish
            for tc in ch.delta.tool_calls or []:
                c = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                c["id"] = tc.id or c["id"]
                c["name"] += (tc.function.name or "") if tc.function else ""
                if tc.function and tc.function.arguments:
                    c["arguments"] += tc.function.arguments
                    n_arg_chunks += 1
    assert finish == "tool_calls"
    assert list(calls) == [0] and calls[0]["id"].startswith("call_") and calls[0]["name"] == "calculator"
    assert json.loads(calls[0]["arguments"]) == {"expression": "1234 * 5678"}
    assert n_arg_chunks >= 2          # fragments the client has to join
    assert usage is not None and usage.completion_tokens > 0


def test_tool_result_round_trip_reuses_the_prefix(client):
    tools = demo_tools()
    messages = [{"role": "user", "content": QUESTION}]
    r1 = client.chat.completions.create(model="fmoe-demo", messages=messages, tools=tools)
    call = r1.choices[0].message.tool_calls[0]
    messages += [r1.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "7006652"}]
    r2 = client.chat.completions.create(model="fmoe-demo", messages=messages, tools=tools)
    assert r2.choices[0].finish_reason == "stop" and not r2.choices[0].message.tool_calls
    assert "7006652" in r2.choices[0].message.content
    # the first turn's prompt is a prefix of the second's: its engine state is resumed, not recomputed
    assert r2.usage.prompt_tokens_details.cached_tokens >= r1.usage.prompt_tokens


def test_tool_choice_required(client):
    r = ask(client, "What is the weather in Tokyo?", tools=demo_tools(), tool_choice="required", max_tokens=80)
    assert r.choices[0].finish_reason == "tool_calls"
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_tool_choice_required_forces_a_call_on_chit_chat(client):
    """OpenAI semantics: with tool_choice "required" the response is a tool call, whatever the prompt."""
    r = ask(client, "Hello! How are you?", tools=demo_tools(), tool_choice="required", max_tokens=80)
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.tool_calls


def test_tool_choice_named(client):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    r = ask(client, QUESTION, tools=demo_tools(), tool_choice=choice, max_tokens=80)
    assert r.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in r.choices[0].message.tool_calls] == ["get_weather"]
    assert "city" in json.loads(r.choices[0].message.tool_calls[0].function.arguments)


def test_tool_choice_none(client):
    r = ask(client, QUESTION, tools=demo_tools(), tool_choice="none", max_tokens=40)
    m = r.choices[0].message
    assert not m.tool_calls and m.content and "<tool_call>" not in m.content


def test_stop_string(client):
    full = ask(client, QUESTION, tools=demo_tools(), tool_choice="none", max_tokens=60).choices[0].message.content
    assert "\n" in full.strip()          # without the stop string the text goes on past it: the stop is not natural
    r = ask(client, QUESTION, tools=demo_tools(), tool_choice="none", max_tokens=60, stop=["\n"])
    assert r.choices[0].finish_reason == "stop" and "\n" not in r.choices[0].message.content
    assert r.choices[0].message.content and full.startswith(r.choices[0].message.content + "\n")


def test_response_format_json_schema(client):
    import jsonschema

    schema = {"type": "object", "additionalProperties": False, "required": ["city", "temperature", "sunny"],
              "properties": {"city": {"type": "string", "enum": ["Paris", "Tokyo", "Oslo"]},
                             "temperature": {"type": "integer", "minimum": -50, "maximum": 60},
                             "sunny": {"type": "boolean"}}}
    r = ask(client, "The weather in Paris, as JSON.", max_tokens=100,
            response_format={"type": "json_schema", "json_schema": {"name": "weather", "schema": schema,
                                                                    "strict": True}})
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    assert r.choices[0].finish_reason == "stop"


def test_streamed_text_matches_the_plain_response(client):
    plain = ask(client, QUESTION, tools=demo_tools(), tool_choice="none", max_tokens=30)
    parts = [c.choices[0].delta.content or "" for c in
             ask(client, QUESTION, tools=demo_tools(), tool_choice="none", max_tokens=30, stream=True) if c.choices]
    assert "".join(parts).strip() == plain.choices[0].message.content
