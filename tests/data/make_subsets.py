"""Cut the small test subsets in tests/data/ from the maintainers' full copies (run by hand, never by the tests).

    python tests/data/make_subsets.py SRC      # SRC holds reference/qwen3_5/ and extdata/{maskbench,bfcl}/

Whole lines and whole files are copied byte for byte (no re-serialisation); see SOURCES.md for what is taken.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MASKBENCH_SPLITS = ["BFCL_simple", "BFCL_multiple", "BFCL_parallel", "Glaiveai2K", "Github_trivial", "Github_easy",
                    "Handwritten", "JME", "Synthesized", "MCPspec", "Snowplow", "WashingtonPost"]
MASKBENCH_LINES = 12  # first N cases (lines) of each JSONSchemaBench split
BFCL_SPLITS = ["simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance"]
BFCL_LINES = 50  # first N questions of each BFCL split, with their possible_answer lines (matched by id)
REFERENCE_FILES = ["SOURCE.md", "chat_template.jinja", "chat_template_qwen3_hermes.jinja", "special_tokens.json"]


def first_lines(path: Path, n: int) -> list[bytes]:
    lines = path.read_bytes().splitlines(keepends=True)[:n]
    return [ln if ln.endswith(b"\n") else ln + b"\n" for ln in lines]  # a file's last line may lack its newline


def main(src: Path) -> None:
    ref_src, ref_dst = src / "reference" / "qwen3_5", HERE / "reference" / "qwen3_5"
    ref_dst.mkdir(parents=True, exist_ok=True)
    for name in REFERENCE_FILES:
        shutil.copyfile(ref_src / name, ref_dst / name)

    mb_dst = HERE / "extdata" / "maskbench"
    mb_dst.mkdir(parents=True, exist_ok=True)
    for split in MASKBENCH_SPLITS:
        name = f"{split}.jsonl"
        (mb_dst / name).write_bytes(b"".join(first_lines(src / "extdata" / "maskbench" / name, MASKBENCH_LINES)))

    bf_src, bf_dst = src / "extdata" / "bfcl", HERE / "extdata" / "bfcl"
    (bf_dst / "possible_answer").mkdir(parents=True, exist_ok=True)
    for split in BFCL_SPLITS:
        name = f"BFCL_v4_{split}.json"
        qs = first_lines(bf_src / name, BFCL_LINES)
        (bf_dst / name).write_bytes(b"".join(qs))
        ans = bf_src / "possible_answer" / name
        if ans.exists():
            ids = {json.loads(q)["id"] for q in qs}
            keep = [ln for ln in first_lines(ans, 10 ** 9) if json.loads(ln)["id"] in ids]
            assert len(keep) == len(ids), (split, len(keep), len(ids))
            (bf_dst / "possible_answer" / name).write_bytes(b"".join(keep))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/data/make_subsets.py SRC")
    main(Path(sys.argv[1]))
