"""Input handling: 0 is a value for --experts-per-token and --memory-budget (not "unset"), a bad FMOE_THREADS, a
negative sampling seed and a negative --max-tokens are errors naming what is wrong, not tracebacks."""
from __future__ import annotations

import argparse

import pytest

from fmoe.cli import generate as cli_generate
from fmoe.cli.options import add_model_options, model_options
from fmoe.engine.generate import Sampling
from fmoe.engine.loader import ModelOptions
from fmoe.engine.model import Model
from fmoe.errors import ConfigError, FmoeError
from fmoe.kernels import native
from fmoe.storage import synth as synth_mod
from fmoe.storage.stream_layout import open_streaming


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return synth_mod.synth(tmp_path_factory.mktemp("inputs") / "m", "tiny", layers=2, experts=8, progress=False,
                           fsync=False)


def _args(*argv):
    p = argparse.ArgumentParser()
    add_model_options(p)
    return p.parse_args(list(argv))


class _Task:
    backend = "torch"
    experts_per_token = 4
    memory_budget = 2_000_000_000


def test_zero_experts_and_zero_budget_reach_the_options():
    o = model_options(_args("--experts-per-token", "0", "--memory-budget", "0"))
    assert o.experts_per_token == 0 and o.memory_budget == 0
    # 0 on the command line overrides the task file's settings instead of falling back to them
    o = model_options(_args("--experts-per-token", "0", "--memory-budget", "0"), _Task())
    assert o.experts_per_token == 0 and o.memory_budget == 0
    o = model_options(_args(), _Task())
    assert o.experts_per_token == 4 and o.memory_budget == 2_000_000_000
    assert model_options(_args()).memory_budget is None


def test_zero_experts_per_token_is_refused(model_dir):
    with pytest.raises(ConfigError, match="experts per token must be in 1..8, got 0"):
        Model(open_streaming(model_dir), backend="torch", experts_per_token=0)
    assert Model(open_streaming(model_dir), backend="torch").experts_per_token == open_streaming(
        model_dir).config.num_experts_per_tok


@pytest.mark.parametrize("mode", ["page-cache", "direct"])
def test_zero_memory_budget_keeps_no_expert_cache(model_dir, mode):
    """--memory-budget 0: no engine cache in either mode (before, `or` turned it into None: in direct mode, the
    default of a quarter of RAM)."""
    o = ModelOptions(memory_budget=0, io_mode=mode)
    store = open_streaming(model_dir).expert_source(**o.stream())
    try:
        assert store.memory_budget == 0
        store.get(0, [0, 1])
        s = store.stats()
        assert s["resident_bytes"] == 0 and s["cached_experts"] == 0
    finally:
        store.close()


def test_bad_fmoe_threads_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv("FMOE_THREADS", "abc")
    with pytest.raises(FmoeError, match="FMOE_THREADS.*'abc'"):
        native.threads()
    monkeypatch.setenv("FMOE_THREADS", "2")
    assert native.threads() == 2


@pytest.mark.parametrize("seed", [-1, 1.5, "3", True])
def test_sampling_refuses_a_bad_seed(seed):
    with pytest.raises(FmoeError, match="seed"):
        Sampling(seed=seed)


def test_sampling_accepts_none_and_whole_seeds():
    import numpy as np

    for seed in (None, 0, 7, np.int64(3), 2**40):
        assert Sampling(temperature=1.0, seed=seed).seed == seed


def test_generate_refuses_negative_max_tokens(model_dir):
    with pytest.raises(FmoeError, match="--max-tokens must be >= 0, got -1"):
        cli_generate.main(["--model", str(model_dir), "--prompt", "hi", "--max-tokens", "-1"])
