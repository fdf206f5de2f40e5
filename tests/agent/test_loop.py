"""Agent runtime (fmoe.agent.loop / turn / steps / transcript, fmoe.cli.run) on a tiny random-weight Qwen3.5-MoE.

A random model rarely chooses to start a tool call on its own, so tests that need calls add a small logits bias
towards ``<tool_call>`` at the first position of a turn (an extra processor after the grammar). Everything after
that token is the grammar's doing: the tools take enum / no arguments, so the calls are short.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import jsonschema
import numpy as np
import pytest
import torch

from fmoe.agent.expect import check_expect
from fmoe.agent.loop import Agent
from fmoe.structured.parser import ToolCall
from fmoe.engine.loader import load
from fmoe.agent.transcript import Transcript, read_transcript
from fmoe.tools import tool
from tiny_models import build_hf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny matrices: threads only add overhead (and thrash on a shared CI box)
    d = tmp_path_factory.mktemp("agent") / "tiny"
    build_hf(d, "qwen3_5_a")
    model, tok = load(d)
    yield d, model, tok
    torch.set_num_threads(threads)


class StartCall:
    """Bias the first token of a turn towards <tool_call> (a random model would not pick it)."""

    def __init__(self, tok):
        self.tid = tok.token_id("<tool_call>")
        self.n = 0

    def process(self, logits):
        if self.n == 0:
            logits[self.tid] += 100.0
        return logits

    def accept(self, t):
        self.n += 1

    def forced(self):
        return []

    def done(self):
        return True


@tool
def pick(color: Literal["red", "green"]) -> str:
    """Pick a color.

    Args:
        color: the color to pick.
    """
    return f"picked {color}"


@tool
def only_red(color: Literal["red"]) -> str:
    """Pick red.

    Args:
        color: must be red.
    """
    return "ok"


@tool
def boom() -> str:
    """Always fails."""
    raise RuntimeError("kaboom")


@tool
def hang() -> str:
    """Never returns in time."""
    time.sleep(5)
    return "late"


@tool
def huge() -> str:
    """Returns megabytes."""
    return "x" * (3 * 1024 * 1024)


def make_agent(tiny, tools, **kw):
    _, model, tok = tiny
    bias = StartCall(tok)
    kw.setdefault("max_tokens", 80)
    kw.setdefault("parallel_tool_calls", False)
    agent = Agent(model, tok, tools, processors=[bias], **kw)
    orig = agent.turn

    def turn(messages=None, step=1):
        bias.n = 0
        return orig(messages, step)
    agent.turn = turn
    return agent


def test_required_every_step_calls_and_stops_at_max_steps(tiny):
    agent = make_agent(tiny, [pick], tool_choice="required", max_steps=2)
    r = agent.run("pick a color")
    ms, ts = r.model_steps, r.tool_steps
    assert r.stop_reason == "max_steps" and len(ms) == 2
    schema = pick.parameters
    for s in ms:
        assert s.parse_failure is None and len(s.calls) == 1, s.text
        assert s.calls[0].name == "pick"
        jsonschema.validate(s.calls[0].arguments, schema)
        assert s.forced_tokens > 0
    assert [t.result for t in ts] == [f"picked {s.calls[0].arguments['color']}" for s in ms]
    # results were fed back as tool messages after assistant messages carrying tool_calls
    roles = [m["role"] for m in r.messages]
    assert roles == ["user", "assistant", "tool", "assistant", "tool"]
    assert r.messages[1]["tool_calls"][0]["function"]["name"] == "pick"
    assert r.messages[2]["content"] == ts[0].result
    # the second prompt contains the first result
    assert "<tool_response>\n" + ts[0].result in agent.tok.decode(ms[1].prompt_ids)
    d = r.to_dict()
    assert d["steps"] == 2 and len(d["tool_calls"]) == 2 and d["tool_calls"][0]["name"] == "pick"


def test_prefix_reuse_prefills_only_new_tokens(tiny):
    _, model, tok = tiny
    agent = make_agent(tiny, [pick], tool_choice="required", max_steps=2)
    r = agent.run("pick a color please")
    s0, s1 = r.model_steps
    p0, p1 = s0.prompt_ids, s1.prompt_ids
    assert s0.reused_tokens + s0.prefilled_tokens == len(p0)
    # second step: exactly the new tokens
    assert p1[:len(p0)] == p0 and not s1.prefix_fallback
    assert s1.reused_tokens == len(p0) and s1.prefilled_tokens == len(p1) - len(p0)
    # logits after resuming the snapshot == a full prefill
    snap = next(s for s in agent.prefix.snapshots if s.tokens == p0)
    resumed = model.ops.to_numpy(model.forward(p1[len(p0):], snap.snapshot()))
    full = model.ops.to_numpy(model.forward(p1, model.new_cache()))
    assert np.max(np.abs(resumed - full)) < 1e-4
    # a new conversation (another agent, same model and tools) resumes the system + tools block
    again = make_agent(tiny, [pick], tool_choice="required", max_steps=1).run("another one")
    s = again.model_steps[0]
    assert 0 < s.reused_tokens < s.prompt_tokens and s.prefilled_tokens == s.prompt_tokens - s.reused_tokens


def test_prefix_fallback_is_recorded(tiny):
    """A second user turn re-renders earlier assistant turns (no think block): not a prefix -> recorded."""
    _, model, tok = tiny
    agent = Agent(model, tok, [pick], tool_choice="none", max_steps=1, max_tokens=4)
    a = agent.chat("hello")
    b = agent.chat("and again")
    assert a.stop_reason == "final_answer"
    s = b.model_steps[0]
    assert s.prefix_fallback
    assert s.reused_tokens > 0 and s.reused_tokens + s.prefilled_tokens == s.prompt_tokens


@pytest.mark.parametrize("fn,needle", [(boom, "kaboom"), (hang, "timed out"), (huge, "truncated")])
def test_failing_tools_do_not_stop_the_agent(tiny, fn, needle):
    agent = make_agent(tiny, [fn], tool_choice={"name": fn.name}, max_steps=2, tool_timeout=0.3,
                       max_tool_output=4096)
    t0 = time.perf_counter()
    r = agent.run("go")
    assert len(r.model_steps) == 2 and r.stop_reason == "max_steps"
    t = r.tool_steps[0]
    assert needle in t.result
    assert len(t.result.encode()) <= 4096
    assert (t.is_error or t.truncated)
    tool_msgs = [m for m in r.messages if m["role"] == "tool"]
    assert len(tool_msgs) == 2
    if t.is_error:
        assert tool_msgs[0]["content"].startswith("Error")
    if fn is hang:
        assert time.perf_counter() - t0 < 4.5


def test_registry_exception_is_an_error_result(tiny, monkeypatch):
    """An exception outside the Tool's own handling (here: the registry's acall raises) is an error tool message for
    the model; the run goes on."""
    agent = make_agent(tiny, [pick], tool_choice="required", max_steps=2)

    async def broken(name, arguments=None, *, timeout=None):
        raise RuntimeError("registry exploded")
    monkeypatch.setattr(agent.registry, "acall", broken)
    r = agent.run("pick a color")
    assert len(r.model_steps) == 2 and r.stop_reason == "max_steps"
    t = r.tool_steps[0]
    assert t.is_error and "tool 'pick' failed" in t.result and "registry exploded" in t.result
    tool_msgs = [m for m in r.messages if m["role"] == "tool"]
    assert len(tool_msgs) == 2 and "registry exploded" in tool_msgs[0]["content"]


def test_repeated_identical_call_stops(tiny):
    agent = make_agent(tiny, [only_red], tool_choice="required", max_steps=6)
    r = agent.run("red")
    assert r.stop_reason == "repeated_call"
    assert len(r.model_steps) == 3 and len(r.tool_steps) == 2


def test_transcript_lines_parse(tiny, tmp_path):
    path = tmp_path / "run.jsonl"
    with Transcript(path) as tr:
        agent = make_agent(tiny, [pick], tool_choice="required", max_steps=1, transcript=tr)
        agent.run("pick")
    lines = read_transcript(path)
    types = [x["type"] for x in lines]
    assert types[0] == "task" and types[-1] == "final"
    assert {"message", "model_step", "tool_step"} <= set(types)
    ms = next(x for x in lines if x["type"] == "model_step")
    assert {"text", "calls", "timings", "engine", "prefilled_tokens", "reused_tokens"} <= set(ms)
    assert all("t" in x for x in lines)


def test_events_and_ui(tiny):
    from io import StringIO

    from rich.console import Console

    from fmoe.agent.ui import AgentUI

    buf = StringIO()
    ui = AgentUI(Console(file=buf, width=100, force_terminal=False))
    kinds = []

    def on_event(kind, **data):
        kinds.append(kind)
        ui(kind, **data)
    agent = make_agent(tiny, [pick], tool_choice="required", max_steps=1, on_event=on_event)
    r = agent.run("pick")
    ui.summary(r)
    out = buf.getvalue()
    assert kinds[0] == "step_start" and "model_step" in kinds and "tool_step" in kinds and kinds[-1] == "final"
    assert "step 1/1" in out and "→ pick" in out and "← pick" in out and "tok/s" in out


def test_check_expect():
    calls = [{"name": "calc", "arguments": {"expression": "2+2", "n": 2.0}}, {"name": "x", "arguments": {}}]
    assert check_expect({"calls": [{"name": "calc", "arguments": {"n": 2}}], "answer": "4"}, calls, "it is 4")[
        "passed"]
    assert not check_expect({"calls": [{"name": "x"}, {"name": "calc"}]}, calls, "")["passed"]   # order
    assert not check_expect({"answer": "5"}, calls, "it is 4")["passed"]
    assert not check_expect({"calls": [{"name": "calc", "arguments": {"n": 3}}]}, calls, "")["passed"]


def _write_task(tmp_path, model_dir, body: str) -> Path:
    p = tmp_path / "task.yaml"
    p.write_text(f"model: {model_dir}\n" + body)
    return p


def test_cli_run_json(tiny, tmp_path, capsys):
    from fmoe.cli import main

    d, _, _ = tiny
    task = _write_task(tmp_path, d, "task: hi\ntools: [calculator]\nmax_steps: 2\nmax_tokens: 6\n"
                                    "transcript: out.jsonl\nexpect: {answer: '.'}\n")
    rc = main(["run", str(task), "--json", "--quiet"])
    out = capsys.readouterr().out.strip().splitlines()
    obj = json.loads(out[-1])
    assert {"answer", "steps", "tool_calls", "stats", "passed"} <= set(obj)
    assert obj["steps"] >= 1 and isinstance(obj["tool_calls"], list)
    assert rc == (0 if obj["passed"] else 1)
    assert {"generated_tokens", "decode_tok_s", "prefilled_tokens", "reused_tokens", "engine"} <= set(obj["stats"])
    assert [json.loads(x)["type"] for x in (tmp_path / "out.jsonl").read_text().splitlines()][0] == "task"


def test_cli_errors_go_to_the_dispatcher(tmp_path, capsys):
    """The commands leave FmoeError to fmoe.cli.main: one "fmoe CMD: error: ..." line on stderr, exit status 2."""
    from fmoe.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("task: hi\nmax_steps: nope\n")
    cases = [(["run", str(bad)], "fmoe run: error: "), (["tools", "list", str(bad)], "fmoe tools: error: "),
             (["eval", "no-such-suite", "--out", str(tmp_path / "o")], "fmoe eval: error: no suite"),
             (["chat", "--tools", "no_such_tool"], "fmoe chat: error: ")]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(needle) and err.count("error:") == 1, (argv, err)
        if argv[0] in ("run", "tools"):
            assert "bad.yaml:2: field 'max_steps'" in err, err


def test_cli_run_several_tasks(tiny, tmp_path, capsys):
    from fmoe.cli import run as cli_run

    d, _, _ = tiny
    task = _write_task(tmp_path, d, "tasks: [one, two]\ntools: [calculator]\nmax_steps: 1\nmax_tokens: 4\n")
    assert cli_run.main([str(task), "--json", "--quiet"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 3 and [x["task"] for x in lines[:2]] == ["one", "two"]
    assert len(lines[-1]["tasks"]) == 2 and {"answer", "steps", "tool_calls", "stats"} <= set(lines[-1])


def test_cli_tools_list(capsys):
    from fmoe.cli import tools as cli_tools

    assert cli_tools.main(["list", "--json"]) == 0
    names = {t["function"]["name"] for t in json.loads(capsys.readouterr().out)}
    assert {"calculator", "read_file", "current_time"} <= names
    assert cli_tools.main(["list"]) == 0
    assert "calculator" in capsys.readouterr().out


def test_cli_chat_reads_stdin(tiny, monkeypatch, capsys):
    import io

    from fmoe.cli import chat as cli_chat

    d, _, _ = tiny
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/exit\nnot read\n"))
    assert cli_chat.main(["--model", str(d), "--tools", "calculator", "--max-tokens", "4", "--max-steps", "1",
                          "--quiet"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) >= 1


@tool
def nap(which: Literal["a", "b"]) -> str:
    """Sleep a little.

    Args:
        which: a label.
    """
    time.sleep(0.4)
    return f"slept {which}"


class AlwaysCall(StartCall):
    """Start a call, and prefer another call over ending the turn (the grammar still decides what is allowed)."""

    def __init__(self, tok):
        super().__init__(tok)
        self.eos = tok.token_id("<|im_end|>")

    def process(self, logits):
        logits[self.tid] += 100.0
        logits[self.eos] -= 100.0   # still chosen when it is the only token the grammar allows
        return logits


def test_parallel_calls_run_concurrently_with_a_bound(tiny):
    _, model, tok = tiny
    agent = Agent(model, tok, [nap], tool_choice="required", parallel_tool_calls=True, max_calls=2, max_steps=1,
                  max_tokens=120, processors=[AlwaysCall(tok)], max_parallel=2)
    t0 = time.perf_counter()
    r = agent.run("nap twice")
    assert len(r.model_steps[0].calls) == 2 and len(r.tool_steps) == 2
    assert [t.result.startswith("slept") for t in r.tool_steps] == [True, True]
    assert [m["role"] for m in r.messages] == ["user", "assistant", "tool", "tool"]
    t0 = time.perf_counter()
    res = agent.run_calls([ToolCall("nap", {"which": "a"})] * 4)
    dt = time.perf_counter() - t0
    assert all(x.content == "slept a" for x in res)
    assert 0.75 < dt < 1.5     # two at a time: 2 x 0.4 s (sequential would be 1.6 s, unbounded 0.4 s)


def test_thinking_mode_runs(tiny):
    _, model, tok = tiny
    agent = Agent(model, tok, [pick], tool_choice="none", max_steps=1, max_tokens=6, thinking=True)
    r = agent.run("think")
    assert r.stop_reason == "final_answer" and len(r.model_steps) == 1
    assert "<think>\n" in tok.decode(r.model_steps[0].prompt_ids[-4:])
