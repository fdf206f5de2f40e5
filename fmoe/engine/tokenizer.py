"""Tokenizer (``tokenizer.json`` through ``tokenizers``) and chat template rendered with jinja2 the way
transformers' ``apply_chat_template`` does (sandboxed environment, trim/lstrip blocks, ``tojson``,
``raise_exception``, ``strftime_now``), with tools, tool results, the generation prompt and thinking on/off."""
from __future__ import annotations

import json
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer

from fmoe.errors import FmoeError


class TokenizerError(FmoeError):
    """Tokenizer files are missing or malformed, or the chat template failed."""


def _raise(message: str):
    raise TokenizerError(f"chat template: {message}")


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


class Tokenizer:
    def __init__(self, hf: HFTokenizer, chat_template: str | None, eos_token_ids: list[int], source: str = ""):
        self.hf = hf
        self.chat_template = chat_template
        self.eos_token_ids = eos_token_ids
        self.source = source

    @classmethod
    def from_dir(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        tj = path / "tokenizer.json"
        if not tj.exists():
            raise TokenizerError(f"{path}: no tokenizer.json")
        try:
            hf = HFTokenizer.from_file(str(tj))
        except Exception as e:  # tokenizers raises plain Exceptions
            raise TokenizerError(f"{tj}: cannot load: {e}") from None
        cfg = _read_json(path / "tokenizer_config.json")
        template = None
        if (path / "chat_template.jinja").exists():
            template = (path / "chat_template.jinja").read_text()
        elif (path / "chat_template.json").exists():
            template = _read_json(path / "chat_template.json").get("chat_template")
        if template is None:
            template = cfg.get("chat_template")
            if isinstance(template, list):   # [{"name": "default", "template": ...}, ...]
                named = {t.get("name"): t.get("template") for t in template}
                template = named.get("default") or next(iter(named.values()), None)
        eos: list[int] = []

        def add(x):
            if x is None:
                return
            for v in (x if isinstance(x, list) else [x]):
                if isinstance(v, dict):
                    v = v.get("content")
                if isinstance(v, str):
                    v = hf.token_to_id(v)
                if isinstance(v, int) and v not in eos:
                    eos.append(v)

        add(_read_json(path / "generation_config.json").get("eos_token_id"))
        add(_read_json(path / "config.json").get("eos_token_id"))
        add(cfg.get("eos_token"))
        add(hf.token_to_id("<|im_end|>"))
        return cls(hf, template, eos, str(path))

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    @cached_property
    def _compiled(self) -> jinja2.Template:
        if not self.chat_template:
            raise TokenizerError(f"{self.source}: the tokenizer has no chat template")
        return _environment().from_string(self.chat_template)

    def apply_chat_template(self, messages: list[dict], tools: list[dict] | None = None,
                            add_generation_prompt: bool = True, enable_thinking: bool = False, **kwargs) -> str:
        try:
            return self._compiled.render(messages=messages, tools=tools or None,
                                         add_generation_prompt=add_generation_prompt,
                                         enable_thinking=enable_thinking, **kwargs)
        except TokenizerError:
            raise
        except jinja2.TemplateError as e:
            raise TokenizerError(f"{self.source}: chat template failed: {e}") from None


class StreamingDetokenizer:
    """Incremental decoding (as mlx-lm's): text deltas as tokens arrive, without re-decoding the whole output. Tokens
    are decoded per segment; a segment ends after a newline, so each step decodes only the current line's tokens.
    A delta is held back while it ends in an incomplete UTF-8 sequence (U+FFFD).

        detok = StreamingDetokenizer(tok, skip_ids=tok.eos_token_ids)
        for t in token_ids:
            delta = detok.add(t)       # "" while a multi-byte character is incomplete
        detok.text                     # everything so far
    """

    def __init__(self, tokenizer: "Tokenizer", skip_ids=()):
        self.tok = tokenizer
        self.skip = set(skip_ids)
        self._done = ""            # text of finished segments
        self._segment: list[int] = []
        self._shown = ""           # the part of the current segment already returned

    @property
    def text(self) -> str:
        return self._done + self._shown

    def add(self, token_id: int) -> str:
        if token_id in self.skip:
            return ""
        self._segment.append(token_id)
        now = self.tok.decode(self._segment)
        if now.endswith("\ufffd") or len(now) <= len(self._shown):
            return ""
        delta = now[len(self._shown):]
        self._shown = now
        if now.endswith("\n"):
            self._done += now
            self._segment, self._shown = [], ""
        return delta


def _read_json(p: Path) -> dict:
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{p}: invalid JSON: {e}") from None
