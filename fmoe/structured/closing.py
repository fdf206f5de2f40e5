"""Closing a started tool call within a token budget.

    closer = Closer(info)                         # per tokenizer (cached on the TokenizerInfo)
    path = closer.path(llg_matcher, limit=1024)   # token ids that take the call region to its end (EOS included),
                                                  # or None when no path of at most `limit` tokens was found

The path is built greedily on a copy of the llguidance matcher, one decision per state (a function of the state
only), each decision one or more tokens:

1. the state accepts end of turn: the EOS token (the path ends);
2. the grammar forces tokens (``compute_ff_tokens``): those;
3. the first closing sequence of CLOSERS the grammar accepts whole (``validate_tokens``): strings end
   (``"``, an XML value's ``\\n</parameter>\\n``), arrays and objects close (``]``, ``}``), ``</function>``,
   ``</tool_call>``; so optional properties, array items and further calls are never started;
4. else the first single character of FILLERS the grammar accepts (a value has to start, a string has to reach its
   minLength or pattern: ``0``, ``"``, ``a``, ...);
5. else the lowest allowed token id.

A path is a valid completion by construction (every token was accepted by the matcher). It is not always the
shortest one, only short in practice: tests/structured/test_closing.py checks it on the JSONSchemaBench schemas from
random states. ``ToolCallProcessor`` uses it: when the tokens left to a call come down to its length, the mask
allows only the path's next token (docs/reference/grammar.md, Budget).
"""
from __future__ import annotations

import numpy as np

# most closing first; each a text (tokenized with the tokenizer) or a special token name
CLOSERS = ("<|im_end|>", "</tool_call>", "\n</parameter>\n", ">\n", '"', "}", "]", ",", "</function>", "\n")
FILLERS = tuple("0\"1[{nta-.eEfATxyz:/@ _") + tuple("bcdghijklmopqrsuvwBCDFGHIJKLMNOPQRSUVWXYZ23456789")


class Closer:
    def __init__(self, info):
        self.info = info
        hf = info.hf
        self.eos = info.eos_id
        seqs: list[list[int]] = []
        for s in CLOSERS:
            if s.startswith("<") and s.endswith(">") and hf.token_to_id(s) is not None and "\n" not in s:
                seqs.append([hf.token_to_id(s)])
                continue
            ids = hf.encode(s, add_special_tokens=False).ids
            if ids and ids not in seqs:
                seqs.append(ids)
        self.closers = seqs
        singles: list[int] = []
        for ch in FILLERS:
            ids = hf.encode(ch, add_special_tokens=False).ids
            if len(ids) == 1 and ids[0] not in singles:
                singles.append(ids[0])
        self.singles = singles
        self._buf = np.zeros(info.n_words, dtype=np.int32)

    def next_tokens(self, c) -> list[int]:
        """The decision at matcher state `c` (not consumed): the tokens to take next."""
        if c.is_accepting():
            return [self.eos]
        ff = list(c.compute_ff_tokens())
        if ff:
            return ff
        for seq in self.closers:
            if c.validate_tokens(seq) == len(seq):
                return list(seq)
        for t in self.singles:
            if c.validate_tokens([t]) == 1:
                return [t]
        c.unsafe_compute_mask_ptr(self._buf.ctypes.data, self._buf.nbytes)
        bits = np.unpackbits(self._buf.view(np.uint8), bitorder="little")
        allowed = np.flatnonzero(bits[: self.info.vocab_size])
        return [int(allowed[0])] if allowed.size else []

    def path(self, m, limit: int = 1024) -> list[int] | None:
        """Tokens from the state of llguidance matcher `m` to the end of the call region (EOS last); None when
        longer than `limit` or stuck. `m` is not changed."""
        if m.is_stopped():
            return []
        c = m.deep_copy()
        out: list[int] = []
        while len(out) < limit:
            if c.is_stopped():
                return out
            nxt = self.next_tokens(c)
            if not nxt:
                return None
            for t in nxt:
                if not c.consume_token(t) or c.is_error():
                    return None
                out.append(t)
                if t == self.eos:
                    return out
        return None


def closer_for(info) -> Closer:
    cl = getattr(info, "_closer", None)
    if cl is None:
        cl = Closer(info)
        info._closer = cl
    return cl
