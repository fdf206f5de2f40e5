"""A/B of one setting of the CPU decode, alternated in one process on the same warm model: per round the median time
outside the native mat-vec kernels of 16 decode tokens (torch_qlinear.profile), each value's rounds and their median.

    python3 bench/device/decode_rest_ab.py MODEL_DIR SETTING [ROUNDS]

SETTING: ``native_norm`` (TorchBackend.native_norm: decode's RMSNorm by one native call, or torch's op) or
``resident_recheck`` (the expert store's RESIDENT_RECHECK_S: 1 s, or 0 = ask the page cache on every get).
"""
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fmoe.bench.decode import load_warm  # noqa: E402
from fmoe.engine.generate import Generation  # noqa: E402
from fmoe.kernels import native, torch_qlinear  # noqa: E402


def _apply(m, setting: str, on: bool) -> None:
    if setting == "native_norm":
        m.ops.native_norm = on
    elif setting == "resident_recheck":
        m.experts.store.resident_recheck_s = 1.0 if on else 0.0
    else:
        raise SystemExit(f"unknown setting {setting!r}: native_norm or resident_recheck")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    model, setting, rounds = argv[0], argv[1], int(argv[2]) if len(argv) > 2 else 6
    m, prompt, _, _ = load_warm(Path(model), 8)
    rest: dict[bool, list[float]] = {True: [], False: []}
    for r in range(rounds):
        for on in ((True, False) if r % 2 == 0 else (False, True)):
            _apply(m, setting, on)
            it = iter(Generation(m, prompt, max_tokens=17))
            next(it)                                   # the prefill's token
            per = []
            for _ in range(16):
                torch_qlinear.profile(True)
                t0 = time.perf_counter()
                next(it)
                per.append(time.perf_counter() - t0 - torch_qlinear.profile(False)["kernel_s"])
            rest[on].append(statistics.median(per) * 1e3)
    print(f"{model}: {native.threads()} threads, kernel {native.kernel_isa()}; ms a token outside the kernels")
    for on, v in rest.items():
        print(f"  {setting}={on}: rounds {[round(x, 2) for x in v]}, median {statistics.median(v):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
