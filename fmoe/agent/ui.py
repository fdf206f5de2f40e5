"""Rich terminal UI for agent runs: a listener for Agent events (``Agent(on_event=AgentUI(console))``).

Streams the model's text (the call markup itself is shown as panels, not as raw text), shows each tool call and
its result as a panel, a step counter, and after each step the tokens, tok/s, prompt reuse and the engine's expert
statistics (cache hit rate, bytes streamed, I/O wait, prediction hit rate when streaming).
"""
from __future__ import annotations

import json

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.syntax import Syntax
from rich.text import Text

MAX_RESULT_CHARS = 1500


def human_bytes(n: float | None) -> str:
    if not n:
        return "0 B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def engine_line(eng: dict) -> str:
    parts = []
    if eng.get("bytes_read"):
        parts.append(f"read {human_bytes(eng['bytes_read'])}")
    if eng.get("cache_hit_rate") is not None:
        parts.append(f"expert cache hit {eng['cache_hit_rate']:.0%}")
    if eng.get("io_wait_s"):
        parts.append(f"I/O wait {eng['io_wait_s']:.2f}s")
    if eng.get("prediction_hit_rate") is not None:
        parts.append(f"prediction hit {eng['prediction_hit_rate']:.0%}")
    return " · ".join(parts)


class AgentUI:
    def __init__(self, console: Console | None = None, *, stream_text: bool = True):
        self.console = console or Console()
        self.stream_text = stream_text
        self._text = ""
        self._printed = 0

    def __call__(self, kind: str, **data) -> None:
        getattr(self, f"on_{kind}", lambda **_: None)(**data)

    # -- events ----------------------------------------------------------------------------------------------
    def on_step_start(self, step: int, max_steps: int) -> None:
        self._text, self._printed = "", 0
        self.console.rule(f"[bold]step {step}/{max_steps}", style="blue")

    def on_text(self, step: int, delta: str) -> None:
        if not self.stream_text:
            return
        self._text += delta
        visible = self._text.split("<tool_call>", 1)[0]
        if len(visible) > self._printed:
            self.console.print(Text(visible[self._printed:]), end="", soft_wrap=True)
            self._printed = len(visible)

    def on_model_step(self, step) -> None:
        if self._printed:
            self.console.print()
        t = step.timings
        line = (f"{step.tokens} tok ({step.forced_tokens} forced) @ {t.get('decode_tok_s', 0):.1f} tok/s · "
                f"prompt {step.prompt_tokens} (reused {step.reused_tokens}, prefilled {step.prefilled_tokens}"
                f"{', full prefill' if step.prefix_fallback else ''}) @ {t.get('prefill_tok_s', 0):.0f} tok/s")
        eng = engine_line(step.engine.to_dict())
        if eng:
            line += " · " + eng
        if step.parse_failure:
            f = step.parse_failure
            self.console.print(f"[red]call failed ({f.category}): {escape(f.message)}[/red]")
        self.console.print(f"[dim]{escape(line)}[/dim]")

    def on_tool_call(self, step: int, name: str, arguments: dict) -> None:
        args = json.dumps(arguments, ensure_ascii=False, indent=2)
        self.console.print(Panel(Syntax(args, "json", word_wrap=True, background_color="default"),
                                 title=f"[bold cyan]→ {escape(name)}", title_align="left", border_style="cyan",
                                 expand=False))

    def on_tool_step(self, step) -> None:
        body = step.result if len(step.result) <= MAX_RESULT_CHARS else (
            step.result[:MAX_RESULT_CHARS] + f"… ({len(step.result)} chars)")
        flags = " · error" if step.is_error else ""
        flags += " · truncated" if step.truncated else ""
        style = "red" if step.is_error else "green"
        self.console.print(Panel(Text(body), title=f"[bold {style}]← {escape(step.name)}[/] [dim]"
                                 f"{step.elapsed_s * 1000:.0f} ms{flags}[/dim]", title_align="left",
                                 border_style=style, expand=False))

    def on_final(self, final) -> None:
        if final.stop_reason == "final_answer":
            self.console.print(Panel(Text(final.answer or ""), title="[bold green]answer", title_align="left",
                                     border_style="green"))
        else:
            self.console.print(f"[yellow]stopped: {final.stop_reason} after {final.steps} step(s)[/yellow]")

    # -- summaries -------------------------------------------------------------------------------------------
    def summary(self, result) -> None:
        s = result.stats
        line = (f"{s.model_steps} steps · {s.tool_calls} tool calls ({s.tool_errors} errors) · "
                f"{s.generated_tokens} tok @ {s.decode_tok_s:.1f} tok/s · prefilled {s.prefilled_tokens}"
                f" / reused {s.reused_tokens} prompt tokens · {s.wall_s:.1f}s")
        eng = engine_line(s.engine.to_dict())
        if eng:
            line += " · " + eng
        self.console.print(f"[dim]{escape(line)}[/dim]")
        if result.expect is not None:
            ok = result.expect.get("passed")
            detail = ""
            if result.expect.get("calls_ok") is False:
                detail += f" missing calls: {json.dumps(result.expect.get('missing_calls'))}"
            if result.expect.get("answer_ok") is False:
                detail += " answer does not match"
            self.console.print("[bold green]PASS[/]" if ok else f"[bold red]FAIL[/]{escape(detail)}")
