"""The demo model's training code (not part of the installed package): the seeded data generator, the tokenizer
and model trainers, the engine-free held-out evaluation and the H200 device scripts.

    python -m training.datagen --split heldout --n 200 --out training/heldout.jsonl
    python -m training.datagen --split test --n 200 --train-seeds 1234,81,82,83 --train-sample 2500 \
        --out training/test.jsonl                                  # the fresh test split (issue 16)
    python -m training.train_tokenizer --out fmoe/demo/model
    python -m training.train --minutes 20 --out runs/demo      # on a GPU (device_scratch.sh)
"""
from pathlib import Path

HELDOUT_PATH = Path(__file__).resolve().parent / "heldout.jsonl"
TEST_PATH = Path(__file__).resolve().parent / "test.jsonl"
