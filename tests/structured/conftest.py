"""Fixtures of the structured-output tests: the Qwen3.5 tokenizer, and fmoe.bench.grammar's mask-bench cases read from
the subset in tests/data (tests/data/SOURCES.md), never from elsewhere."""
from pathlib import Path

import pytest

from fmoe.bench import grammar as bench_grammar
from fmoe.structured.qwen_vocab import qwen35_tokenizer


@pytest.fixture(autouse=True, scope="session")
def _maskbench_subset():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench_grammar, "DATA_DIR", Path(__file__).resolve().parents[1] / "data" / "extdata" / "maskbench")
        yield


@pytest.fixture(scope="session")
def tok():
    return qwen35_tokenizer()
