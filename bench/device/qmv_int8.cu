// EXPERIMENT (session 9, not run on a GPU yet): fmoe_qmv4_bulk8, the bulk-copy kernel of fmoe/kernels/cuda_qmv.cu
// with its products on int8 tensor cores (mma.sync m16n8k32 s8.s8.s32) instead of bf16 ones. bench/device/qmv_int8.py
// appends this file to cuda_qmv.cu (it uses that file's helpers: the stage ring's bulk_start / bulk_finish /
// bulk_next), checks it against the FMA kernel and times it. It is fmoe_qmv4_bulk with the staging and the products
// changed, kept apart until it has run on a GPU: if it wins, fold it into that kernel as a template parameter.
//
// Why: at decode sizes the bulk kernel is issue-bound (bench/results/cuda_stream.md, session 9): ~13 issued
// instructions per bf16 mma, 7 of them the nibble extraction (a shift and a LOP3 per pair of codes). Here a code word
// gives two registers of four int8 codes with three instructions (w & 0x0F0F0F0F, (w >> 4) & 0x0F0F0F0F), and one
// mma takes 512 codes instead of 256.
//   A: 16 output rows x 32 codes: lane (g, c) holds rows g, g + 8 at k = 4c..4c+3 (a0, a1) and 16+4c..16+4c+3 (a2,
//      a3); k 4c.. are the even positions 0, 2, 4, 6 of the lane's word, k 16+4c.. the odd ones 1, 3, 5, 7.
//   B: the activations as two int8 digits per group: x ~ sigma_g (256 h + l), x_q = rint(x / sigma_g) in +-16383,
//      h = (x_q + 128) >> 8 in [-64, 64], l = x_q - 256 h in [-128, 127] (error <= 2^-15 of the group's max |x|);
//      column 2 (group % 4) + d holds digit d (0: h, 1: l) of that group's positions, zero elsewhere (the column
//      trick of fmoe_qmv4_mma), so four groups accumulate in one int32 D, exactly.
//   Per group: s_g sigma_g (256 D_h + D_l) + b_g sum(x) (the float32 sum of x as given).
// Staged x per table row: h words [n / 4] (per 8 values 8m.. : word 2m = h of 0, 2, 4, 6; word 2m + 1 = 1, 3, 5, 7),
// l words [n / 4] the same, sigma [n / GROUP] floats, sum(x) [n / GROUP] floats.

__device__ __forceinline__ void mma_s8(int (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ u32 pack_s8(int a, int b, int c, int d) {
    return (u32)(a & 0xFF) | ((u32)(b & 0xFF) << 8) | ((u32)(c & 0xFF) << 16) | ((u32)(d & 0xFF) << 24);
}

// x staging in two halves, so that the loads can be issued before the weight copies (session 10: a load issued after
// a block's bulk copies waited behind them, 5.5-7.8 us of a 12-14 us cold launch): thread i (< n8_pad, one chunk of
// 8 values a thread: K <= 8 x blockDim) loads its 8 values, then quantizes and stores them.
template <int XT>
__device__ __forceinline__ void int8_load(const void* x, i64 xoff, int i, int n8, float (&v)[8]) {
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = 0.f;
    if (i >= n8) return;
    if (XT) {
        const uint4 raw = *(const uint4*)((const u16*)x + xoff + (i64)i * 8);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const u32 wd = word_of(raw, j);
            v[2 * j] = __uint_as_float(wd << 16);
            v[2 * j + 1] = __uint_as_float(wd & 0xFFFF0000u);
        }
    } else {
        const float* xp = (const float*)x + xoff + (i64)i * 8;
        const float4 f0 = *(const float4*)xp, f1 = *(const float4*)(xp + 4);
        v[0] = f0.x; v[1] = f0.y; v[2] = f0.z; v[3] = f0.w; v[4] = f1.x; v[5] = f1.y; v[6] = f1.z; v[7] = f1.w;
    }
}

template <int GROUP>
__device__ __forceinline__ void int8_store(u32* xs, int n, int i, int n8, const float (&v)[8]) {
    u32* xh = xs;
    u32* xl = xs + n / 4;
    float* sig = (float*)(xs + n / 2);
    float* sx = sig + n / GROUP;
    constexpr int LPG = GROUP / 8;                    // lanes per group (8 values each), consecutive in a warp
    float part = 0.f, mx = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        part += v[j];
        mx = fmaxf(mx, fabsf(v[j]));
    }
#pragma unroll
    for (int o = 1; o < LPG; o <<= 1) {
        part += __shfl_xor_sync(0xffffffffu, part, o);
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    }
    if (i < n8) {
        const float inv = mx > 0.f ? 16383.f / mx : 0.f;
        int h[8], l[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int q = max(-16383, min(16383, __float2int_rn(v[j] * inv)));
            h[j] = (q + 128) >> 8;
            l[j] = q - 256 * h[j];
        }
        *(uint2*)&xh[2 * i] = make_uint2(pack_s8(h[0], h[2], h[4], h[6]), pack_s8(h[1], h[3], h[5], h[7]));
        *(uint2*)&xl[2 * i] = make_uint2(pack_s8(l[0], l[2], l[4], l[6]), pack_s8(l[1], l[3], l[5], l[7]));
        if (i % LPG == 0) {
            sig[i / LPG] = mx / 16383.f;
            sx[i / LPG] = part;
        }
    }
}

// The copies of unit `unit` (slot `slot`) into stage buffer `stage`. PADB = 0: as fmoe_qmv4_bulk (thread 0, one copy
// of the codes); PADB > 0 (session 10): warp 0, one copy a row into rows PADB bytes apart beyond the row's codes, so
// that the 8 rows g of an mma fragment do not all sit on the same 16 banks (rows K / 2 bytes apart, a multiple of
// 128: a 2-way bank conflict on every 16-byte code load).
template <int GROUP, int ST, int PADB>
__device__ __forceinline__ void stage_issue(const QmvArgs& a, unsigned char* stage, u32 bar, int unit, i64 slot,
                                            int per_row, int sr, int lane) {
    if (PADB == 0) {
        if (lane == 0) bulk_issue<GROUP, ST>(a, stage, bar, unit, slot, per_row, sr);
        return;
    }
    const BulkPlan p = bulk_plan(unit, per_row, sr);
    const int k = a.n_in, groups = k / GROUP, es = ST ? 2 : 4;
    const u32 row_bytes = (u32)k / 2, rs = row_bytes + PADB, scale_bytes = (u32)sr * groups * es;
    if (lane == 0) bar_expect(bar, (u32)sr * row_bytes + 2 * scale_bytes);
    const u32 dst = smem_addr(stage);
    const unsigned char* src = (const unsigned char*)(a.w + slot * a.w_slot_stride + (i64)p.n0 * (k / 8));
    for (int row = lane; row < sr; row += 32) bulk_copy(dst + row * rs, src + (i64)row * row_bytes, row_bytes, bar);
    if (lane == 0) {
        const i64 si = (slot * a.s_slot_stride + (i64)p.n0 * groups) * es;
        bulk_copy(dst + sr * rs, (const char*)a.s + si, scale_bytes, bar);
        bulk_copy(dst + sr * rs + scale_bytes, (const char*)a.b + si, scale_bytes, bar);
    }
}

// warp 0: the slot of unit u (lane 0's SlotAhead, broadcast) and its copies
template <int GROUP, int ST, int PADB>
__device__ __forceinline__ void warp_issue(const QmvArgs& a, unsigned char* stage, u32 bar, int u, int per_row,
                                           int sr, int u1, int lane, SlotAhead& ahead) {
    i64 slot = 0;
    if (lane == 0) slot = ahead.take(a, u, per_row, u1);
    if (PADB) slot = __shfl_sync(0xffffffffu, slot, 0);
    stage_issue<GROUP, ST, PADB>(a, stage, bar, u, slot, per_row, sr, lane);
}

template <int GROUP, int XT, int ST, int KW, int TPW, int PADB>
__global__ void __launch_bounds__(512, 1) fmoe_qmv4_bulk8(const QmvArgs a, int rows, int stages, int ablate,
                                                          int early_x, unsigned long long* trace) {
    // ablate (session 10's timing diagnosis): 0 the kernel, 1 products only (no copies, no waits: garbage y),
    // 2 copies only (no products). early_x: 1 x's loads issued before the first copies, 2 x staged before them. trace: per block 64 u64
    // (globaltimer at entry, clock64 at entry, then clock64 offsets: x staged, and per unit (at most 19): stage
    // landed, products done, unit finished; [61] units, [62] clock64 offset at end, [63] globaltimer at end)
    extern __shared__ __align__(128) unsigned char bsm[];
    __shared__ __align__(8) unsigned long long bars[32];
    __shared__ float red[2][16][TPW][16];
    unsigned long long* tr = trace ? trace + 64 * blockIdx.x : nullptr;
    long long c0 = 0;
    if (tr && threadIdx.x == 0) {
        unsigned long long gt;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(gt));
        c0 = clock64();
        tr[0] = gt;
        tr[1] = (unsigned long long)c0;
    }
    const int k = a.n_in, wpt = k / KW, sr = 16 * (16 / wpt) * TPW, groups = k / GROUP;
    const int per_row = a.n_out / sr;
    const int es = ST ? 2 : 4;
    const u32 rs = (u32)k / 2 + PADB;                              // bytes from one row's codes to the next's
    const u32 stage_bytes = (u32)sr * rs + 2u * sr * groups * es;
    const int units = rows * per_row;
    const int u0 = (int)((long long)blockIdx.x * units / gridDim.x);
    const int u1 = (int)((long long)(blockIdx.x + 1) * units / gridDim.x);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int n8 = k / 8, n8_pad = (n8 + 31) & ~31;
    u32* xs = (u32*)(bsm + (size_t)stages * stage_bytes);
    SlotAhead ahead{-1, -1, 0, 0};
    const int u1_issue = ablate == 1 ? 0 : u1;
    int r = u0 / per_row, n0 = (u0 % per_row) * sr;
    float xv[8];
    if (threadIdx.x == 0) {
        for (int s = 0; s < stages; ++s)
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(smem_addr(&bars[s])) : "memory");
        asm volatile("fence.mbarrier_init.release.cluster;\n\tfence.proxy.async.shared::cta;" ::: "memory");
    }
    if (threadIdx.x == 0 && u0 < u1_issue) (void)ahead.take(a, u0, per_row, u1);   // the first slot's load, now
    __syncwarp();
    if (early_x && threadIdx.x < n8_pad) int8_load<XT>(a.x, (i64)r * a.x_stride, threadIdx.x, n8, xv);
    if (early_x == 2) {                                          // x staged before any copy is issued
        if (threadIdx.x < n8_pad) int8_store<GROUP>(xs, k, threadIdx.x, n8, xv);
        __syncthreads();
    }
    if (warp == 0)
        for (int s = 0; s < stages && u0 + s < u1_issue; ++s)
            warp_issue<GROUP, ST, PADB>(a, bsm + (size_t)s * stage_bytes, smem_addr(&bars[s]), u0 + s, per_row, sr,
                                        u1, lane, ahead);
    prior_grid_wait();
    next_grid_may_start();
    if (early_x != 2) {
        if (!early_x && threadIdx.x < n8_pad) int8_load<XT>(a.x, (i64)r * a.x_stride, threadIdx.x, n8, xv);
        if (threadIdx.x < n8_pad) int8_store<GROUP>(xs, k, threadIdx.x, n8, xv);
        __syncthreads();                                         // x staged, the barriers' init visible
    }
    if (tr && threadIdx.x == 0) tr[2] = clock64() - c0;
    const int tw = (warp / wpt) * TPW, kw0 = (warp % wpt) * KW;
    const u32* xsrc = (g & 1) ? xs + k / 4 : xs;                // this lane's B column: digit l (odd g) or h
    const float* sig = (const float*)(xs + k / 2);
    const float* sx = sig + groups;
    int staged_r = r, s = 0;
    u32 parity = 0;
    for (int u = u0; u < u1; ++u) {
        if (r != staged_r && a.x_stride != 0) {                  // (block-uniform) every warp is past the previous
            if (threadIdx.x < n8_pad) {                          // stage's barrier
                int8_load<XT>(a.x, (i64)r * a.x_stride, threadIdx.x, n8, xv);
                int8_store<GROUP>(xs, k, threadIdx.x, n8, xv);
            }
            staged_r = r;
            __syncthreads();
        }
        unsigned char* stage = bsm + (size_t)s * stage_bytes;
        if (ablate != 1) bar_wait(smem_addr(&bars[s]), parity);
        const int ti = u - u0;
        if (tr && threadIdx.x == 0 && ti < 19) tr[3 + 3 * ti] = clock64() - c0;
        const unsigned char* codes = stage + (size_t)(tw * 16 + g) * rs + 16 * c;
        const unsigned char* scl = stage + (size_t)sr * rs;
        const unsigned char* bia = scl + (size_t)sr * groups * es;
        float acc0[TPW], acc1[TPW];
        int d[TPW][4];
#pragma unroll
        for (int t = 0; t < TPW; ++t) {
            acc0[t] = acc1[t] = 0.f;
#pragma unroll
            for (int e = 0; e < 4; ++e) d[t][e] = 0;
        }
        int acc_start = kw0;
#pragma unroll
        for (int j = 0; j < KW / 128; ++j) {
            if (ablate == 2) break;
            const int kb = kw0 + 128 * j, p0 = kb + 32 * c;
            uint4 wa[TPW], wb[TPW];
#pragma unroll
            for (int t = 0; t < TPW; ++t) {
                wa[t] = *(const uint4*)(codes + (size_t)(16 * t) * rs + kb / 2);
                wb[t] = *(const uint4*)(codes + (size_t)(16 * t + 8) * rs + kb / 2);
            }
            const bool mine = (g >> 1) == ((p0 / GROUP) & 3);
#pragma unroll
            for (int jw = 0; jw < 4; ++jw) {
                uint2 xb = make_uint2(0, 0);
                if (mine) xb = *(const uint2*)&xsrc[p0 / 4 + 2 * jw];
#pragma unroll
                for (int t = 0; t < TPW; ++t) {
                    const u32 w0 = word_of(wa[t], jw), w1 = word_of(wb[t], jw);
                    mma_s8(d[t], w0 & 0x0F0F0F0Fu, w1 & 0x0F0F0F0Fu, (w0 >> 4) & 0x0F0F0F0Fu, (w1 >> 4) & 0x0F0F0F0Fu,
                           xb.x, xb.y);
                }
            }
            if ((kb + 128) % (4 * GROUP) == 0 || j == KW / 128 - 1) {
                const int gc = (kb / (4 * GROUP)) * 4 + c;
                if (gc * GROUP >= acc_start && gc * GROUP < kb + 128) {
                    const float xsum = sx[gc], sg = sig[gc];
#pragma unroll
                    for (int t = 0; t < TPW; ++t) {
                        const int i0 = (tw * 16 + 16 * t + g) * groups + gc, i1 = i0 + 8 * groups;
                        acc0[t] += smem_f<ST>(scl, i0) * sg * (float)(256 * d[t][0] + d[t][1])
                                   + smem_f<ST>(bia, i0) * xsum;
                        acc1[t] += smem_f<ST>(scl, i1) * sg * (float)(256 * d[t][2] + d[t][3])
                                   + smem_f<ST>(bia, i1) * xsum;
                    }
                }
#pragma unroll
                for (int t = 0; t < TPW; ++t)
#pragma unroll
                    for (int e = 0; e < 4; ++e) d[t][e] = 0;
                acc_start = kb + 128;
            }
        }
        if (tr && threadIdx.x == 0 && ti < 19) tr[4 + 3 * ti] = clock64() - c0;
        // the end of the unit: bulk_finish with warp 0 issuing the refill
        const int h = u & 1;
#pragma unroll
        for (int t = 0; t < TPW; ++t) {
            acc0[t] += __shfl_xor_sync(0xffffffffu, acc0[t], 1);
            acc0[t] += __shfl_xor_sync(0xffffffffu, acc0[t], 2);
            acc1[t] += __shfl_xor_sync(0xffffffffu, acc1[t], 1);
            acc1[t] += __shfl_xor_sync(0xffffffffu, acc1[t], 2);
            if (c == 0) {
                red[h][warp][t][g] = acc0[t];
                red[h][warp][t][g + 8] = acc1[t];
            }
        }
        __syncthreads();
        if (warp == 0 && u + stages < u1_issue)
            warp_issue<GROUP, ST, PADB>(a, stage, smem_addr(&bars[s]), u + stages, per_row, sr, u1, lane, ahead);
        if (threadIdx.x < sr) {
            const int tile = threadIdx.x >> 4, row = threadIdx.x & 15, w0 = (tile / TPW) * wpt;
            float v = 0.f;
            for (int q = 0; q < wpt; ++q) v += red[h][w0 + q][tile % TPW][row];
            a.y[(i64)r * a.n_out + n0 + threadIdx.x] = v;
        }
        if (tr && threadIdx.x == 0 && ti < 19) tr[5 + 3 * ti] = clock64() - c0;
        bulk_next(s, parity, r, n0, stages, sr, a.n_out);
    }
    if (tr && threadIdx.x == 0) {
        unsigned long long gt;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(gt));
        tr[63] = gt;
        tr[62] = (unsigned long long)(clock64() - c0);
        tr[61] = (unsigned long long)(u1 - u0);
    }
}
