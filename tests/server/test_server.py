"""The server around the engine: concurrent clients, the bounded queue (429), bad requests (400 naming the field),
the API key, what a keyless server refuses (non-JSON bodies: 415, foreign Host headers: 403), and a client that
disconnects mid-stream."""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.server.conftest import QUESTION, demo_tools
from tests.server.rawhttp import connect, get, post

CHAT = "/v1/chat/completions"


def chat(content="Hi", **kw):
    return {"model": "fmoe-demo", "messages": [{"role": "user", "content": content}], **kw}


def test_eight_concurrent_clients(client):
    pairs = [(12, 34), (56, 78), (99, 11), (123, 456), (7, 8), (31, 41), (250, 4), (1000, 3)]

    def one(p):
        r = client.chat.completions.create(model="fmoe-demo", tools=demo_tools(),
                                           messages=[{"role": "user", "content": f"What is {p[0]} * {p[1]}?"}])
        return json.loads(r.choices[0].message.tool_calls[0].function.arguments)

    with ThreadPoolExecutor(8) as ex:
        got = list(ex.map(one, pairs))
    assert got == [{"expression": f"{a} * {b}"} for a, b in pairs]


def _wait_health(url, ok, timeout=30):
    t0 = time.monotonic()
    while True:
        h = get(url, "/health")[2]
        if ok(h):
            return h
        assert time.monotonic() - t0 < timeout, h
        time.sleep(0.05)


def _long_stream(url):
    """A streamed request that keeps the engine busy (~50 s) until its connection is closed."""
    body = chat("Describe Paris.", response_format={"type": "json_object"}, max_tokens=2000, stream=True)
    conn = connect(url)
    conn.request("POST", CHAT, body=json.dumps(body), headers={"content-type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    return conn, r


def test_full_queue_answers_429(demo):
    from fmoe.server.run import BackgroundServer

    model, tok = demo
    with BackgroundServer(model, tok, port=0, max_queue=1) as srv:
        busy, _ = _long_stream(srv.url)                        # running
        _wait_health(srv.url, lambda h: h["running"])
        with ThreadPoolExecutor(1) as ex:
            waiting = ex.submit(post, srv.url, CHAT, chat(QUESTION, tools=demo_tools()))     # waits in the queue
            _wait_health(srv.url, lambda h: h["waiting"] == 1)
            status, headers, err = post(srv.url, CHAT, chat(QUESTION, tools=demo_tools()))   # one too many
            busy.sock.close()                                  # the busy client leaves: its turn stops
            busy.close()
            assert status == 429, err
            assert int(headers["retry-after"]) >= 1
            assert err["error"]["type"] == "rate_limit_error" and err["error"]["code"] == "queue_full"
            status, _, body = waiting.result(timeout=60)
        assert status == 200 and body["choices"][0]["message"]["tool_calls"]


@pytest.mark.parametrize("body, param", [
    (b"{not json", None),
    (chat(messages=None), "messages"),
    ({"model": "m", "messages": [{"role": "robot", "content": "hi"}]}, "messages.[0].role"),
    ({"model": "m", "messages": []}, "messages"),
    (chat(temperature=5), "temperature"),
    (chat(n=2), "n"),
    (chat(tools=[{"type": "function", "function": {"name": "t", "parameters": {
        "type": "object", "properties": {"a": {"not": {"type": "string"}}}}}}]), "tools.[0].function.parameters"),
    (chat(tools=demo_tools(), tool_choice={"type": "function", "function": {"name": "nope"}}),
     "tool_choice.function.name"),
    (chat(tool_choice="sometimes"), "tool_choice"),
    (chat(response_format={"type": "xml"}), "response_format.type"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "",
      "tool_calls": [{"id": "c", "type": "function", "function": {"name": "t", "arguments": "{oops"}}]}]},
     "messages.[1].tool_calls.[0].function.arguments"),
    (chat("word " * 5000), "messages"),
    (chat(seed=-1, temperature=1), "seed"),
    (chat(tools=[{"type": "function", "function": {"name": "t", "parameters": {"properties": "x"}}}]),
     "tools.[0].function.parameters"),
    (chat(tools=[{"type": "function", "function": {"name": "t", "parameters": {"type": "object", "required": 3}}}]),
     "tools.[0].function.parameters"),
    (chat(tools=[{"type": "function", "function": {"name": "t", "parameters": True}}]),
     "tools.[0].function.parameters"),
    (chat(tools=[*demo_tools(), demo_tools()[0]]), f"tools.[{len(demo_tools())}].function.name"),
    (chat(tools=[{"type": "function", "function": {"name": "big", "parameters": {
        "type": "object", "properties": {f"property_number_{i:03d}_with_a_rather_long_name": {"type": "string"}
                                         for i in range(40)},
        "required": [f"property_number_{i:03d}_with_a_rather_long_name" for i in range(40)]}}}]),
     "tools.[0].function.parameters"),     # its shortest call does not fit the call budget (max_call_tokens)
])
def test_bad_requests_answer_400_naming_the_field(server, body, param):
    if isinstance(body, dict) and body.get("messages") is None:
        body = {k: v for k, v in body.items() if k != "messages"}
    status, _, err = post(server.url, CHAT, body)
    assert status == 400, err
    e = err["error"]
    assert e["type"] == "invalid_request_error" and e["message"]
    assert e["param"] == param, e


def test_context_overflow_is_named(server):
    status, _, err = post(server.url, CHAT, chat("word " * 5000))
    assert status == 400 and err["error"]["code"] == "context_length_exceeded"
    assert "context" in err["error"]["message"]


def test_unsupported_schema_names_tool_and_keyword(server):
    import openai

    bad = {"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string", "pattern": "(?<=a)b"}}}}}
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], tools=[bad])
    assert "'lookup'" in e.value.body["message"] and "'pattern'" in e.value.body["message"]


def test_anthropic_errors_in_anthropic_shape(server):
    status, _, err = post(server.url, "/v1/messages", {"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert status == 400 and err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in err["error"]["message"]
    status, _, err = post(server.url, "/v1/messages", {"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": "x"}], "tools": [{"name": "t", "input_schema": {
            "type": "object", "properties": {"a": {"not": {}}}}}]})
    assert status == 400 and "tools.[0].input_schema" in err["error"]["message"]
    status, _, err = post(server.url, "/v1/messages", {"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": "x"}], "tools": [{"name": "t", "input_schema": {"properties": "x"}}]})
    assert status == 400 and err["error"]["message"].startswith("tools.[0].input_schema: "), err
    assert "not a valid JSON Schema" in err["error"]["message"]
    status, _, err = post(server.url, "/v1/messages", {"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": "x"}], "tools": [{"name": "t", "input_schema": {"type": "object"}},
                                                     {"name": "t", "input_schema": {"type": "object"}}]})
    assert status == 400 and err["error"]["message"].startswith("tools.[1].name: duplicate tool name"), err


@pytest.mark.parametrize("path", [CHAT, "/v1/messages", "/v1/messages/count_tokens"])
@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", None])
def test_post_bodies_must_be_json(server, path, ctype):
    """A web page can POST text/plain or a form to 127.0.0.1 without a CORS preflight; never application/json."""
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    conn = connect(server.url)
    conn.request("POST", path, body=json.dumps(body), headers={"content-type": ctype} if ctype else {})
    r = conn.getresponse()
    err = json.loads(r.read())
    conn.close()
    assert r.status == 415, err
    if path.startswith("/v1/messages"):
        assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
        assert "application/json" in err["error"]["message"]
    else:
        assert err["error"]["code"] == "unsupported_media_type" and "application/json" in err["error"]["message"]
    status, _, _ = post(server.url, path, body, {"content-type": "application/json; charset=utf-8"})
    assert status == 200


def test_keyless_server_refuses_foreign_host_headers(server):
    """DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 sends Host: evil.example."""
    port = server.port
    status, _, err = get(server.url, "/health", {"Host": f"evil.example:{port}"})
    assert status == 403 and err["error"]["code"] == "invalid_host", err
    status, _, err = post(server.url, CHAT, chat(), {"Host": "evil.example"})
    assert status == 403 and "Host" in err["error"]["message"]
    status, _, err = post(server.url, "/v1/messages", {"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "hi"}]}, {"Host": "evil.example"})
    assert status == 403 and err["type"] == "error" and err["error"]["type"] == "permission_error"
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert get(server.url, "/health", {"Host": host})[0] == 200


def test_unknown_route_and_method_are_json(server):
    status, _, err = get(server.url, "/v1/nope")
    assert status == 404 and "error" in err
    status, _, err = get(server.url, CHAT)
    assert status == 405 and "error" in err


def test_api_key(demo):
    import anthropic
    import openai

    from fmoe.server.run import BackgroundServer

    model, tok = demo
    with BackgroundServer(model, tok, port=0, api_key="sekret") as srv:
        assert get(srv.url, "/health")[0] == 200                      # health needs no key
        assert get(srv.url, "/health", {"Host": "fmoe.example.com"})[0] == 200   # the key guards: any Host
        assert get(srv.url, "/v1/models")[0] == 401
        status, _, err = get(srv.url, "/v1/models", {"Authorization": "Bearer wrong"})
        assert status == 401 and err["error"]["code"] == "invalid_api_key"
        assert get(srv.url, "/v1/models", {"Authorization": "Bearer sekret"})[0] == 200
        assert get(srv.url, "/v1/models", {"x-api-key": "sekret"})[0] == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).models.list()
        ok = openai.OpenAI(base_url=srv.url + "/v1", api_key="sekret", max_retries=0)
        assert [m.id for m in ok.models.list()]
        with pytest.raises(anthropic.AuthenticationError):
            anthropic.Anthropic(base_url=srv.url, api_key="wrong", max_retries=0).messages.create(
                model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        m = anthropic.Anthropic(base_url=srv.url, api_key="sekret", max_retries=0).messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        assert m.usage.output_tokens > 0


def test_disconnect_stops_the_generation(server):
    # a JSON object response on the demo model runs on until max_tokens (~40 tokens/s here): 2000 tokens ~ 50 s
    conn, r = _long_stream(server.url)
    seen = 0
    while seen < 4:
        seen += r.fp.readline().startswith(b"data: ")
    conn.sock.close()
    conn.close()
    h = _wait_health(server.url, lambda h: not h["running"] and h["last"].get("finish") == "cancelled", 15)
    assert h["last"]["completion_tokens"] < 2000
