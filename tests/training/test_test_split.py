"""The fresh test split (issue 16): training/test.jsonl and the built-in suite demo-test.

Reproducible from its seed, the held-out distribution (held-out pools), disjoint from the held-out split (both
training/heldout.jsonl and the built-in suite demo-heldout, which was written from an earlier heldout.jsonl) and from
training records of the default seed, and the suite file is the jsonl.
"""
from __future__ import annotations

import json

import pytest
import yaml

from fmoe.eval.suite import BUILTIN, resolve_suite
from training import HELDOUT_PATH, TEST_PATH, datagen
from training.heldout_suite import heldout_to_suite

N_TRAIN = 2000


@pytest.fixture(scope="module")
def test_recs():
    return datagen.read_jsonl(TEST_PATH)


@pytest.fixture(scope="module")
def heldout_prompts():
    recs = datagen.read_jsonl(HELDOUT_PATH) + datagen.heldout_suite_records()
    return {datagen.prompt_key(r) for r in recs}, {datagen.conversation_key(r) for r in recs}


@pytest.fixture(scope="module")
def train_prompts():
    recs = datagen.generate_parallel(datagen.DEFAULT_SEED, "train", N_TRAIN, workers=2, chunk=N_TRAIN // 2)
    return {datagen.prompt_key(r) for r in recs}, {datagen.conversation_key(r) for r in recs}


def _index(r: dict) -> int:
    split, i = r["id"].rsplit("-", 1)
    assert split == "test"
    return int(i)


def test_test_split_is_reproducible_from_its_seed(test_recs, heldout_prompts, train_prompts):
    assert len(test_recs) == 200
    idx = [_index(r) for r in test_recs]
    assert idx == sorted(set(idx))
    for r in test_recs[:20]:
        fresh = datagen.make_example(datagen.TEST_SEED, "test", _index(r))
        assert json.dumps(fresh, sort_keys=True) == json.dumps(r, sort_keys=True), r["id"]
    # an index before the 20th record is skipped iff its prompt was seen (held-out, training, earlier test); the
    # file was filtered against 10,000 training records of 4 seeds, this sample is 2,000 of one, so one-sided:
    # a duplicate within this sample is never kept
    kept = {_index(r) for r in test_recs[:20]}
    seen: set[str] = set()
    for i in range(idx[19] + 1):
        pk = datagen.prompt_key(datagen.make_example(datagen.TEST_SEED, "test", i))
        if pk in heldout_prompts[0] or pk in train_prompts[0] or pk in seen:
            assert i not in kept, i
        seen.add(pk)
    assert len(kept) == 20 and idx[19] < 30


def test_test_split_draws_like_heldout_from_another_stream():
    g, h = datagen.Gen(datagen.TEST_SEED, "test", 0), datagen.Gen(datagen.DEFAULT_SEED, "heldout", 0)
    assert g.split == "heldout" and g.p == datagen.pools("heldout") == h.p
    assert datagen.TEST_SEED != datagen.DEFAULT_SEED and datagen.TEST_STREAM != datagen.HELDOUT_STREAM


def test_test_split_disjoint_from_heldout_and_train(test_recs, heldout_prompts, train_prompts):
    prompts = [datagen.prompt_key(r) for r in test_recs]
    assert len(set(prompts)) == len(prompts)
    convs = {datagen.conversation_key(r) for r in test_recs}
    for pks, cks in (heldout_prompts, train_prompts):
        assert not set(prompts) & pks
        assert not convs & cks


def test_suite_file_matches_the_jsonl(test_recs):
    assert BUILTIN["demo-test"].name == "demo_test.yaml"
    data = yaml.safe_load(BUILTIN["demo-test"].read_text(encoding="utf-8"))
    assert data == heldout_to_suite(TEST_PATH, "demo-test", data["description"])
    assert [c["id"] for c in data["cases"]] == [r["id"] for r in test_recs]
    suite = resolve_suite("demo-test")
    assert suite.name == "demo-test" and len(suite.cases) == len(test_recs) == 200
