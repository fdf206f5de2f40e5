"""The official anthropic SDK against `fmoe serve` (/v1/messages) on the demo model: tool_use blocks, streaming,
the tool_result round trip, tool_choice, system prompts."""
from __future__ import annotations

import json

from tests.server.conftest import QUESTION, anthropic_tools


def create(aclient, content, **kw):
    kw.setdefault("max_tokens", 128)
    return aclient.messages.create(model="fmoe-demo", messages=[{"role": "user", "content": content}], **kw)


def test_tool_use(aclient):
    m = create(aclient, QUESTION, tools=anthropic_tools())
    assert m.type == "message" and m.role == "assistant" and m.stop_reason == "tool_use"
    (use,) = [b for b in m.content if b.type == "tool_use"]
    assert use.id.startswith("toolu_") and use.name == "calculator" and use.input == {"expression": "1234 * 5678"}
    assert m.usage.output_tokens > 0


def test_streamed_tool_use(aclient):
    kinds = []
    with aclient.messages.stream(model="fmoe-demo", max_tokens=128, tools=anthropic_tools(),
                                 messages=[{"role": "user", "content": QUESTION}]) as stream:
        for event in stream:
            kinds.append(event.type)
        m = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop", "message_delta"} <= set(kinds)
    assert m.stop_reason == "tool_use"
    (use,) = [b for b in m.content if b.type == "tool_use"]
    assert use.name == "calculator" and use.input == {"expression": "1234 * 5678"}


def test_tool_result_round_trip(aclient):
    tools = anthropic_tools()
    messages = [{"role": "user", "content": QUESTION}]
    m1 = aclient.messages.create(model="fmoe-demo", max_tokens=128, tools=tools, messages=messages)
    use = next(b for b in m1.content if b.type == "tool_use")
    messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m1.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "7006652"}]}]
    m2 = aclient.messages.create(model="fmoe-demo", max_tokens=128, tools=tools, messages=messages)
    assert m2.stop_reason == "end_turn"
    text = "".join(b.text for b in m2.content if b.type == "text")
    assert "7006652" in text
    assert m2.usage.cache_read_input_tokens >= m1.usage.input_tokens + m1.usage.cache_read_input_tokens


def test_streamed_text(aclient):
    with aclient.messages.stream(model="fmoe-demo", max_tokens=40, tools=anthropic_tools(),
                                 tool_choice={"type": "none"},
                                 messages=[{"role": "user", "content": QUESTION}]) as stream:
        text = "".join(stream.text_stream)
        m = stream.get_final_message()
    assert text and m.content[0].type == "text" and m.content[0].text == text
    assert m.stop_reason in ("end_turn", "max_tokens")


def test_tool_choice_tool_and_any(aclient):
    m = create(aclient, QUESTION, tools=anthropic_tools(), tool_choice={"type": "tool", "name": "get_weather"})
    assert m.stop_reason == "tool_use" and [b.name for b in m.content if b.type == "tool_use"] == ["get_weather"]
    m = create(aclient, "What is the weather in Tokyo?", tools=anthropic_tools(), tool_choice={"type": "any"})
    assert m.stop_reason == "tool_use" and any(b.type == "tool_use" for b in m.content)


def test_system_and_stop_sequences(aclient):
    m = create(aclient, QUESTION, system=[{"type": "text", "text": "You are a helpful assistant."}],
               tools=anthropic_tools(), tool_choice={"type": "none"}, stop_sequences=["\n"], max_tokens=60)
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == "\n"
    assert "\n" not in m.content[0].text


def test_count_tokens_matches_the_prompt(aclient):
    messages = [{"role": "user", "content": QUESTION}]
    n = aclient.messages.count_tokens(model="fmoe-demo", messages=messages, tools=anthropic_tools()).input_tokens
    m = aclient.messages.create(model="fmoe-demo", max_tokens=64, messages=messages, tools=anthropic_tools())
    assert n > 0 and n == m.usage.input_tokens + m.usage.cache_read_input_tokens


def test_count_tokens_of_a_prompt_longer_than_the_context(aclient, server):
    """count_tokens only renders and encodes: a prompt the model cannot take is counted, not refused."""
    n = aclient.messages.count_tokens(model="fmoe-demo", messages=[{"role": "user", "content": "word " * 5000}],
                                      tools=anthropic_tools()).input_tokens
    assert n > server.engine.context


def _sse(url, body) -> list[dict]:
    from tests.server.rawhttp import connect

    conn = connect(url)
    conn.request("POST", "/v1/messages", body=json.dumps({**body, "stream": True}),
                 headers={"content-type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    events = [json.loads(line[5:]) for line in r.read().decode().splitlines() if line.startswith("data:")]
    conn.close()
    return events


def test_streamed_usage_is_one_definition(server):
    """message_start and message_delta agree (input_tokens: not read from the cache; cache_read_input_tokens:
    reused), and both agree with a plain response to the same request."""
    from tests.server.rawhttp import post

    body = {"model": "fmoe-demo", "max_tokens": 64, "tools": anthropic_tools(),
            "messages": [{"role": "user", "content": "What is 4321 * 8765?"}]}
    _sse(server.url, body)                                # the next identical request reuses this prompt
    events = _sse(server.url, body)
    start = next(e for e in events if e["type"] == "message_start")["message"]["usage"]
    delta = next(e for e in events if e["type"] == "message_delta")["usage"]
    assert start["cache_read_input_tokens"] > 0
    for k in ("input_tokens", "cache_read_input_tokens"):
        assert start[k] == delta[k], (start, delta)
    status, _, m = post(server.url, "/v1/messages", body)
    assert status == 200
    assert {k: m["usage"][k] for k in ("input_tokens", "cache_read_input_tokens")} == \
        {k: delta[k] for k in ("input_tokens", "cache_read_input_tokens")}
