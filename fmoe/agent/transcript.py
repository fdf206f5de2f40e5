"""JSONL transcript of agent runs: one JSON object per line, written (and flushed) as the run goes.

Line types (``"type"``): ``task`` (prompt, model, tools, settings), ``message`` (a chat message as rendered to the
template), ``model_step`` (steps.ModelStep: text, calls, parse failure, token counts, timings, engine stats),
``tool_step`` (call, arguments, result, error flag, elapsed), ``final`` (answer, stop reason) and ``result``
(aggregate stats and the expect verdict). Every line has ``t`` (seconds since the transcript was opened).

    with Transcript("run.jsonl") as tr:
        tr.write({"type": "task", "task": "..."})
    read_transcript("run.jsonl") -> list[dict]
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def _default(x: Any):
    if hasattr(x, "to_dict"):
        return x.to_dict()
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, (set, tuple)):
        return list(x)
    if isinstance(x, Path):
        return str(x)
    return str(x)


class Transcript:
    def __init__(self, path: str | Path | None, append: bool = False):
        self.path = Path(path) if path is not None else None
        self._f = None
        self._t0 = time.perf_counter()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a" if append else "w", encoding="utf-8")

    def write(self, record: dict) -> None:
        if self._f is None:
            return
        rec = {"t": round(time.perf_counter() - self._t0, 4), **record}
        self._f.write(json.dumps(rec, ensure_ascii=False, default=_default) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> "Transcript":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_transcript(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
