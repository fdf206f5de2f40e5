"""Grammar-constrained tool calls: one interface, two backends (llguidance default, outlines-core opt-in).

    g = compile_tool_grammar(tools, call_format="xml", tool_choice="auto", tokenizer=tok)
    m = g.matcher()
    m.mask() -> np.ndarray[int32] bitmask (bit i of word i//32 set = token i allowed); a buffer reused by the matcher
    m.consume(token_id) -> bool      m.forced_tokens() -> list[int]      m.is_done()      m.reset()

A turn is: [thinking block] free text [calls] end-of-turn. The free text is unconstrained and costs nothing: the
matcher is a small phase machine whose pre-call masks are constants computed once, and the backend grammar (the
call region) only starts at the `<tool_call>` token, "lazily". In the call region the backend's matcher gives the
masks and the forced (fast-forward) token runs; the end-of-turn token (`<|im_end|>`) is its EOS.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from fmoe.errors import FmoeError
from fmoe.structured.formats import CallFormat, build_call_region_lark
from fmoe.structured.schema import UnsupportedSchemaError, tool_function

__all__ = ["UnsupportedSchemaError", "GrammarError", "TokenizerInfo", "Grammar", "Matcher", "compile_tool_grammar",
           "tokenizer_info", "schema_grammar_check", "llg_compile", "LLGProto", "keyword_from_llg_error"]


class GrammarError(FmoeError):
    """A grammar could not be built, or a token outside the grammar was fed to a matcher."""


# --------------------------------------------------------------------------------------------------- tokenizer info
@dataclass
class TokenizerInfo:
    hf: Any                          # tokenizers.Tokenizer
    vocab_size: int                  # logits size (padded)
    n_tokens: int                    # real tokens
    special_ids: list[int]           # added / control tokens: never produced by free text
    eos_id: int                      # end of turn (<|im_end|>)
    tool_call_id: int | None
    tool_call_end_id: int | None
    think_id: int | None
    think_end_id: int | None
    _ll: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def bitmask(self, ids: Sequence[int], *, normal: bool) -> np.ndarray:
        """Bitmask of `ids` (plus every normal token if `normal`)."""
        allow = np.zeros(self.n_words * 32, dtype=bool)
        if normal:
            allow[: self.n_tokens] = True
            allow[self.special_ids] = False
        allow[list(ids)] = True
        return np.packbits(allow, bitorder="little").view(np.int32).copy()

    @property
    def n_words(self) -> int:
        return (self.vocab_size + 31) // 32

    def llg(self):
        """The llguidance LLTokenizer (built once: ~3 s for 248k tokens)."""
        with self._lock:
            if self._ll is None:
                import llguidance

                d = json.loads(self.hf.to_str())
                for a in d.get("added_tokens", []):
                    a["special"] = True  # <tool_call>, <think>, ... are single control tokens for the grammar
                self._ll = llguidance.LLTokenizer(json.dumps(d), n_vocab=self.vocab_size, eos_token=self.eos_id)
            return self._ll


_TOKINFO: dict[int, tuple[Any, TokenizerInfo]] = {}


def tokenizer_info(tokenizer, vocab_size: int | None = None) -> TokenizerInfo:
    """Accepts a tokenizers.Tokenizer or an fmoe Tokenizer (with .hf and .eos_token_ids). Cached per object."""
    key = (id(tokenizer), vocab_size)
    hit = _TOKINFO.get(key)  # type: ignore[arg-type]
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    hf = getattr(tokenizer, "hf", tokenizer)
    eos_ids = list(getattr(tokenizer, "eos_token_ids", []) or [])
    n_tokens = hf.get_vocab_size(with_added_tokens=True)
    if vocab_size is None:
        vocab_size = getattr(tokenizer, "vocab_size", None) if hasattr(tokenizer, "hf") else None
        if not vocab_size or vocab_size < n_tokens:
            from fmoe.structured.qwen_vocab import QWEN35_PADDED_VOCAB

            vocab_size = QWEN35_PADDED_VOCAB if n_tokens == 248077 else n_tokens
    added = hf.get_added_tokens_decoder()
    special_ids = sorted(added.keys())

    def tid(s):
        return hf.token_to_id(s)

    eos = tid("<|im_end|>")
    if eos is None:
        if not eos_ids:
            raise GrammarError("tokenizer has no <|im_end|> and no eos_token_ids")
        eos = eos_ids[0]
    info = TokenizerInfo(hf=hf, vocab_size=int(vocab_size), n_tokens=n_tokens, special_ids=special_ids, eos_id=eos,
                         tool_call_id=tid("<tool_call>"), tool_call_end_id=tid("</tool_call>"),
                         think_id=tid("<think>"), think_end_id=tid("</think>"))
    _TOKINFO[key] = (tokenizer, info)  # type: ignore[index]
    return info


# ------------------------------------------------------------------------------------------------------ backends
class LLGProto:
    """The compiled call-region matcher that regions deep_copy. llguidance shares one lexer between a matcher and
    its copies; after a copy rejects a token inside an intersected raw-value lexeme (XML string with minLength or a
    pattern), that shared lexer can be left unusable ("lexer error: too many expressions constructed" at the first
    token of every later copy; llguidance 1.9.1). Constrained generation never feeds a rejected token, but callers
    that validate text (the mask bench, the parser's re-check) do: so after any rejection the next region gets a
    freshly compiled matcher (a few ms), never a copy of a possibly damaged one."""

    def __init__(self, lark: str, info: "TokenizerInfo", proto):
        self.lark, self.info, self.proto, self.tainted = lark, info, proto, False

    def new(self):
        if self.tainted:
            proto, err = llg_compile(self.lark, self.info)
            if proto is None:
                raise GrammarError(f"llguidance could not recompile the tool grammar: {err[:300]}")
            self.proto, self.tainted = proto, False
        return _LLGRegion(self)


class _LLGRegion:
    """llguidance matcher of the call region."""

    def __init__(self, owner: LLGProto):
        self._owner = owner
        self.m = owner.proto.deep_copy()

    def fill_mask(self, buf: np.ndarray) -> None:
        self.m.unsafe_compute_mask_ptr(buf.ctypes.data, buf.nbytes)

    def consume(self, t: int) -> bool:
        if self.m.consume_token(t) and not self.m.is_error():
            return True
        self._owner.tainted = True
        return False

    def forced(self) -> list[int]:
        return list(self.m.compute_ff_tokens())

    def stopped(self) -> bool:
        return self.m.is_stopped()

    def accepting(self) -> bool:
        return self.m.is_accepting()

    def error(self) -> str:
        return self.m.get_error()


_UNIMPL = re.compile(r'Unimplemented keys: \["?([^"\]]+)')


def keyword_from_llg_error(msg: str) -> str:
    """The JSON Schema keyword an llguidance compile error is about ("schema" when none is recognised)."""
    m = _UNIMPL.search(msg)
    if m:
        return m.group(1)
    if "Unknown format" in msg:
        return "format"
    if "regex" in msg.lower():
        return "pattern"
    for k in ("$ref", "anyOf", "oneOf", "allOf", "minimum", "maximum", "multipleOf", "minItems", "maxItems",
              "minLength", "maxLength", "enum", "const", "additionalProperties", "required"):
        if k in msg:
            return k
    return "schema"


_LIMITS = None


def _llg_limits():
    """Parser limits for the call region. The lexer (and its fuel accounting) is shared by every deep_copy of a
    compiled matcher; with the default step_lexer_fuel (200k), intersected raw-value terminals (XML strings with a
    pattern or minLength) ran out after a few rejected tokens in sibling copies ("lexer error: too many expressions
    constructed") and every later copy failed at its first token. 20x the fuel keeps a bounded per-step cost."""
    global _LIMITS
    if _LIMITS is None:
        import llguidance

        _LIMITS = llguidance.LLParserLimits(step_lexer_fuel=4_000_000, verbose_errors=True)
    return _LIMITS


def llg_compile(lark: str, info: TokenizerInfo):
    """(llguidance matcher of ``lark`` on the tokenizer of ``info``, "") or (None, the compile error)."""
    import llguidance

    m = llguidance.LLMatcher(info.llg(), lark, log_level=0, limits=_llg_limits())
    if m.is_error():
        return None, m.get_error()
    return m, ""


# ------------------------------------------------------------------------------------------------------- grammar
_PH_THINK0, _PH_THINK, _PH_TEXT, _PH_CALLS, _PH_DONE = range(5)


class Grammar:
    """Compiled tool grammar: call-region backend grammar plus the constant masks of the free-text phases."""

    def __init__(self, *, info: TokenizerInfo, backend: str, region_factory, thinking: bool, tool_choice,
                 call_format: CallFormat, tools: list[dict], source: str = ""):
        self.info, self.backend, self.thinking, self.tool_choice = info, backend, thinking, tool_choice
        self.call_format, self.tools, self.source = call_format, tools, source
        self._region_factory = region_factory
        calls_allowed = tool_choice != "none" and region_factory is not None
        may_end = tool_choice in ("auto", "none") or region_factory is None
        # required / named: the response is the call (OpenAI semantics): after the thinking block (if any) the only
        # token allowed is <tool_call>, no free text first
        self.forces_call = calls_allowed and not may_end
        text_ids = ([info.tool_call_id] if calls_allowed else []) + ([info.eos_id] if may_end else [])
        self._min_call: dict[str, int] | None = None
        self.masks = {
            _PH_TEXT: info.bitmask(text_ids, normal=not self.forces_call),
            _PH_THINK: info.bitmask([info.think_end_id], normal=True),
            _PH_THINK0: info.bitmask([i for i in (info.think_id, info.think_end_id) if i is not None], normal=True),
            _PH_DONE: info.bitmask([], normal=False),
        }

    @property
    def vocab_size(self) -> int:
        return self.info.vocab_size

    def matcher(self) -> "Matcher":
        return Matcher(self)

    def min_call_tokens(self) -> dict[str, int]:
        """{tool name: tokens of a short complete call of it} (from <tool_call> to the region's end, the closing
        path of fmoe.structured.closing), for each tool the grammar allows; {} for a backend without one. An upper
        bound of the schema's own minimum: the token budget of a call is checked against it up front."""
        if self._min_call is not None:
            return self._min_call
        from fmoe.structured.closing import closer_for
        from fmoe.structured.formats import format_module

        out: dict[str, int] = {}
        if self._region_factory is None or self.backend != "llguidance":
            self._min_call = out
            return out
        only = self.tool_choice.get("name") if isinstance(self.tool_choice, dict) else None
        closer = closer_for(self.info)
        for t in self.tools:
            name = tool_function(t)["name"]
            if only is not None and name != only:
                continue
            region = self._region_factory()
            if not region.consume(self.info.tool_call_id):
                continue
            head = "\n" + format_module(self.call_format).render_body(name, {}, None)
            head = head[: head.index(name) + len(name)]
            ids = self.info.hf.encode(head, add_special_tokens=False).ids
            if region.m.validate_tokens(ids) != len(ids) or not region.m.consume_tokens(ids):
                continue
            path = closer.path(region.m, limit=1 << 16)
            if path is not None:
                out[name] = 1 + len(ids) + len(path)
        self._min_call = out
        return out

    def check_call_budget(self, max_call_tokens: int) -> None:
        """GrammarError (with the numbers) when a tool's shortest call does not fit in ``max_call_tokens``."""
        for name, n in self.min_call_tokens().items():
            if n > max_call_tokens:
                raise GrammarError(f"tool {name!r}: its shortest valid call takes {n} tokens, more than the call "
                                   f"budget max_call_tokens={max_call_tokens}; raise max_call_tokens or simplify "
                                   f"the schema")


class Matcher:
    """Per-generation state. mask() returns a buffer owned by the matcher (valid until the next mask() call)."""

    def __init__(self, grammar: Grammar):
        self.g = grammar
        self._buf = np.zeros(grammar.info.n_words, dtype=np.int32)
        self.reset()

    def reset(self) -> None:
        self.phase = _PH_THINK0 if self.g.thinking else _PH_TEXT
        self.region = None
        self.n_calls_tokens = 0
        self.error: str | None = None

    # phase helpers
    def in_call_region(self) -> bool:
        return self.phase == _PH_CALLS

    def start_in_region(self) -> None:
        """Enter the backend grammar now, with no free text and no ``<tool_call>`` first (a whole turn constrained to
        the backend grammar: fmoe.structured.response_format)."""
        self.region = self.g._region_factory()
        self.phase = _PH_CALLS

    def mask(self) -> np.ndarray:
        if self.phase == _PH_CALLS and self.error is None:
            self.region.fill_mask(self._buf)
            return self._buf
        if self.error is not None:
            return self.g.masks[_PH_DONE]
        return self.g.masks[self.phase]

    def mask_is_constant(self) -> bool:
        """True when mask() is one of the grammar's constant free-text masks (the processor caches their index)."""
        return self.phase != _PH_CALLS

    def _allowed_const(self, token_id: int) -> bool:
        m = self.g.masks[self.phase]
        w = token_id >> 5
        return 0 <= token_id < self.g.info.vocab_size and bool((int(m[w]) >> (token_id & 31)) & 1)

    def consume(self, token_id: int) -> bool:
        """Advance by one token; False (and the matcher enters an error state) if the grammar does not allow it."""
        if self.error is not None:
            return False
        info = self.g.info
        if self.phase == _PH_CALLS:
            self.n_calls_tokens += 1
            if not self.region.consume(token_id):
                self.error = self.region.error() or f"token {token_id} not allowed"
                return False
            return True
        if not self._allowed_const(token_id):
            self.error = f"token {token_id} not allowed in phase {self.phase}"
            return False
        if self.phase in (_PH_THINK0, _PH_THINK):
            self.phase = _PH_TEXT if token_id == info.think_end_id else _PH_THINK
        elif self.phase == _PH_TEXT:
            if token_id == info.eos_id:
                self.phase = _PH_DONE
            elif token_id == info.tool_call_id:
                self.region = self.g._region_factory()
                self.phase = _PH_CALLS
                self.n_calls_tokens = 1
                if not self.region.consume(token_id):
                    self.error = self.region.error()
                    return False
        return True

    def consume_many(self, ids: Sequence[int]) -> int:
        """Feed tokens; returns how many were accepted."""
        for k, t in enumerate(ids):
            if not self.consume(int(t)):
                return k
        return len(ids)

    def forced_tokens(self) -> list[int]:
        if self.phase != _PH_CALLS or self.error is not None:
            return []
        return self.region.forced()

    def is_done(self) -> bool:
        if self.phase == _PH_DONE:
            return True
        return self.phase == _PH_CALLS and self.error is None and self.region.stopped()

    def is_error(self) -> bool:
        return self.error is not None

    def can_end(self) -> bool:
        """Whether end-of-turn is allowed now."""
        if self.error is not None:
            return False
        if self.phase == _PH_CALLS:
            return self.region.accepting()
        if self.phase == _PH_DONE:
            return True
        return self._allowed_const(self.g.info.eos_id)


# ------------------------------------------------------------------------------------------------------- compile
def _normalize_choice(tool_choice, tools: list[dict]) -> tuple[str, str | None]:
    if isinstance(tool_choice, dict):
        name = tool_choice.get("name") or (tool_choice.get("function") or {}).get("name")
        if not name or name not in {tool_function(t)["name"] for t in tools}:
            raise GrammarError(f"tool_choice names an unknown tool: {tool_choice!r}")
        return "named", name
    if tool_choice not in ("auto", "required", "none"):
        raise GrammarError(f"tool_choice must be auto|required|none|{{'name': ...}}, got {tool_choice!r}")
    return tool_choice, None


def compile_tool_grammar(tools: list[dict], call_format: CallFormat = "hermes", tool_choice: Any = "auto",
                         parallel_calls: bool = True, max_calls: int = 4, thinking: bool = False,
                         backend: str = "llguidance", tokenizer=None, vocab_size: int | None = None) -> Grammar:
    """Compile tools into a Grammar. Raises UnsupportedSchemaError naming the tool and keyword it cannot enforce."""
    if tokenizer is None:
        raise GrammarError("compile_tool_grammar needs a tokenizer")
    if call_format not in ("hermes", "xml"):
        raise GrammarError(f"call_format must be 'hermes' or 'xml', got {call_format!r}")
    info = tokenizer_info(tokenizer, vocab_size)
    if thinking and info.think_end_id is None:
        raise GrammarError("thinking=True but the tokenizer has no </think> token")
    choice, only = _normalize_choice(tool_choice, tools)
    names = [tool_function(t)["name"] for t in tools]
    if len(set(names)) != len(names):
        raise GrammarError(f"duplicate tool names: {names}")
    if choice == "none" or not tools:
        return Grammar(info=info, backend=backend, region_factory=None, thinking=thinking, tool_choice="none",
                       call_format=call_format, tools=tools)
    if info.tool_call_id is None or info.tool_call_end_id is None:
        raise GrammarError("tokenizer lacks <tool_call>/</tool_call> tokens")
    if backend == "outlines":
        from fmoe.structured.grammar_outlines import compile_outlines_region

        factory, source = compile_outlines_region(tools, call_format, info, parallel_calls=parallel_calls,
                                                  max_calls=max_calls, only=only)
    elif backend == "llguidance":
        factory, source = _compile_llg_region(tools, call_format, info, parallel_calls, max_calls, only)
    else:
        raise GrammarError(f"unknown grammar backend {backend!r} (llguidance | outlines)")
    return Grammar(info=info, backend=backend, region_factory=factory, thinking=thinking,
                   tool_choice=tool_choice if choice != "named" else {"name": only}, call_format=call_format,
                   tools=tools, source=source)


def _compile_llg_region(tools, call_format, info, parallel_calls, max_calls, only):
    lark, errors = build_call_region_lark(tools, call_format, parallel_calls=parallel_calls, max_calls=max_calls,
                                          only=only, tool_call=f"<[{info.tool_call_id}]>",
                                          tool_call_end=f"<[{info.tool_call_end_id}]>")
    if errors:
        name, e = next(iter(errors.items()))
        raise UnsupportedSchemaError(name, e.keyword, str(e))
    proto, err = llg_compile(lark, info)
    if proto is None:
        # find the tool responsible: compile each alone
        for t in tools:
            name = tool_function(t)["name"]
            if only is not None and name != only:
                continue
            one, _ = build_call_region_lark([t], call_format, parallel_calls=False, max_calls=1,
                                            tool_call=f"<[{info.tool_call_id}]>",
                                            tool_call_end=f"<[{info.tool_call_end_id}]>")
            ok, e1 = llg_compile(one, info)
            if ok is None:
                raise UnsupportedSchemaError(name, keyword_from_llg_error(e1), e1.strip().splitlines()[0][:300])
        raise GrammarError(f"llguidance could not compile the tool grammar: {err[:500]}")
    owner = LLGProto(lark, info, proto)
    return owner.new, lark


def schema_grammar_check(tools: list[dict], call_format: CallFormat | None = None) -> None:
    """The check at tool registration / task-file load (no tokenizer, no model): raises UnsupportedSchemaError
    naming the tool and the keyword when the grammar could not enforce a tool's schema. ``call_format`` None checks
    the JSON form every format shares (Hermes arguments); "xml" adds the XML parameter-list rules."""
    import llguidance

    for t in tools:
        name = tool_function(t)["name"]
        p = tool_function(t).get("parameters")
        if p is not None and not isinstance(p, dict):
            raise UnsupportedSchemaError(name, "parameters", "parameters must be a JSON object")
        for fmt in (["hermes"] if call_format in (None, "hermes") else ["hermes", call_format]):
            lark, errors = build_call_region_lark([t], fmt, parallel_calls=False, max_calls=1)
            if errors:
                e = errors[name]
                raise UnsupportedSchemaError(name, e.keyword, str(e))
            bad, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
                llguidance.LLMatcher.grammar_from_lark(lark), None)
            if bad:
                msg = "; ".join(messages)
                first = msg.split("failed to compile JSON schema: ", 1)[-1].strip().splitlines()
                raise UnsupportedSchemaError(name, keyword_from_llg_error(msg),
                                             (first[0].strip() if first else msg)[:300])
