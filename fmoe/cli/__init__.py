"""The ``fmoe`` command line: a dispatcher; each command lives in its own module of this package.

    fmoe generate --prompt "Hi" [--model PATH]        fmoe.cli.generate
    fmoe run TASK.yaml                                 fmoe.cli.run
    fmoe chat --tools calculator,files                 fmoe.cli.chat
    fmoe tools list [TASK.yaml]                        fmoe.cli.tools
    fmoe eval SUITE --out DIR                          fmoe.cli.eval
    fmoe convert SRC DST / fmoe synth DST              fmoe.cli.convert, fmoe.cli.synth
    fmoe bench kernels|stream|grammar|decode|fastforward|serve   fmoe.cli.bench

The options shared by every command that loads a model are declared once, in fmoe.cli.options.
"""
from __future__ import annotations

import importlib
import sys

from fmoe.errors import FmoeError

COMMANDS = {
    "generate": ("fmoe.cli.generate", "generate text from a prompt"),
    "convert": ("fmoe.cli.convert", "convert a HF or mlx-lm checkpoint to the streaming layout"),
    "synth": ("fmoe.cli.synth", "write a random-weight model at a real model's dimensions"),
    "run": ("fmoe.cli.run", "run agent task files"),
    "chat": ("fmoe.cli.chat", "interactive chat with tools"),
    "tools": ("fmoe.cli.tools", "list the built-in tools, or a task file's tools"),
    "eval": ("fmoe.cli.eval", "structured-output reliability sweep"),
    "serve": ("fmoe.cli.serve", "OpenAI- and Anthropic-compatible HTTP server"),
    "bench": ("fmoe.cli.bench", "benchmarks (kernels, stream, grammar, decode, fastforward, serve)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return ("usage: fmoe COMMAND [options]   (fmoe COMMAND --help for its options)\n\n"
            "Stream Mixture-of-Experts models from SSD; run agents.\n\ncommands:\n" + "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(usage() + f"\n\nfmoe: error: unknown command {argv[0]!r}", file=sys.stderr)
        return 2
    try:
        return importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:]) or 0
    except FmoeError as e:
        print(f"fmoe {argv[0]}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
