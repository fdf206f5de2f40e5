"""Latency of `fmoe serve` through the openai SDK (not a test: run it against a server you started).

    fmoe serve --port 8766 &
    python tests/server/measure_latency.py http://127.0.0.1:8766
"""
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
import openai
from fmoe.tools.demo import tool_schemas
from fmoe.tools.builtin_calculator import calculator
tools = dict(tool_schemas()); tools["calculator"] = calculator.openai_schema(); tools = list(tools.values())
c = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="x", max_retries=0)
def call(q):
    t = time.perf_counter()
    r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": q}], tools=tools)
    return time.perf_counter() - t, r
for label in ("first request (system+tools block prefilled and pinned)", "second request, new question (block reused)"):
    dt, r = call("What is 1234 * 5678?" if "first" in label else "What is 4321 * 8765?")
    print(f"{label}: {dt:.2f} s, prompt {r.usage.prompt_tokens}, cached {r.usage.prompt_tokens_details.cached_tokens}, completion {r.usage.completion_tokens}")
msgs = [{"role": "user", "content": "What is 1234 * 5678?"}]
r1 = c.chat.completions.create(model="m", messages=msgs, tools=tools)
msgs += [r1.choices[0].message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": r1.choices[0].message.tool_calls[0].id, "content": "7006652"}]
t = time.perf_counter(); r2 = c.chat.completions.create(model="m", messages=msgs, tools=tools); dt = time.perf_counter() - t
print(f"tool-result turn: {dt:.2f} s, prompt {r2.usage.prompt_tokens}, cached {r2.usage.prompt_tokens_details.cached_tokens}: {r2.choices[0].message.content!r}")
t = time.perf_counter(); first = None
for ch in c.chat.completions.create(model="m", messages=[{"role": "user", "content": "What is 1234 * 5678?"}], tools=tools, stream=True):
    if first is None and ch.choices and ch.choices[0].delta.tool_calls: first = time.perf_counter() - t
print(f"streamed: first tool-call delta after {first:.2f} s, done after {time.perf_counter() - t:.2f} s")
qs = [f"What is {a} * {b}?" for a, b in [(12, 34), (56, 78), (99, 11), (123, 456), (7, 8), (31, 41), (250, 4), (1000, 3)]]
t = time.perf_counter()
with ThreadPoolExecutor(8) as ex: rs = list(ex.map(call, qs))
ok = sum(json.loads(r.choices[0].message.tool_calls[0].function.arguments)["expression"] == q[8:-1] for (_, r), q in zip(rs, qs))
print(f"8 concurrent clients: {time.perf_counter() - t:.2f} s wall, {ok}/8 right calls, slowest {max(d for d, _ in rs):.2f} s")
