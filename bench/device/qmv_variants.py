"""An experiment for issue 13's kernel bar: the grouped 4-bit mat-vec (fmoe/kernels/triton_qmv.py) against a variant
that reads the activations transposed (xt[e, w] = x[w * 8 + e], made by one small copy before the launch), so that
each of a word's 8 values takes one contiguous vector load of x instead of a stride-8 gather. Timed inside CUDA
graphs on the expert shapes of the 397B decode (rotating over enough slots that L2 cannot serve the reads), the
transpose included in the variant's time; the same outputs checked. GB/s of weight bytes against the HBM read
bandwidth measured in the same run.
    python3 bench/device/qmv_variants.py OUT.json"""
import itertools
import json
import sys

import torch
import triton
import triton.language as tl

from fmoe.kernels import triton_qmv

dev = "cuda"
torch.manual_seed(0)


@triton.jit
def _qmv_words_xt(x_ptr, w_ptr, s_ptr, b_ptr, slot_ptr, y_ptr, n_out: tl.constexpr, n_in: tl.constexpr, x_row_stride,
                  w_slot_stride, s_slot_stride,
                  BITS: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    EPW: tl.constexpr = 32 // BITS
    WORDS: tl.constexpr = BLOCK_K // EPW
    WPG: tl.constexpr = GROUP // EPW
    MASK: tl.constexpr = (1 << BITS) - 1
    row = tl.program_id(1)
    slot = tl.load(slot_ptr + row).to(tl.int64)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < n_out
    words_per_row: tl.constexpr = n_in // EPW
    groups_per_row: tl.constexpr = n_in // GROUP
    w_rows = w_ptr + slot * w_slot_stride + n.to(tl.int64)[:, None] * words_per_row
    s_rows = slot * s_slot_stride + n.to(tl.int64)[:, None] * groups_per_row
    x_row = x_ptr + row.to(tl.int64) * x_row_stride
    acc = tl.zeros((BLOCK_N, WORDS), dtype=tl.float32)
    for w0 in range(0, words_per_row, WORDS):
        wi = w0 + tl.arange(0, WORDS)
        words = tl.load(w_rows + wi[None, :], mask=n_ok[:, None], other=0, eviction_policy="evict_first")
        fx = tl.zeros((BLOCK_N, WORDS), dtype=tl.float32)
        xsum = tl.zeros((WORDS,), dtype=tl.float32)
        for e in tl.static_range(EPW):
            if 23 - BITS - e * BITS >= 0:
                top = words << (23 - BITS - e * BITS)
            else:
                top = words >> (e * BITS + BITS - 23)
            f = ((top & (MASK << (23 - BITS))) | 0x3F800000).to(tl.float32, bitcast=True)
            xe = tl.load(x_row + e * words_per_row + wi).to(tl.float32)          # contiguous
            fx += f * xe[None, :]
            xsum += xe
        dot = (fx - xsum[None, :]) * (1 << BITS)
        gi = wi // WPG
        sc = tl.load(s_ptr + s_rows + gi[None, :], mask=n_ok[:, None], other=0).to(tl.float32)
        bi = tl.load(b_ptr + s_rows + gi[None, :], mask=n_ok[:, None], other=0).to(tl.float32)
        acc += dot * sc + bi * xsum[None, :]
    tl.store(y_ptr + row.to(tl.int64) * n_out + n, tl.sum(acc, axis=1), mask=n_ok)


def qmv_xt(x, w, s, b, slots, block_n, block_k, num_warps, bits=4, group=64):
    R = slots.numel()
    n_slots, n_out, n_words = w.shape
    n_in = n_words * 32 // bits
    epw = 32 // bits
    xt = x.view(x.shape[0], n_in // epw, epw).transpose(1, 2).contiguous()     # [1 or R, EPW, n_in / EPW]
    y = torch.empty(R, n_out, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(n_out, block_n), R)
    _qmv_words_xt[grid](xt, w, s, b, slots, y, n_out, n_in, 0 if x.shape[0] == 1 else n_in, w.stride(0),
                        s.stride(0), BITS=bits, GROUP=group, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps)
    return y


def hbm_read():
    a = torch.ones(2 << 28, dtype=torch.float32, device=dev)
    best = 1e9
    for _ in range(5):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); a.sum(); e.record(); e.synchronize()
        best = min(best, s.elapsed_time(e) / 1e3)
    return a.numel() * 4 / best / 1e9


def timed(fn, slot_sets, reps=20):
    for st in slot_sets[:2]:
        fn(st)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(reps):
            fn(slot_sets[i % len(slot_sets)])
    g.replay(); torch.cuda.synchronize()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    ev[0].record(); g.replay(); ev[1].record(); ev[1].synchronize()
    return ev[0].elapsed_time(ev[1]) / 1e3 / reps


SHAPES = {"expert_gate_up_k11": (1024, 4096, 11, True, 96), "expert_down_k11": (4096, 1024, 11, False, 96)}
hbm = hbm_read()
out = {"hbm_read_gbps": hbm, "gpu": torch.cuda.get_device_name(), "results": {}}
print(json.dumps({"hbm_read_gbps": round(hbm, 1)}), flush=True)
for name, (n_out, n_in, R, shared, S) in SHAPES.items():
    w = torch.randint(-2**31, 2**31 - 1, (S, n_out, n_in // 8), dtype=torch.int32, device=dev)
    s = (torch.rand(S, n_out, n_in // 64, device=dev) * 0.01).to(torch.bfloat16)
    b = (torch.randn(S, n_out, n_in // 64, device=dev) * 0.01).to(torch.bfloat16)
    x = torch.randn(1 if shared else R, n_in, device=dev, dtype=torch.bfloat16 if shared else torch.float32)
    nbytes = R * (n_out * n_in // 2 + 2 * 2 * n_out * n_in // 64)
    rot = max(1, S // R)
    slot_sets = [torch.arange(i * R, i * R + R, device=dev, dtype=torch.int32) % S for i in range(rot)]
    ref = triton_qmv.grouped_qmv(x, w, s, b, slot_sets[0], 4, 64)
    res = []
    t = timed(lambda st: triton_qmv.grouped_qmv(x, w, s, b, st, 4, 64), slot_sets)
    res.append({"variant": "current (launch_config)", "us": round(t * 1e6, 2), "fraction_of_hbm": round(nbytes / t / 1e9 / hbm, 3)})
    for bn, bk, nw in itertools.product((4, 8, 16, 32), (1024, 2048), (2, 4)):
        if bk > n_in:
            continue
        try:
            got = qmv_xt(x, w, s, b, slot_sets[0], bn, bk, nw)
            err = float((got - ref).abs().max() / ref.abs().max())
            t = timed(lambda st: qmv_xt(x, w, s, b, st, bn, bk, nw), slot_sets)
            res.append({"variant": "xt", "block_n": bn, "block_k": bk, "num_warps": nw, "us": round(t * 1e6, 2),
                        "fraction_of_hbm": round(nbytes / t / 1e9 / hbm, 3), "max_rel_err": err})
        except Exception as e:  # noqa: BLE001
            res.append({"variant": "xt", "block_n": bn, "block_k": bk, "num_warps": nw, "error": str(e)[:100]})
    res.sort(key=lambda r: r.get("us", 1e18))
    out["results"][name] = res
    print(json.dumps({"shape": name, "best": res[:3], "current": next(r for r in res if r["variant"].startswith("current"))}), flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
