"""``fmoe eval SUITE --out DIR``: structured-output reliability across bit widths, experts per token and grammar.

    fmoe eval demo-heldout --bits 2,3,4,8 --grammar on,off --out bench/results/eval --limit 20
    fmoe eval bfcl:/path/to/bfcl:simple_python,multiple --per-split 10 --out out/bfcl
    fmoe eval my_suite.yaml --model path/to/hf-checkpoint --experts-per-token 2,4,8 --out out/k
    fmoe eval demo-heldout --model openai:http://127.0.0.1:8000/v1#MODEL --out out/remote   # a remote endpoint

SUITE: a suite YAML file, a built-in suite (demo-heldout) or bfcl:DIR[:split,...]. Each bit width is produced from
--model by `fmoe convert` once and cached under the fmoe cache directory (variants/<hash>-<bits>bit-g<group>).
"""
from __future__ import annotations

import argparse
import sys

from fmoe.cli.options import add_model_options, model_options
from fmoe.errors import FmoeError


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _onoff(text: str) -> list[bool]:
    out = []
    for x in text.split(","):
        x = x.strip().lower()
        if x in ("on", "true", "1", "yes"):
            out.append(True)
        elif x in ("off", "false", "0", "no"):
            out.append(False)
        else:
            raise argparse.ArgumentTypeError(f"--grammar takes on,off; got {text!r}")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fmoe eval", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("suite", help="suite YAML, built-in name (demo-heldout) or bfcl:DIR[:split,...]")
    add_model_options(p, model_help="the source checkpoint; default: the embedded demo model", experts=False)
    p.add_argument("--bits", type=_ints, default=[4], help="bit widths, e.g. 2,3,4,8 (default 4); 16 = the checkpoint unquantized (bf16)")
    p.add_argument("--experts-per-token", type=_ints, default=None,
                   help="experts per token, e.g. 2,4,8 (default: the model's)")
    p.add_argument("--grammar", type=_onoff, default=[True, False], help="on,off (default both)")
    p.add_argument("--cross", action="store_true",
                   help="instead of the full grid: the bits sweep at the first --experts-per-token value plus the "
                        "experts-per-token sweep at --cross-bits")
    p.add_argument("--cross-bits", type=int, default=4)
    p.add_argument("--out", required=True, help="output directory (results.json, results.md, failures.json, PNGs)")
    p.add_argument("--limit", type=int, default=None, help="first N cases only")
    p.add_argument("--per-split", type=int, default=None, help="bfcl: first N cases of each split")
    p.add_argument("--kl-texts", type=int, default=12, help="conversations used for the KL divergence")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fmoe.agent.remote import resolve_remote
    from fmoe.demo import MODEL_DIR
    from fmoe.eval.report import print_table, write_report
    from fmoe.eval.run import plan_variants, run_eval
    from fmoe.eval.suite import resolve_suite

    suite = resolve_suite(args.suite, per_split=args.per_split)
    remote = resolve_remote(args.model)
    if remote is not None:   # an OpenAI-compatible endpoint: one variant, "remote"; no KL
        if not args.quiet:
            print("fmoe eval: remote model: --bits, --experts-per-token and --grammar do not apply (one variant, "
                  "'remote'); KL is skipped", file=sys.stderr)
        from fmoe.eval.run import run_eval_remote

        results = run_eval_remote(suite, remote, args.out, limit=args.limit, progress=not args.quiet)
        paths = write_report(results, args.out, with_plots=False)
        print_table(results)
        print("wrote " + ", ".join(str(p) for p in paths))
        return 0
    from fmoe.engine.loader import resolve_model

    model = resolve_model(args.model, bits=16) if args.model else MODEL_DIR   # a directory or ORG/NAME (HF cache)
    if args.model is None and not (MODEL_DIR / "config.json").exists():
        raise FmoeError(f"the embedded demo model is missing ({MODEL_DIR}); pass --model")
    variants = plan_variants(args.bits, args.experts_per_token or [None], args.grammar, cross=args.cross,
                             cross_bits=args.cross_bits)
    results = run_eval(suite, model, variants, args.out, limit=args.limit, options=model_options(args),
                       progress=not args.quiet, kl_n=args.kl_texts)
    paths = write_report(results, args.out, with_plots=not args.no_plots)
    print_table(results)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    from fmoe.cli import main as fmoe_main   # the dispatcher: FmoeError -> "fmoe eval: error: ...", exit 2

    sys.exit(fmoe_main(["eval", *sys.argv[1:]]))
