"""``fmoe eval`` reports: DIR/results.json, DIR/results.md, DIR/failures.json, PNG plots, a rich terminal table.

    write_report(results, out_dir)  -> list of written paths
    print_table(results)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fmoe.eval.run import METRICS

COLUMNS = (("bits", "bits"), ("experts_per_token", "k"), ("grammar", "grammar"), ("parse_rate", "parse"),
           ("schema_valid_rate", "schema ok"), ("tool_accuracy", "tool"), ("argument_accuracy", "args"),
           ("answer_accuracy", "answer"), ("tok_s", "tok/s"), ("sampled_tok_s", "sampled/s"),
           ("bytes_per_token", "MB/tok"), ("bytes_per_pass", "MB/pass"),
           ("kl_vs_reference", "KL"))
PLOT_METRICS = ("parse_rate", "schema_valid_rate", "tool_accuracy", "argument_accuracy", "answer_accuracy",
                "kl_vs_reference")


def cell(key: str, v: Any) -> str:
    if v is None:
        return "-"
    if key == "grammar":
        return "on" if v else "off"
    if key in ("bytes_per_token", "bytes_per_pass"):
        return f"{v / 1e6:.2f}"
    if key in ("tok_s", "sampled_tok_s"):
        return f"{v:.1f}"
    if key == "kl_vs_reference":
        return f"{v:.4f}"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def markdown(results: dict) -> str:
    ref = results["kl_reference"]
    kl = (f"KL skipped ({ref['skipped']})" if "skipped" in ref else
          f"KL reference: {ref['bits']} bits, {ref['experts_per_token']} experts/token, {ref['positions']} positions")
    out = [f"# fmoe eval: {results['suite']}", "",
           f"model `{results['model']}`, backend {results['backend']}, call format {results['call_format']}, "
           f"{results['cases']} cases; {kl}.", "",
           "| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in results["variants"]:
        out.append("| " + " | ".join(cell(k, r.get(k)) for k, _ in COLUMNS) + " |")
    out += ["", "parse / schema ok: over turns that attempted a call; tool / args: first turn; answer: cases run "
                "to a final answer with the tools (\"-\": nothing to count); tok/s: generated tokens (grammar-forced "
                "included) per decode second, sampled/s: sampled ones only; MB/tok: expert bytes read per generated "
                "token, MB/pass: per decode forward pass (forced tokens share a pass); KL: mean "
                "KL(reference || variant) per position, teacher-forced.", ""]
    counts = results.get("failure_counts") or {}
    if counts:
        cats = sorted({c for v in counts.values() for c in v})
        out += ["## Failures per category", "", "| variant | " + " | ".join(cats) + " |",
                "|---|" + "---|" * len(cats)]
        for label, c in counts.items():
            out.append(f"| {label} | " + " | ".join(str(c.get(k, 0)) for k in cats) + " |")
        out.append("")
    return "\n".join(out)


def plots(results: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["variants"]
    paths = []
    for axis, other, fname in (("bits", "experts_per_token", "metrics_vs_bits.png"),
                               ("experts_per_token", "bits", "metrics_vs_experts.png")):
        # the slice of the grid along `axis` at the most common value of `other`
        vals = sorted({r[axis] for r in rows})
        if len(vals) < 2:
            continue
        others = [r[other] for r in rows]
        fixed = max(set(others), key=lambda x: (sum(1 for r in rows if r[other] == x
                                                     and len({q[axis] for q in rows if q[other] == x}) > 1), x))
        fig, axes = plt.subplots(2, 3, figsize=(13, 7))
        for ax, m in zip(axes.ravel(), PLOT_METRICS):
            for g, style in ((True, "o-"), (False, "s--")):
                pts = sorted((r[axis], r[m]) for r in rows if r[other] == fixed and r["grammar"] == g
                             and r.get(m) is not None)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style,
                            label=f"grammar {'on' if g else 'off'}")
            ax.set_title(m)
            ax.set_xlabel(axis.replace("_", " "))
            ax.set_xticks(vals)
            ax.grid(alpha=0.3)
            if m != "kl_vs_reference":
                ax.set_ylim(-0.05, 1.05)
            ax.legend(fontsize=8)
        fig.suptitle(f"{results['suite']}: metrics vs {axis.replace('_', ' ')} ({other.replace('_', ' ')} = {fixed})")
        fig.tight_layout()
        p = out_dir / fname
        fig.savefig(p, dpi=90)
        plt.close(fig)
        paths.append(p)
    return paths


def write_report(results: dict, out_dir: str | Path, with_plots: bool = True) -> list[Path]:
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    body = {k: v for k, v in results.items() if k != "failures"}
    paths = [d / "results.json", d / "results.md", d / "failures.json"]
    paths[0].write_text(json.dumps(body, indent=2) + "\n")
    paths[1].write_text(markdown(results))
    paths[2].write_text(json.dumps(results.get("failures") or {}, indent=2) + "\n")
    if with_plots:
        paths += plots(results, d)
    return paths


def print_table(results: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(stderr=False)
    t = Table(title=f"fmoe eval: {results['suite']} ({results['cases']} cases)")
    for _, h in COLUMNS:
        t.add_column(h, justify="right")
    for r in results["variants"]:
        t.add_row(*(cell(k, r.get(k)) for k, _ in COLUMNS))
    console.print(t)


__all__ = ["write_report", "print_table", "markdown", "plots", "METRICS"]
