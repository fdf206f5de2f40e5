"""A whole assistant turn constrained to one JSON value of a JSON Schema (OpenAI's ``response_format``).

    g = compile_response_grammar({"type": "object", "properties": {...}}, tokenizer=tok, vocab_size=V)
    run_turn(model, tok, messages, [], settings, prefix, grammar=g)     # the turn's text is the JSON, nothing else
    compile_response_grammar({"type": "object"}, ...)                 # response_format {"type": "json_object"}

The grammar is the same llguidance ``%json`` rule the tool calls use (fmoe.structured.schema.json_schema_lark: the
chat templates' separators, no free whitespace), started at the first generated token instead of at ``<tool_call>``;
end of turn (``<|im_end|>``) is allowed once the value is complete. A schema keyword llguidance cannot enforce raises
UnsupportedSchemaError naming ``response_format`` and the keyword.
"""
from __future__ import annotations

from typing import Any

from fmoe.structured.grammar import (Grammar, GrammarError, LLGProto, Matcher, keyword_from_llg_error, llg_compile,
                                     tokenizer_info)
from fmoe.structured.schema import SchemaFeatureError, UnsupportedSchemaError, json_schema_lark

__all__ = ["compile_response_grammar", "response_lark"]

NAME = "response_format"


def response_lark(schema: Any) -> str:
    """llguidance lark text of one JSON value of ``schema``. Raises SchemaFeatureError."""
    return "%llguidance {}\nstart: %json " + json_schema_lark(schema) + "\n"


class _ResponseMatcher(Matcher):
    """A Matcher that starts inside the backend grammar (no free text, no <tool_call> envelope)."""

    def reset(self) -> None:
        super().reset()
        self.start_in_region()


class ResponseGrammar(Grammar):
    def matcher(self) -> Matcher:
        return _ResponseMatcher(self)


def compile_response_grammar(schema: Any, *, tokenizer, vocab_size: int | None = None,
                             name: str = NAME) -> ResponseGrammar:
    """Compile ``schema`` (a JSON Schema, or True/{} for any JSON value) into a grammar for the whole turn."""
    if tokenizer is None:
        raise GrammarError("compile_response_grammar needs a tokenizer")
    if not isinstance(schema, (dict, bool)):
        raise UnsupportedSchemaError(name, "schema", "the schema must be a JSON object")
    info = tokenizer_info(tokenizer, vocab_size)
    try:
        lark = response_lark(schema)
    except SchemaFeatureError as e:
        raise UnsupportedSchemaError(name, e.keyword, str(e)) from None
    proto, err = llg_compile(lark, info)
    if proto is None:
        raise UnsupportedSchemaError(name, keyword_from_llg_error(err), err.strip().splitlines()[0][:300])
    owner = LLGProto(lark, info, proto)
    return ResponseGrammar(info=info, backend="llguidance", region_factory=owner.new, thinking=False,
                           tool_choice="none", call_format="hermes", tools=[], source=lark)
