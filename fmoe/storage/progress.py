"""The byte progress bar of the long storage jobs (``fmoe convert``, ``fmoe synth``), on stderr.

    with byte_progress(enabled) as prog:          # prog: a rich Progress, or None when disabled
        task = prog.add_task("convert -> dst", total=nbytes) if prog else None
        ...
        if prog:
            prog.update(task, advance=n)
"""
from __future__ import annotations

from contextlib import nullcontext


def byte_progress(enabled: bool):
    """A context manager giving a rich ``Progress`` with bytes, speed and time left, or ``None`` when disabled."""
    if not enabled:
        return nullcontext(None)
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), transient=False)
