"""How soon a block's first bytes land on the H200: one launch where each block (1, or one per SM) fetches `bytes`
from fresh HBM addresses (never read before in the run, so neither in L2 nor translated) into shared memory, either
by `copies` bulk copies issued by thread 0 (what fmoe_qmv4_bulk's producer does) or by plain 16-byte loads of all
512 threads; per block the time from entry to the last byte, median / max over blocks. Session 13 left this open:
the down projection's first 36 KB stage lands 3.2-3.4 us after a block's entry whatever else is in flight
(bench/results/cuda_stream.md, session 13); a lone block's figure here says whether that is the memory system under
132 blocks' requests or the copies themselves.

    python3 bench/device/tma_probe.py [--kb 9 18 36 72 144] [--copies 1 4]
"""
import argparse
import ctypes
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from fmoe.kernels import nvrtc  # noqa: E402

SOURCE = r"""
typedef unsigned int u32;
typedef unsigned long long u64;
__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }
__device__ __forceinline__ u64 gtime() { u64 t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }

// MODE 0: thread 0 issues `copies` bulk copies of bytes / copies each onto one mbarrier; MODE 1: every thread loads
// 16-byte words of the block's bytes (sum kept). out[4 b ..]: globaltimer at entry, ns to the copies' issue (MODE 0),
// ns to the last byte, the block's SM
template <int MODE>
__global__ void __launch_bounds__(512, 1) tma_probe(const char* src, long long stride, int bytes, int copies,
                                                   u64* out, u32* sink) {
    extern __shared__ __align__(128) unsigned char sm[];
    __shared__ __align__(8) u64 bar;
    const char* p = src + (long long)blockIdx.x * stride;
    const u64 t0 = gtime();
    u64 t1 = t0;
    if (MODE == 0) {
        if (threadIdx.x == 0) {
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(smem_addr(&bar)) : "memory");
            asm volatile("fence.mbarrier_init.release.cluster;\n\tfence.proxy.async.shared::cta;" ::: "memory");
            asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;"
                         :: "r"(smem_addr(&bar)), "r"((u32)bytes) : "memory");
            const int each = bytes / copies;
            for (int c = 0; c < copies; ++c)
                asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                             :: "r"(smem_addr(sm + c * each)), "l"(p + c * each), "r"(each), "r"(smem_addr(&bar))
                             : "memory");
            t1 = gtime();
            u32 done = 0;
            while (!done)
                asm volatile("{ .reg .pred q; mbarrier.try_wait.parity.shared::cta.b64 q, [%1], 0; "
                             "selp.u32 %0, 1, 0, q; }" : "=r"(done) : "r"(smem_addr(&bar)) : "memory");
        }
    } else {
        u32 acc = 0;
        for (int i = threadIdx.x; i < bytes / 16; i += blockDim.x) {
            const uint4 v = ((const uint4*)p)[i];
            acc ^= v.x ^ v.y ^ v.z ^ v.w;
        }
        if (acc == 0x9E3779B9u) sink[0] = acc;
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const u64 t2 = gtime();
        u32 smid;
        asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
        out[4 * blockIdx.x] = t0;
        out[4 * blockIdx.x + 1] = t1 - t0;
        out[4 * blockIdx.x + 2] = t2 - t0;
        out[4 * blockIdx.x + 3] = smid;
    }
}
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kb", type=int, nargs="+", default=[9, 18, 36, 72, 144])
    ap.add_argument("--copies", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    prog = nvrtc.Program(SOURCE, "tma_probe")
    dev = torch.cuda.current_device()
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    buf = torch.empty(8 << 30, dtype=torch.uint8, device="cuda")     # fresh addresses for every launch
    buf.random_(0, 255)
    sink = torch.zeros(1, dtype=torch.int32, device="cuda")
    out = torch.zeros(4 * sms, dtype=torch.int64, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    base = [0]

    def launch(mode, blocks, nbytes, copies):
        stride = (nbytes + 4095) // 4096 * 4096
        if base[0] + stride * blocks > buf.numel():
            base[0] = 0
        src = buf.data_ptr() + base[0]
        base[0] += stride * blocks + (2 << 20)
        out.zero_()
        torch.cuda.synchronize()
        fn = prog.function(f"tma_probe<{mode}>", dev)
        fn.launch((blocks, 1, 1), (512, 1, 1), nbytes, stream,
                  [ctypes.c_void_p(src), ctypes.c_longlong(stride), ctypes.c_int(nbytes), ctypes.c_int(copies),
                   ctypes.c_void_p(out.data_ptr()), ctypes.c_void_p(sink.data_ptr())])
        torch.cuda.synchronize()
        r = out.view(-1, 4)[:blocks].cpu().tolist()
        g0 = min(x[0] for x in r)
        land = sorted((x[0] - g0 + x[2]) / 1e3 for x in r)                   # us from the first block's entry
        issue = sorted(x[1] / 1e3 for x in r)
        return land[len(land) // 2], land[-1], issue[len(issue) // 2]

    for kb in a.kb:
        nbytes = kb * 1024
        for blocks in (1, sms):
            rows = []
            for mode, copies in [(0, c) for c in a.copies] + [(1, 1)]:
                res = [launch(mode, blocks, nbytes, copies) for _ in range(a.repeats)][-1]
                what = f"{copies} bulk cop{'y' if copies == 1 else 'ies'}" if mode == 0 else "16-byte loads"
                rows.append(f"{what}: landed {res[0]:.2f}/{res[1]:.2f} us" + (f" (issued in {res[2]:.2f})"
                                                                                if mode == 0 else ""))
            print(f"{kb} KB a block, {blocks} block{'s' if blocks > 1 else ''} ({kb * blocks / 1024:.2f} MB): "
                  + "; ".join(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
