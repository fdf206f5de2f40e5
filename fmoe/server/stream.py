"""The generated text of one turn, as it arrives, split into what a client sees: content deltas and whole tool calls.

    split = TurnSplitter(call_format="xml", tools=schemas, stop=["\\n\\n"])
    for delta in text_deltas:                       # run_turn's on_text
        for kind, value in split.feed(delta):       # ("text", "Hel"), ("call", ToolCall(name, arguments))
            ...
        if split.stopped:                           # a stop string appeared in the content: end the turn
            break
    split.finish()                                  # the held-back tail, when the turn ends

Content stops at the first ``<tool_call>``; a partial ``<tool_call>`` or stop string at the end of the text is held
back until the next delta decides it. Each call is emitted once its ``</tool_call>`` has arrived, parsed and
schema-checked by fmoe.structured.parser (so its arguments are complete, valid JSON when a client sees them).
"""
from __future__ import annotations

from fmoe.structured.formats import TOOL_CALL, TOOL_CALL_END
from fmoe.structured.parser import parse_tool_calls


def _held(text: str, markers: list[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of one of ``markers``."""
    best = 0
    for m in markers:
        for k in range(min(len(m) - 1, len(text)), best, -1):
            if text.endswith(m[:k]):
                best = k
                break
    return best


class TurnSplitter:
    def __init__(self, call_format: str, tools: list[dict], stop: list[str] | None = None, calls: bool = True):
        self.call_format, self.tools = call_format, tools
        self.stop = [s for s in (stop or []) if s]
        self.calls_possible = calls
        self.text = ""              # everything generated so far
        self.sent = 0               # content characters emitted
        self.in_calls = False       # the first <tool_call> has been seen: no more content
        self.n_calls = 0            # calls emitted
        self.stopped = False        # a stop string was seen
        self.stop_sequence: str | None = None
        self.content = ""           # the content emitted (stop string excluded)

    def _markers(self) -> list[str]:
        return self.stop + ([TOOL_CALL] if self.calls_possible else [])

    def feed(self, delta: str) -> list[tuple[str, object]]:
        if self.stopped:
            return []
        self.text += delta
        out: list[tuple[str, object]] = []
        if not self.in_calls:
            visible = self.text
            cut = len(visible)
            hit = None
            for s in self.stop:
                i = visible.find(s, self.sent)
                if i >= 0 and i < cut:
                    cut, hit = i, s
            j = visible.find(TOOL_CALL, self.sent) if self.calls_possible else -1
            if j >= 0 and j <= cut:
                cut, hit = j, None
                self.in_calls = True
            elif hit is not None:
                self.stopped, self.stop_sequence = True, hit
            else:
                cut -= _held(visible[self.sent:], self._markers())
            if cut > self.sent:
                piece = visible[self.sent:cut]
                self.sent = cut
                self.content += piece
                out.append(("text", piece))
        if self.in_calls and self.text.count(TOOL_CALL_END) > self.n_calls:
            res = parse_tool_calls(self.text[:self.text.rfind(TOOL_CALL_END) + len(TOOL_CALL_END)],
                                   self.call_format, self.tools, finished=True)
            for c in res.calls[self.n_calls:]:
                out.append(("call", c))
            self.n_calls = max(self.n_calls, len(res.calls))
        return out

    def finish(self) -> list[tuple[str, object]]:
        """The held-back content at the end of the turn (a partial marker that never completed)."""
        if self.stopped or self.in_calls or self.sent >= len(self.text):
            return []
        piece = self.text[self.sent:]
        self.sent = len(self.text)
        self.content += piece
        return [("text", piece)]
