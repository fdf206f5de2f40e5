"""Tool calls valid by construction: grammars compiled from tool schemas (grammar.py), one module per call format
(formats/), the parser, the logits processor with masking per array library, closing of started calls, response
formats. See docs/reference/grammar.md."""
