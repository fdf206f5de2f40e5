"""Where a decode-size 4-bit mat-vec spends its time on the GPU (session 9): the engine's kernels with and without
programmatic dependent launch (cuda_qmv.OVERLAP_PRIOR), and the tensor-core kernel with parts taken out (no x
staging; no products: the loaded words only XORed; both), each timed as `fmoe bench kernels --device cuda` times a
row (fmoe.bench.cuda_kernels.measure: CUDA graphs cycling through disjoint slot sets), beside the read-only peer.
The ablated kernels compute nothing meaningful: they are timings only.

    python3 bench/device/qmv_overlap.py [--rows 10 64]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fmoe.bench import cuda_kernels as ck  # noqa: E402
from fmoe.kernels import cuda_qmv, nvrtc  # noqa: E402

STAGE = "        mma_stage<GROUP, XT>(sm, a.x, (i64)r * a.x_stride, n_in, threadIdx.x, blockDim.x);\n"
DOT = "        mma_dot<GROUP, XT>(it, sm + k0 / 2, sm + n_in / 2 + k0 / 2, sx + k0 / GROUP, zero, g, c, acc);\n"
XOR = """        { u32 v = 0;
#pragma unroll
          for (int m = 0; m < NM; ++m)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
#pragma unroll
              for (int i = 0; i < KS / 32; ++i) v ^= it.q[m][h][i];
              acc[m][h] = __uint_as_float(v & 0x3FFFFFFFu) + it.sc[m][h][0] + it.bi[m][h][0] + sx[0];
            } }
"""


# round 2 (call 4), on top of stage=0 dot=0: the codes as 16-byte loads (lane c: 16 bytes at 16 c of each 64-byte
# run of a row, the bytes the kernel reads, in 4 instead of 8 loads), no scale/bias loads, no block reduction (warp 0
# of a tile writes its own part: no shared memory, no barrier)
LOADS = """            for (int gi = 0; gi < I::NG; ++gi)
                load_words<I::WPG>(&it.q[m][h][gi * I::WPG], rowp + gi * (GROUP / 8));
"""
LOADS_V4 = """            for (int s4 = 0; s4 < I::NW / 4; ++s4)
                load_words<4>(&it.q[m][h][4 * s4], base + (i64)n * row_words + k0 / 8 + 16 * s4 + 4 * c);
"""
SCALES = """                it.sc[m][h][w] = load_f<ST>(sp, si);
                it.bi[m][h][w] = load_f<ST>(bp, si);
"""
SCALES_NONE = """                it.sc[m][h][w] = (float)si;
                it.bi[m][h][w] = 1.f;
"""
REDUCE_START = "    if (c == 0) {\n#pragma unroll\n        for (int m = 0; m < NM; ++m) {\n            red[warp]"
REDUCE_NONE = """    if (c == 0 && warp % WPT == 0) {
        const int n = (blockIdx.x * TPB + warp / WPT) * 16 + g;
        if (n < a.n_out) a.y[(i64)r * a.n_out + n] = acc[0][0] + acc[0][1];
    }
}
"""


def program(stage: bool, dot: bool, v4: bool = False, scales: bool = True, reduce: bool = True):
    src = cuda_qmv._PROGRAM.source
    for part in (STAGE, DOT, LOADS, SCALES):
        assert src.count(part) == 1, "the kernel source changed: update the ablation edits"
    if not stage:
        src = src.replace(STAGE, "")
    if not dot:
        src = src.replace(DOT, XOR)
    if v4:
        src = src.replace(LOADS, LOADS_V4)
    if not scales:
        src = src.replace(SCALES, SCALES_NONE)
    if not reduce:
        start = src.index(REDUCE_START)
        src = src[:start] + REDUCE_NONE + src[src.index("}\n", src.index("mma_out<NM>(v);")) + 4:]
    return nvrtc.Program(src, f"cuda_qmv_abl{int(stage)}{int(dot)}{int(v4)}{int(scales)}{int(reduce)}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[10, 64])
    ap.add_argument("--round2", action="store_true", help="only the loads-only ablations of call 4")
    ap.add_argument("--bulk", action="store_true", help="only the bulk-copy kernel against the engine's and the peer")
    ap.add_argument("--bulk-copies", action="store_true", help="the bulk kernel with and without its products")
    ap.add_argument("--stages", type=int, nargs="+", default=[0],
                    help="bulk: stage buffers in flight (0: all that fit)")
    a = ap.parse_args()
    base = cuda_qmv._PROGRAM
    bw = ck.hbm_bandwidth()
    print(f"HBM copy bandwidth {bw / 1e12:.2f} TB/s")

    def show(tag, m, shape=None, rows=None):
        shape, rows = m.get("shape", shape), m.get("rows", rows)
        print(f"{tag:>34} {shape[0]}x{shape[1]} rows {rows}: {m['seconds'] * 1e6:6.1f} us "
              f"= {m['bytes_per_s'] / bw:.2f} of HBM", flush=True)

    if a.bulk_copies:             # the bulk-copy kernel with its products taken out: copies, barriers, partial sums
        # (call 8 ran this on the kernel of then, one tile a warp, where skipping to the next stage was safe; since
        # the stage bookkeeping is incremental at the loop's end, the products' loop runs zero times instead)
        line = "        for (int j = 0; j < KW / 128; ++j) {\n"
        skip = "        for (int j = 0; j < (a.n_out > 0 ? 0 : KW / 128); ++j) {\n"
        assert base.source.count(line) == 1, "the kernel source changed: update the ablation edit"
        for shape in ck.SHAPES:
            for rows in a.rows:
                m = ck.measure("cuda", 4, *shape, rows)
                show("read peer", ck.measure_read(m["bytes"]), shape, rows)
                show("bulk", ck.measure("cuda bulk", 4, *shape, rows))
                cuda_qmv._PROGRAM = nvrtc.Program(base.source.replace(line, skip), "cuda_qmv_bulkcopies")
                try:
                    show("bulk, copies only", ck.measure("cuda bulk", 4, *shape, rows))
                finally:
                    cuda_qmv._PROGRAM = base
        return 0
    if a.bulk:
        for rows in a.rows:
            for shape in ck.SHAPES:
                m = ck.measure("cuda", 4, *shape, rows)
                show("read peer", ck.measure_read(m["bytes"]), shape, rows)
                show("mma-b3 (the default)", m)
                for stages in a.stages:
                    cuda_qmv.BULK_STAGES = stages or None
                    show(f"bulk stages={stages or 'max'}", ck.measure("cuda bulk", 4, *shape, rows))
        return 0
    if a.round2:
        for shape in ck.SHAPES:
            m = ck.measure("cuda", 4, *shape, 10)
            show("read peer", ck.measure_read(m["bytes"]), shape, 10)
            for v4, scales, reduce in ((0, 1, 1), (1, 1, 1), (0, 0, 1), (0, 1, 0), (1, 0, 1), (1, 0, 0)):
                cuda_qmv._PROGRAM = program(False, False, v4, scales, reduce)
                try:
                    show(f"loads only v4={v4} scales={scales} reduce={reduce}", ck.measure("cuda", 4, *shape, 10))
                finally:
                    cuda_qmv._PROGRAM = base
        return 0
    for rows in a.rows:
        for shape in ck.SHAPES:
            m = ck.measure("cuda", 4, *shape, rows)
            show("read peer", ck.measure_read(m["bytes"]), shape, rows)
            for overlap in (False, True):
                cuda_qmv.OVERLAP_PRIOR = overlap
                show(f"mma-b3 overlap={int(overlap)}", ck.measure("cuda", 4, *shape, rows))
                show(f"fma overlap={int(overlap)}", ck.measure("cuda fma", 4, *shape, rows))
                if rows == 10:
                    for stage, dot in ((False, True), (True, False), (False, False)):
                        cuda_qmv._PROGRAM = program(stage, dot)
                        try:
                            show(f"mma-b3 stage={int(stage)} dot={int(dot)} overlap={int(overlap)}",
                                 ck.measure("cuda", 4, *shape, rows))
                        finally:
                            cuda_qmv._PROGRAM = base
        if rows == 10:
            m = ck.measure("cuda gate+up", 4, *ck.SHAPES[0], rows)
            show("read peer gate+up", ck.measure_read(m["bytes"]), ck.SHAPES[0], rows)
            for overlap in (False, True):
                cuda_qmv.OVERLAP_PRIOR = overlap
                show(f"gate+up fma overlap={int(overlap)}", ck.measure("cuda gate+up", 4, *ck.SHAPES[0], rows))
                show(f"gate+up mma-k256 overlap={int(overlap)}",
                     ck.measure("cuda mma-k256 gate+up", 4, *ck.SHAPES[0], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
