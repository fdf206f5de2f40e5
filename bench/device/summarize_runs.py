"""One line of the key figures of a `fmoe bench kernels --json` or `fmoe bench decode --json` output, for device
reports that cannot bring every JSON file back (the device returns at most 8 files).

    python3 bench/device/summarize_runs.py kernels|decode FILE.json
"""
import json
import sys


def kernels(d: dict) -> str:
    b, f, m = d["bits"]["4"], d["experts_fused_4bit"], d["mem_read"]
    return (f"  kernels: peer {m.get('native_read_gbps', 0):.1f} GB/s (reference {d['mem_read_gbps']:.1f}), 4-bit one "
            f"matrix {b['gbps']:.1f} GB/s = {b['ratio']:.2f}, 10 experts one call {f['fused_gbps']:.1f} GB/s = "
            f"{f['fused_gbps'] / d['mem_read_gbps']:.2f}")


def decode(d: dict) -> str:
    return (f"  decode: best {d['ms_per_token_best']:.1f} ms (kernels {d['kernel_ms_best_token']:.1f}, rest "
            f"{d['rest_ms_best_token']:.1f}), median {d['ms_per_token_median']:.1f}; reference {d['mem_read_gbps']:.1f} "
            f"GB/s, bound {d['memory_bound_ms']:.1f} ms, ratio {d['ratio_to_memory_bound_best']:.2f} / "
            f"{d['ratio_to_memory_bound_median']:.2f}")


if __name__ == "__main__":
    kind, path = sys.argv[1], sys.argv[2]
    print({"kernels": kernels, "decode": decode}[kind](json.load(open(path))))
