"""What every call format shares: the `<tool_call>` envelope around a call body, and the error for a body that is
not in the format.

    TOOL_CALL + "\\n" + body + "\\n" + TOOL_CALL_END      one call, as the chat templates write it
    raise MalformedCall("missing </function>")          from a format's parse_body; parse_tool_calls reports it as
                                                        the failure category "unparsable"
"""

from __future__ import annotations

TOOL_CALL, TOOL_CALL_END = "<tool_call>", "</tool_call>"


class MalformedCall(ValueError):
    """A call body that is not in the call format (bad JSON, missing tags, ...)."""
