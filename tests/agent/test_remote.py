"""Remote models (fmoe/agent/remote.py): the agent loop, task files and ``fmoe eval`` against an OpenAI-compatible
endpoint, through the real ``openai`` SDK and HTTP.

No real server is reachable here: ``FakeEndpoint`` is a minimal OpenAI-compatible chat-completions server (FastAPI +
uvicorn on a free 127.0.0.1 port) that answers from a script and records each request. The tests that take the
``endpoint`` fixture run against any endpoint object with ``url``, ``script(...)`` and ``requests``; a test against
``fmoe serve`` can reuse them by providing such a fixture (see ``test_agent_against_endpoint``).
"""
from __future__ import annotations

import json
import socket
import textwrap
import threading
import time

import pytest

pytest.importorskip("openai")
fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
from fastapi import Request  # noqa: E402  (module level: FastAPI resolves the string annotations here)

from fmoe.agent.remote import (RemoteModel, RemoteModelError, is_remote_spec, parse_remote_spec,  # noqa: E402
                               wire_messages)
from fmoe.errors import TaskFileError  # noqa: E402

CALC = {"type": "function", "function": {"name": "calculator", "description": "Evaluate arithmetic.",
                                         "parameters": {"type": "object",
                                                        "properties": {"expression": {"type": "string"}},
                                                        "required": ["expression"], "additionalProperties": False}}}


def call(name: str, arguments: str, cid: str = "call_a") -> dict:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": arguments}}


def reply(content: str | None = None, tool_calls: list | None = None, finish: str | None = None) -> dict:
    msg: dict = {"role": "assistant", "content": content}
    if tool_calls:
        msg["tool_calls"] = tool_calls
    return {"message": msg, "finish_reason": finish or ("tool_calls" if tool_calls else "stop")}


class FakeEndpoint:
    """An OpenAI-compatible endpoint answering scripted replies in order (the last one repeats)."""

    def __init__(self, model: str = "fake-model", api_key: str | None = None):
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse

        self.model, self.api_key = model, api_key
        self.replies: list[dict] = []
        self.requests: list[dict] = []
        app = FastAPI()

        def auth_failed(request: Request):
            if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
                return JSONResponse({"error": {"message": "bad key", "type": "invalid_request_error"}}, 401)
            return None

        @app.get("/v1/models")
        async def models(request: Request):
            return auth_failed(request) or {"object": "list", "data": [
                {"id": self.model, "object": "model", "created": 0, "owned_by": "fmoe-test"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            bad = auth_failed(request)
            if bad is not None:
                return bad
            body = await request.json()
            self.requests.append(body)
            r = self.replies[min(len(self.requests) - 1, len(self.replies) - 1)]
            return {"id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
                    "model": body["model"],
                    "choices": [{"index": 0, "message": r["message"], "finish_reason": r["finish_reason"]}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        assert self.server.started, "the fake endpoint did not start"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *replies: dict) -> None:
        self.replies = list(replies)
        self.requests = []

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def endpoint():
    ep = FakeEndpoint()
    yield ep
    ep.stop()


@pytest.fixture(autouse=True)
def _no_keys(monkeypatch):
    for k in ("FMOE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(k, raising=False)


# ---------------------------------------------------------------------------------------------------- specs
def test_spec_parsing():
    assert is_remote_spec("openai:http://h:8000/v1#m") and not is_remote_spec("Qwen/Qwen3.5-35B-A3B")
    assert parse_remote_spec("openai:http://h:8000/v1/#Qwen/Qwen3.5") == ("http://h:8000/v1", "Qwen/Qwen3.5")
    assert parse_remote_spec("openai:https://api.example.com/v1") == ("https://api.example.com/v1", None)
    with pytest.raises(RemoteModelError, match="expected openai:http://HOST:PORT/v1#MODEL"):
        parse_remote_spec("openai:localhost:8000#m")


def test_wire_messages():
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
            {"role": "assistant", "content": "", "reasoning_content": "r",
             "tool_calls": [{"type": "function", "function": {"name": "a", "arguments": {"x": 1}}},
                            {"type": "function", "function": {"name": "b", "arguments": {}}}]},
            {"role": "tool", "name": "b", "content": "B"}, {"role": "tool", "name": "a", "content": "A"},
            {"role": "tool", "content": "Error: invalid tool call: ..."}]
    w = wire_messages(msgs)
    assert w[2] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "a", "arguments": '{"x": 1}'}},
        {"id": "call_2", "type": "function", "function": {"name": "b", "arguments": "{}"}}]}
    assert w[3] == {"role": "tool", "tool_call_id": "call_2", "content": "B"}
    assert w[4] == {"role": "tool", "tool_call_id": "call_1", "content": "A"}
    assert w[5] == {"role": "user", "content": "Error: invalid tool call: ..."}   # answers no call


# ---------------------------------------------------------------------------------------------------- the loop
def test_agent_against_endpoint(endpoint):
    """The agent loop with a tool against an OpenAI-compatible endpoint: a call, its result fed back, the answer.
    (Written against the ``endpoint`` fixture: a test of ``fmoe serve`` can run the same with its own fixture.)"""
    from fmoe.agent.loop import Agent
    from fmoe.tools.builtin_calculator import calculator

    endpoint.script(reply(None, [call("calculator", '{"expression": "1234 * 5678"}')]),
                    reply("1234 * 5678 = 7006652."))
    model = RemoteModel(endpoint.url)                        # no #MODEL: the endpoint's first model
    assert model.model == "fake-model"
    agent = Agent(model, None, [calculator], system="Use the tools.", max_steps=4)
    r = agent.run("What is 1234 * 5678?")
    assert r.answer == "1234 * 5678 = 7006652." and r.stop_reason == "final_answer"
    assert r.tool_calls == [{"name": "calculator", "arguments": {"expression": "1234 * 5678"}, "result": "7006652",
                             "is_error": False}]
    first, second = endpoint.requests
    assert first["model"] == "fake-model" and first["tools"] == [calculator.openai_schema()]
    assert first["tool_choice"] == "auto" and first["parallel_tool_calls"] is True
    assert first["messages"] == [{"role": "system", "content": "Use the tools."},
                                 {"role": "user", "content": "What is 1234 * 5678?"}]
    assert first["temperature"] == 0.0 and first["max_tokens"] == 512 and first["seed"] == 0
    a, t = second["messages"][2:]
    assert a["tool_calls"][0]["function"] == {"name": "calculator", "arguments": '{"expression": "1234 * 5678"}'}
    assert t == {"role": "tool", "tool_call_id": a["tool_calls"][0]["id"], "content": "7006652"}
    step = r.model_steps[0]
    assert step.tokens == 10 and step.prompt_tokens == 100 and step.parse_failure is None
    assert step.text == '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1234 * 5678"}}\n</tool_call>'
    assert r.stats.generated_tokens == 20 and r.stats.tool_calls == 1


@pytest.mark.parametrize("arguments,category,fragment", [
    ('{"expression": ', "unparsable", "not JSON"),
    ('{"expr": "1+1"}', "schema_violation", "'expression' is a required property"),
])
def test_invalid_arguments_checked_client_side(endpoint, arguments, category, fragment):
    from fmoe.agent.loop import Agent
    from fmoe.tools.builtin_calculator import calculator

    endpoint.script(reply(None, [call("calculator", arguments)]),
                    reply(None, [call("calculator", '{"expression": "1+1"}', "call_b")]), reply("2"))
    agent = Agent(RemoteModel(endpoint.url, "fake-model"), None, [calculator], max_steps=4)
    r = agent.run("1+1?")
    bad = r.model_steps[0]
    assert bad.calls == [] and bad.parse_failure.category == category and fragment in bad.parse_failure.message
    assert r.tool_calls[0]["arguments"] == {"expression": "1+1"} and r.answer == "2"
    # the failure went back to the endpoint (as a user message: it answers no call) and the run went on
    fed = endpoint.requests[1]["messages"][-1]
    assert fed["role"] == "user" and fed["content"].startswith("Error: invalid tool call") and fragment in fed["content"]


def test_unknown_tool_and_tool_choice(endpoint):
    from fmoe.agent.loop import Agent
    from fmoe.tools.builtin_calculator import calculator

    endpoint.script(reply(None, [call("search", "{}")]))
    agent = Agent(RemoteModel(endpoint.url, "fake-model"), None, [calculator], tool_choice={"name": "calculator"},
                  parallel_tool_calls=False)
    step = agent.turn([{"role": "user", "content": "x"}])
    assert step.parse_failure.category == "unknown_tool"
    req = endpoint.requests[0]
    assert req["tool_choice"] == {"type": "function", "function": {"name": "calculator"}}
    assert req["parallel_tool_calls"] is False


def test_api_key_from_env(monkeypatch):
    ep = FakeEndpoint(api_key="sekrit")
    try:
        ep.script(reply("hi"))
        with pytest.raises(RemoteModelError, match="401 unauthorized"):
            RemoteModel(ep.url, "fake-model", max_retries=0).turn([{"role": "user", "content": "x"}], [],
                                                                   _settings())
        monkeypatch.setenv("OPENAI_API_KEY", "sekrit")
        assert RemoteModel.from_spec(f"openai:{ep.url}#fake-model").turn(
            [{"role": "user", "content": "x"}], [], _settings()).content == "hi"
        monkeypatch.setenv("MY_KEY", "sekrit")
        monkeypatch.setenv("OPENAI_API_KEY", "wrong")
        m = RemoteModel.from_spec(f"openai:{ep.url}#fake-model", api_key_env="MY_KEY")
        assert m.api_key == "sekrit"
        with pytest.raises(RemoteModelError, match="MISSING_KEY is not set"):
            RemoteModel.from_spec(f"openai:{ep.url}#fake-model", api_key_env="MISSING_KEY")
    finally:
        ep.stop()


def _settings():
    from fmoe.agent.turn import TurnSettings
    from fmoe.engine.generate import Sampling

    return TurnSettings(max_tokens=32, sampling=Sampling())


# ---------------------------------------------------------------------------------------------------- fmoe run
def test_task_file_remote_model(endpoint, tmp_path, capsys, monkeypatch):
    from fmoe.cli.run import main

    monkeypatch.setenv("FMOE_TEST_KEY", "k")
    p = tmp_path / "task.yaml"
    p.write_text(textwrap.dedent(f"""\
        model: "openai:{endpoint.url}#fake-model"
        api_key_env: FMOE_TEST_KEY
        task: "What is 1234 * 5678?"
        tools: [calculator]
        sampling: {{temperature: 0.5, top_k: 20}}
        transcript: run.jsonl
        expect:
          calls: [{{name: calculator, arguments: {{expression: "1234 * 5678"}}}}]
          answer: "7006652"
        """))
    endpoint.script(reply(None, [call("calculator", '{"expression": "1234 * 5678"}')]), reply("It is 7006652."))
    assert main([str(p), "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["passed"] and out["answer"] == "It is 7006652." and out["model"] == f"openai:{endpoint.url}#fake-model"
    assert endpoint.requests[0]["temperature"] == 0.5 and endpoint.requests[0]["top_k"] == 20   # extra_body
    kinds = [json.loads(x)["type"] for x in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert "tool_step" in kinds and kinds[-1] == "result"


def test_task_file_bad_remote_spec(tmp_path):
    from fmoe.agent.taskfile import load_task

    p = tmp_path / "task.yaml"
    p.write_text('task: hi\nmodel: "openai:localhost:8000"\n')
    with pytest.raises(TaskFileError, match=r"task.yaml:2: field 'model': remote model .* expected openai:http"):
        load_task(p)


# ---------------------------------------------------------------------------------------------------- fmoe eval
def test_eval_against_endpoint(endpoint, tmp_path, capsys):
    from fmoe.cli.eval import main

    suite = tmp_path / "suite.yaml"
    suite.write_text(textwrap.dedent("""\
        name: remote-mini
        tools:
          calculator:
            type: function
            function:
              name: calculator
              description: Evaluate arithmetic.
              parameters: {type: object, properties: {expression: {type: string}}, required: [expression]}
        cases:
          - id: ok
            messages: [{role: user, content: "2+2?"}]
            tools: [calculator]
            expect: {calls: [[{name: calculator, arguments: {expression: "2+2"}}]]}
          - id: bad
            messages: [{role: user, content: "3+3?"}]
            tools: [calculator]
            expect: {calls: [[{name: calculator, arguments: {expression: "3+3"}}]]}
        """))
    endpoint.script(reply(None, [call("calculator", '{"expression": "2+2"}')]),
                    reply(None, [call("calculator", '{"expression": 6}')]))
    out = tmp_path / "out"
    assert main([str(suite), "--model", f"openai:{endpoint.url}#fake-model", "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    (v,) = res["variants"]
    assert v["variant"] == "remote" and v["bits"] is None and v["grammar"] is None
    assert v["kl_vs_reference"] is None and "skipped" in res["kl_reference"]
    assert v["parse_rate"] == 1.0 and v["schema_valid_rate"] == 0.5 and v["tool_accuracy"] == 0.5   # invalid: no call
    assert v["argument_accuracy"] == 0.5
    assert res["failure_counts"]["remote"] == {"schema_violation": 1}
    assert "KL skipped" in (out / "results.md").read_text()
