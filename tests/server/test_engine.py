"""The server's engine without HTTP: the token budget of a turn, the call budget checked before queueing, the count
of waiting jobs (429), counting a prompt's tokens without preparing it, and which Host headers a keyless server
accepts."""
from __future__ import annotations

import asyncio

import pytest

from fmoe.server.engine import QueueFull, RequestError, ServerEngine, TurnRequest
from tests.server.conftest import QUESTION, demo_tools


@pytest.fixture(scope="module")
def engine(demo):
    model, tok = demo
    return ServerEngine(model, tok, name="fmoe-demo", max_queue=1)     # not started: nothing runs


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _worst_case(turn) -> int:
    """Prompt + the most a turn may generate: a call started at the last token of max_tokens runs max_call_tokens
    more (ToolCallProcessor.token_limit)."""
    s = turn.settings
    extra = s.max_tokens - 1 + s.max_call_tokens if s.max_call_tokens is not None else s.max_tokens
    return turn.prompt_tokens + max(s.max_tokens, extra)


@pytest.mark.parametrize("words, max_tokens", [(700, None), (700, 300), (950, None), (100, None), (100, 50)])
def test_generation_never_runs_past_the_context(engine, words, max_tokens):
    turn = engine.prepare(TurnRequest(_user("word " * words), demo_tools(), max_tokens=max_tokens))
    assert turn.prompt_tokens < engine.context
    assert _worst_case(turn) <= engine.context, turn.settings
    assert turn.settings.max_tokens >= 1 and turn.settings.max_call_tokens >= 1
    if max_tokens is not None and turn.prompt_tokens + max_tokens + engine.max_call_tokens <= engine.context:
        assert turn.settings.max_tokens == max_tokens          # nothing clipped when both fit


def test_text_only_turns_use_the_whole_context(engine):
    turn = engine.prepare(TurnRequest(_user("word " * 1300)))
    assert turn.settings.max_call_tokens is None
    assert turn.prompt_tokens + turn.settings.max_tokens == engine.context


def _big_tool(n: int) -> dict:
    props = {f"property_number_{i:03d}_with_a_rather_long_name": {"type": "string"} for i in range(n)}
    return {"type": "function", "function": {"name": "big", "description": "",
                                             "parameters": {"type": "object", "properties": props,
                                                            "required": list(props)}}}


def test_call_budget_is_checked_before_queueing(engine):
    """A tool whose shortest call does not fit the call budget: a 400 naming the tool at prepare time, not a
    GrammarError in the worker (ToolCallProcessor.__init__)."""
    with pytest.raises(RequestError) as e:
        engine.prepare(TurnRequest(_user("hi"), [demo_tools()[0], _big_tool(40)]))
    assert e.value.param == "tools.[1].function.parameters" and "'big'" in e.value.message
    assert "max_call_tokens" in e.value.message


def test_count_tokens_does_not_prepare(engine):
    long = TurnRequest(_user("word " * 5000), demo_tools())
    with pytest.raises(RequestError):
        engine.prepare(long)
    assert engine.count_tokens(long) > engine.context
    short = TurnRequest(_user(QUESTION), demo_tools())
    assert engine.count_tokens(short) == engine.prepare(short).prompt_tokens


def test_cancelled_jobs_do_not_fill_the_queue(engine):
    loop = asyncio.new_event_loop()
    try:
        turn = engine.prepare(TurnRequest(_user(QUESTION)))
        gone = engine.submit(turn, loop)               # max_queue=1: the queue is full
        with pytest.raises(QueueFull):
            engine.submit(turn, loop)
        gone.cancel()                                  # its client went away: the worker will skip it
        assert engine.waiting == 0
        live = engine.submit(turn, loop)
        assert engine.waiting == 1
        with pytest.raises(QueueFull):
            engine.submit(turn, loop)
        live.cancel()
    finally:
        loop.close()


@pytest.mark.parametrize("host, bound, ok", [
    ("127.0.0.1:8000", "127.0.0.1", True),
    ("localhost:8000", "127.0.0.1", True),
    ("LOCALHOST", None, True),
    ("[::1]:8000", "::1", True),
    ("127.0.0.2", "127.0.0.1", True),
    ("app.localhost:8000", "127.0.0.1", True),
    ("evil.example:8000", "127.0.0.1", False),
    ("evil.example", "0.0.0.0", False),
    ("192.168.1.5:8000", "127.0.0.1", False),
    ("192.168.1.5:8000", "0.0.0.0", True),
    ("myhost.lan:8000", "myhost.lan", True),
    ("", "127.0.0.1", False),
])
def test_host_allowed(host, bound, ok):
    from fmoe.server.app import host_allowed

    assert host_allowed(host, bound) is ok
