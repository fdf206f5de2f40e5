"""Fixtures of the storage tests: a tiny Hugging Face checkpoint in the streaming-friendly shape."""
import pytest

import tiny_models


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf") / "hf"
    tiny_models.build_hf(d, "stream", seed=3)
    return d
