"""Streaming generation: chunked prefill, sampling (greedy, temperature, top-k, top-p, seed), stop tokens,
logits processors (fmoe.engine.interfaces.LogitsProcessor: constrained decoding) with fast-forward of forced tokens,
and per-run stats.

    text = generate(model, tok, "Hello", max_tokens=32)                   # the whole completion
    for r in stream_generate(model, tok, "Hello", max_tokens=32):        # GenerationResponse per token
        print(r.text, end="")                                            # incremental text (StreamingDetokenizer)
    r.stats                                                              # GenerationStats on the last response

    gen = Generation(model, prompt_ids, max_tokens=64, sampling=Sampling(temperature=0), stop_ids=tok.eos_token_ids)
    for step in gen:            # Step(token_id, forced): the lower level, token ids only
        ...
    gen.stats                    # prompt_tokens, prefill_tok_s, decode_tok_s, ...
"""
from __future__ import annotations

import numbers
import resource
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator, Sequence

import numpy as np

from fmoe.engine.cache import ModelCache
from fmoe.engine.stats import EngineStats
from fmoe.errors import FmoeError


@dataclass
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = 0
    min_p: float = 0.0       # drop tokens whose probability is below min_p x the most likely token's

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or not 0 <= self.min_p <= 1:
            raise FmoeError(f"invalid sampling settings: {self}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral)
                                      or self.seed < 0):
            raise FmoeError(f"invalid sampling seed: {self.seed!r} (seed must be None or a whole number >= 0)")


@dataclass
class Step:
    token_id: int
    forced: bool = False     # appended by the grammar without sampling


@dataclass
class GenerationStats:
    prompt_tokens: int = 0          # whole prompt
    prefilled_tokens: int = 0       # prompt tokens actually computed (the rest came from the cache)
    generated_tokens: int = 0
    forced_tokens: int = 0
    forward_passes: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    finish_reason: str = ""         # stop | length | grammar
    peak_rss_bytes: int = 0
    engine: EngineStats = field(default_factory=EngineStats)   # what the engine did during this generation

    @property
    def prefill_tok_s(self) -> float:
        return self.prefilled_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tok_s(self) -> float:
        return self.generated_tokens / self.decode_s if self.decode_s else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["engine"] = self.engine.to_dict()
        d["prefill_tok_s"], d["decode_tok_s"] = self.prefill_tok_s, self.decode_tok_s
        return d


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def sample(logits: np.ndarray, s: Sampling, rng: np.random.Generator) -> int:
    if s.temperature == 0:
        return int(np.argmax(logits))
    x = logits.astype(np.float64) / s.temperature
    if s.top_k and s.top_k < x.size:
        kth = np.partition(x, -s.top_k)[-s.top_k]
        x = np.where(x < kth, -np.inf, x)
    x = x - x.max()
    p = np.exp(x)
    p /= p.sum()
    if s.min_p > 0:
        p = np.where(p >= s.min_p * p.max(), p, 0.0)
        p /= p.sum()
    if s.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, s.top_p) + 1)]
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return int(rng.choice(p.size, p=p))


class Generation:
    def __init__(self, model, prompt_ids: Sequence[int], max_tokens: int = 256, sampling: Sampling | None = None,
                 stop_ids: Sequence[int] = (), processors: Sequence = (), cache: ModelCache | None = None,
                 vocab_limit: int | None = None, prefill_chunk: int = 512, fast_forward: bool = True):
        self.model = model
        self.prompt_ids = list(prompt_ids)
        self.max_tokens = max_tokens
        self.sampling = sampling or Sampling()
        self.stop_ids = set(stop_ids)
        self.processors = list(processors)
        self.cache = cache if cache is not None else model.new_cache()
        self.vocab_limit = vocab_limit
        self.prefill_chunk = prefill_chunk
        self.fast_forward = fast_forward
        self.tokens: list[int] = []
        self.stats = GenerationStats(prompt_tokens=len(self.prompt_ids))
        if self.cache.tokens != self.prompt_ids[: len(self.cache.tokens)]:
            raise FmoeError("the cache holds tokens that are not a prefix of the prompt")
        if len(self.cache.tokens) == len(self.prompt_ids):
            raise FmoeError("the prompt adds no tokens beyond what the cache holds")
        limit = getattr(getattr(model, "cfg", None), "max_position_embeddings", None)
        if limit and len(self.prompt_ids) > limit:
            from fmoe.engine.model import ContextLengthError
            raise ContextLengthError(f"the prompt has {len(self.prompt_ids)} tokens, more than the model's context "
                                     f"of {limit} (max_position_embeddings): shorten it")

    def _mask(self, logits):
        for p in self.processors:
            logits = p.process(logits)
        x = self.model.ops.to_numpy(logits)
        if self.vocab_limit is not None and self.vocab_limit < x.shape[-1]:
            x = x.copy() if not x.flags.writeable else x
            x[self.vocab_limit:] = -np.inf
        return x

    def __iter__(self) -> Iterator[Step]:
        m, st = self.model, self.stats
        rng = np.random.default_rng(self.sampling.seed)
        mark = m.stats()                    # st.engine: this run's window, not the model's lifetime
        t0 = time.perf_counter()
        todo = self.prompt_ids[len(self.cache.tokens):]
        st.prefilled_tokens = len(todo)
        logits = None
        for i in range(0, len(todo), self.prefill_chunk):
            logits = m.forward(todo[i:i + self.prefill_chunk], self.cache)
            st.forward_passes += 1
        st.prefill_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        try:
            while True:
                if self.processors and all(p.done() for p in self.processors):
                    st.finish_reason = "grammar"     # before the length check: a call that ends at the limit ended
                    return
                if len(self.tokens) >= self._limit():
                    st.finish_reason = "length"
                    return
                x = self._mask(logits)
                if not np.isfinite(x).any():
                    raise FmoeError("every token is masked: the grammar allows nothing at this point")
                tok = sample(x, self.sampling, rng)
                feed = [tok]
                self._append(tok, False)
                yield Step(tok, False)
                if tok in self.stop_ids:
                    st.finish_reason = "stop"
                    return
                if self.fast_forward and self.processors:
                    forced = list(self.processors[0].forced())
                    for f in forced:
                        if len(self.tokens) >= self._limit():
                            break
                        self._append(f, True)
                        yield Step(f, True)
                        if f in self.stop_ids:
                            st.finish_reason = "stop"
                            return
                        feed.append(f)
                if len(self.tokens) >= self._limit():
                    done = self.processors and all(p.done() for p in self.processors)
                    st.finish_reason = "grammar" if done else "length"
                    return
                for p in self.processors:   # e.g. the grammar computes its next mask during the forward pass
                    begin = getattr(p, "begin", None)
                    if begin is not None:
                        begin()
                logits = m.forward(feed, self.cache)
                st.forward_passes += 1
        finally:
            st.decode_s = time.perf_counter() - t1
            st.peak_rss_bytes = peak_rss_bytes()
            st.engine = m.stats().since(mark)

    def _limit(self) -> int:
        """max_tokens, or more while a processor lets a started tool call finish (ToolCallProcessor.token_limit:
        up to its max_call_tokens)."""
        lim = self.max_tokens
        for p in self.processors:
            f = getattr(p, "token_limit", None)
            if f is not None:
                lim = max(lim, f(self.max_tokens))
        return lim

    def _append(self, tok: int, forced: bool) -> None:
        self.tokens.append(tok)
        self.stats.generated_tokens += 1
        self.stats.forced_tokens += int(forced)
        for p in self.processors:
            p.accept(tok)


@dataclass
class GenerationResponse:
    """One generated token of :func:`stream_generate` (as mlx-lm's GenerationResponse)."""
    text: str                        # the text this token completed ("" while a character is incomplete)
    token: int
    forced: bool                     # appended by a processor without sampling
    prompt_tokens: int
    generation_tokens: int           # generated so far, this token included
    finish_reason: str | None = None     # set on the last response: stop | length | grammar
    stats: GenerationStats | None = None  # set on the last response


def stream_generate(model, tokenizer, prompt: str | Sequence[int], *, max_tokens: int = 256,
                    sampling: Sampling | None = None, processors: Sequence = (), chat: bool = False,
                    stop_ids: Sequence[int] | None = None) -> Iterator[GenerationResponse]:
    """Generate from ``prompt`` (text, or token ids), one GenerationResponse per token; ``chat`` wraps a text prompt
    as a user turn with the chat template."""
    from fmoe.engine.tokenizer import StreamingDetokenizer

    if isinstance(prompt, str):
        if chat:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        ids = tokenizer.encode(prompt)
    else:
        ids = list(prompt)
    if not ids:
        raise FmoeError("the prompt is empty after tokenization")
    stops = tokenizer.eos_token_ids if stop_ids is None else stop_ids
    gen = Generation(model, ids, max_tokens=max_tokens, sampling=sampling, stop_ids=stops, processors=processors,
                     vocab_limit=min(tokenizer.vocab_size, model.cfg.vocab_size))
    detok = StreamingDetokenizer(tokenizer, skip_ids=gen.stop_ids)
    last = None
    for step in gen:
        if last is not None:
            yield last
        last = GenerationResponse(detok.add(step.token_id), step.token_id, step.forced, len(ids),
                                  gen.stats.generated_tokens)
    if last is not None:   # the generator has finished: its stats are final
        last.finish_reason, last.stats = gen.stats.finish_reason, gen.stats
        yield last


def generate(model, tokenizer, prompt: str | Sequence[int], **kwargs) -> str:
    """The completion of ``prompt`` as text (stop tokens removed); keyword arguments as :func:`stream_generate`."""
    return "".join(r.text for r in stream_generate(model, tokenizer, prompt, **kwargs))
