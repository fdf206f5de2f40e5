"""No model: the stream splitter (content vs calls vs stop strings) and both APIs' request translation."""
from __future__ import annotations

import pytest

from fmoe.server.errors import ApiError
from fmoe.server.stream import TurnSplitter
from tests.server.conftest import demo_tools

CALL = "<tool_call>\n<function=calculator>\n<parameter=expression>\n2 + 2\n</parameter>\n</function>\n</tool_call>"


def run(split, deltas):
    out = []
    for d in deltas:
        out += split.feed(d)
        if split.stopped:
            break
    return out + split.finish()


def test_content_then_call_in_any_chunking():
    text = "Let me compute.\n\n" + CALL
    for size in (1, 3, 7, len(text)):
        split = TurnSplitter("xml", demo_tools())
        ev = run(split, [text[i:i + size] for i in range(0, len(text), size)])
        content = "".join(v for k, v in ev if k == "text")
        calls = [v for k, v in ev if k == "call"]
        assert content == "Let me compute.\n\n", size
        assert [(c.name, c.arguments) for c in calls] == [("calculator", {"expression": "2 + 2"})]


def test_stop_string_split_across_deltas():
    split = TurnSplitter("xml", demo_tools(), stop=["END"])
    ev = run(split, ["Hello E", "N", "D and more"])
    assert "".join(v for _, v in ev) == "Hello " and split.stopped and split.stop_sequence == "END"


def test_partial_marker_released_at_the_end():
    split = TurnSplitter("xml", demo_tools(), stop=["STOP"])
    assert "".join(v for _, v in run(split, ["a <tool", " ST"])) == "a <tool ST"


def test_openai_translation():
    from fmoe.server.openai_api import ChatRequest, to_turn

    req = ChatRequest.model_validate({"messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "2+2"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4"}],
        "tools": demo_tools(), "tool_choice": {"type": "function", "function": {"name": "calculator"}},
        "max_completion_tokens": 9, "stop": "x", "parallel_tool_calls": False})
    t = to_turn(req)
    assert t.messages[0] == {"role": "system", "content": "Be brief."}
    assert t.messages[1] == {"role": "user", "content": "What is 2+2?"}
    assert t.messages[2]["tool_calls"][0]["function"]["arguments"] == {"expression": "2+2"}
    assert t.messages[3]["role"] == "tool" and t.messages[3]["name"] == "calculator"
    assert t.tool_choice == {"name": "calculator"} and t.max_tokens == 9 and t.stop == ["x"]
    assert t.parallel_tool_calls is False


def test_anthropic_translation():
    from fmoe.server.anthropic_api import MessagesRequest, to_turn

    req = MessagesRequest.model_validate({"max_tokens": 5, "system": "S", "messages": [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Computing."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "calculator",
                                           "input": {"expression": "2+2"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [{"type": "text", "text": "boom"}], "is_error": True}]}],
        "tools": [{"name": "calculator", "description": "d", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True}})
    t = to_turn(req)
    assert [m["role"] for m in t.messages] == ["system", "user", "assistant", "tool"]
    assert t.messages[2]["content"] == "Computing."
    assert t.messages[2]["tool_calls"][0]["function"] == {"name": "calculator", "arguments": {"expression": "2+2"}}
    assert t.messages[3] == {"role": "tool", "name": "calculator", "content": "Error: boom", "tool_call_id": "toolu_1"}
    assert t.tool_choice == "required" and t.parallel_tool_calls is False
    assert t.tools[0]["function"]["parameters"] == {"type": "object"}


def test_images_are_refused_naming_the_part():
    from fmoe.server.openai_api import to_messages

    with pytest.raises(ApiError) as e:
        to_messages([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    assert e.value.param == "messages.[0].content.[0].type"
