"""``fmoe serve``: the engine behind OpenAI's and Anthropic's HTTP APIs, for the clients people already use.

    fmoe serve [--model PATH] [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--max-queue 8] [model options]

    curl http://127.0.0.1:8000/v1/chat/completions -H 'content-type: application/json' \\
         -d '{"model": "fmoe", "messages": [{"role": "user", "content": "What is 1234 * 5678?"}], "tools": [...]}'
    openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")        # the official SDKs
    anthropic.Anthropic(base_url="http://127.0.0.1:8000", api_key="unused")

    from fmoe.server.run import BackgroundServer                                 # in Python (tests, notebooks)
    with BackgroundServer(model, tok, port=0) as srv: ...                        # srv.url

Routes: POST /v1/chat/completions, GET /v1/models, POST /v1/messages, POST /v1/messages/count_tokens, GET /health.
One turn runs at a time on the single engine; up to --max-queue requests wait (then 429 with Retry-After). Without
--api-key, POST bodies must be application/json (415) and the Host header a loopback name or an IP address (403).
Tool calls and response_format JSON are generated under the grammar (valid by construction). Modules: app.py
(routes, key, Host check, errors), engine.py (queue, worker, prefix cache, token budget), openai_api.py,
anthropic_api.py (translation both ways), stream.py (content vs calls while streaming), http.py (request plumbing,
the tool check of both APIs), errors.py, run.py (uvicorn). Reference: docs/reference/server.md.
"""
