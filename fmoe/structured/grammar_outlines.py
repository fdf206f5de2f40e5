"""outlines-core backend for the call region (opt-in: its Index build walks the whole vocabulary per regex DFA,
~seconds to tens of seconds on the 248k Qwen3.5 vocabulary).

The call region becomes one regex: the `<tool_call>` token is given the literal bytes "<tool_call>" in the outlines
vocabulary (likewise `</tool_call>`; other special tokens are left out), JSON values use outlines-core's
`build_regex_from_schema` with the Hermes separators (", " / ": "), XML string values are raw text without the
"\\n</parameter>\\n" delimiter. End of turn is the vocabulary's EOS, allowed in final states.
Unsupported here (UnsupportedSchemaError): whatever build_regex_from_schema rejects, and, in XML, constrained raw
strings (pattern/format/length) and extra parameters.
"""

from __future__ import annotations

import json
import re

import numpy as np

from fmoe.structured.formats.qwen_xml import PARAM_END, PARAMETERS_OBJECT_KEYWORDS
from fmoe.structured.schema import (
    VALIDATION_KEYWORDS, SchemaFeatureError, UnsupportedSchemaError, is_plain_string_schema, tool_function,
    tool_parameters,
)

_VOCABS: dict[int, object] = {}


def outlines_vocabulary(info):
    """outlines_core.Vocabulary for a TokenizerInfo (cached per tokenizer)."""
    import outlines_core

    key = id(info.hf)
    if key in _VOCABS:
        return _VOCABS[key]
    from fmoe.structured.qwen_vocab import bytes_to_unicode

    u2b = {c: b for b, c in bytes_to_unicode().items()}
    specials = set(info.special_ids)
    keep = {info.tool_call_id, info.tool_call_end_id}
    m: dict[bytes, list[int]] = {}
    for tok, i in info.hf.get_vocab(with_added_tokens=True).items():
        if i == info.eos_id or (i in specials and i not in keep):
            continue
        key = tok.encode("utf-8") if i in specials else bytes(u2b[c] for c in tok)  # byte-level BPE alphabet
        m.setdefault(key, []).append(i)
    voc = outlines_core.Vocabulary(info.eos_id, m)
    _VOCABS[key] = voc
    return voc


def _esc(s: str) -> str:
    return re.escape(s)


def _json_regex(schema) -> str:
    from outlines_core.json_schema import build_regex_from_schema

    try:
        return build_regex_from_schema(json.dumps(schema), r"[ ]?")
    except Exception as e:  # outlines raises ValueError / its own errors for unsupported constructs
        msg = str(e)
        kw = next((k for k in VALIDATION_KEYWORDS if f"'{k}'" in msg or f'"{k}"' in msg), "schema")
        raise SchemaFeatureError(kw, msg[:200]) from None


def _raw_regex() -> str:
    # text not containing "\n</parameter>\n", written without look-around: any char except \n, or \n not followed
    # by "</parameter>\n" ... approximated by forbidding "\n<" inside raw values.
    return r"([^\n]|\n[^<])*"


# Keywords outlines-core's regex builder ignores (it would leave them unconstrained): refused up front.
_OUTLINES_UNENFORCED = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems",
                        "not", "if", "then", "else", "dependentRequired", "dependentSchemas", "dependencies",
                        "patternProperties", "propertyNames", "contains", "minProperties", "maxProperties",
                        "unevaluatedProperties", "unevaluatedItems"}


def _scan_unenforced(node) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("properties", "$defs", "definitions"):
                if isinstance(v, dict):
                    for sub in v.values():
                        _scan_unenforced(sub)
                continue
            if k in _OUTLINES_UNENFORCED:
                raise SchemaFeatureError(k, f"outlines-core does not enforce {k!r}")
            if k not in ("enum", "const", "default", "examples"):
                _scan_unenforced(v)
    elif isinstance(node, list):
        for v in node:
            _scan_unenforced(v)


def compile_outlines_region(tools, call_format, info, *, parallel_calls=True, max_calls=4, only=None):
    import outlines_core

    alts = []
    for t in tools:
        f = tool_function(t)
        name = f["name"]
        if only is not None and name != only:
            continue
        params = tool_parameters(t)
        try:
            _scan_unenforced(params)
            if call_format == "hermes":
                alts.append(_esc('{"name": ' + json.dumps(name) + ', "arguments": ') + "(" + _json_regex(params) + ")"
                            + _esc("}"))
            else:
                for k in params:
                    if k in VALIDATION_KEYWORDS and k not in PARAMETERS_OBJECT_KEYWORDS:
                        raise SchemaFeatureError(k, f"keyword {k!r} on the parameters object")
                props = params.get("properties") or {}
                req = set(params.get("required") or [])
                if params.get("additionalProperties", True) is not False and not props:
                    raise SchemaFeatureError("additionalProperties", "free-form parameters (outlines XML)")
                seq = []
                for p, s in props.items():
                    head = _esc(f"<parameter={p}>\n")
                    if is_plain_string_schema(s, params):
                        if any(k in s for k in ("pattern", "format", "minLength", "maxLength", "enum", "const")):
                            raise SchemaFeatureError(next(k for k in ("pattern", "format", "minLength", "maxLength",
                                                                      "enum", "const") if k in s),
                                                     "constrained raw string (outlines XML)")
                        val = _raw_regex()
                    else:
                        val = _json_regex(dict(s, **{k: params[k] for k in ("$defs", "definitions") if k in params}))
                    part = "(" + head + "(" + val + ")" + _esc(PARAM_END) + ")"
                    seq.append(part if p in req else part + "?")
                alts.append(_esc(f"<function={name}>\n") + "".join(seq) + _esc("</function>"))
        except SchemaFeatureError as e:
            raise UnsupportedSchemaError(name, e.keyword, str(e), backend="outlines") from None
    call = _esc("<tool_call>\n") + "(" + "|".join(alts) + ")" + _esc("\n</tool_call>")
    n_more = max(0, max_calls - 1) if parallel_calls else 0
    regex = call + (f"(\\n{call}){{0,{n_more}}}" if n_more else "")
    try:
        index = outlines_core.Index(regex, outlines_vocabulary(info))
    except Exception as e:
        raise UnsupportedSchemaError(",".join(tool_function(t)["name"] for t in tools), "schema", str(e)[:300],
                                     backend="outlines") from None
    return (lambda: _OutlinesRegion(index, info)), regex


class _OutlinesRegion:
    def __init__(self, index, info):
        import outlines_core

        self.guide = outlines_core.Guide(index)
        self.info = info
        self.err = ""
        self._stopped = False

    def fill_mask(self, buf: np.ndarray) -> None:
        self.guide.write_mask_into(buf.ctypes.data, buf.size, 4)

    def consume(self, t: int) -> bool:
        if self._stopped:
            self.err = "after end"
            return False
        if t == self.info.eos_id:
            if self.guide.is_finished():
                self._stopped = True
                return True
            self.err = "end of turn before the calls are complete"
            return False
        try:
            self.guide.advance(int(t), return_tokens=False)
            return True
        except Exception as e:
            self.err = str(e)[:200]
            return False

    def forced(self) -> list[int]:
        out = []
        if self._stopped:
            return out
        toks = self.guide.get_tokens()
        if len(toks) == 1 and toks[0] != self.info.eos_id:
            # one forced token at a time (outlines exposes no multi-token run); the generator may call again
            out.append(int(toks[0]))
        return out

    def stopped(self) -> bool:
        return self._stopped

    def accepting(self) -> bool:
        return self.guide.is_finished()

    def error(self) -> str:
        return self.err
