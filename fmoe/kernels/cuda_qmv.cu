// Grouped quantized mat-vec on NVIDIA GPUs, reading mlx's affine packed layout directly (fmoe/kernels/cuda_qmv.py
// compiles this file at run time with NVRTC and launches it through the driver API).
//
//   y[r, n] = sum_k (scale[g] * q[n, k] + bias[g]) * x[r, k]          MODE 0: one matrix kind, float32 out
//   h[r, n] = silu(gate_r[n] . x[r]) * (up_r[n] . x[r])               MODE 1: gate and up of the same slot, one pass
//
// where the matrix of row r is the expert slot slots[r] of a table. Codes of BITS = 2/4/8 bits are a little-endian bit
// stream in uint32 words (value j at bit j * BITS), one scale and one bias (bf16 or float32) per GROUP values.
//
// Work: each warp owns NB batches of RPW output rows of one table row r; each lane reads whole 16-byte chunks of a row
// (VPC values), all of a batch's loads issued before any arithmetic and the next batch's before the current one is
// computed, so a warp keeps up to 2 * RPW * IT * 16 bytes per lane in flight. While
// they fly, the block stages x[r] in shared memory as float32, each value pre-multiplied by 2^-p(j) (below) and laid
// out so that lanes on consecutive chunks read it without bank conflicts, and the sums of x over each run of SUB
// values that share a scale within a chunk, so that a group's contribution is scale * (q . x) + bias * sum(x).
//
// Codes become floats without an int->float conversion: a code q of BITS bits at bit p of a word (p + BITS <= 23),
// masked in place, IS the subnormal float q * 2^(p - 149), exactly (FP32 FMAs keep subnormals: NVRTC's default, no
// flush to zero). The activation it meets was staged as x * 2^(100 - p), so every product is q * x * 2^-49, a
// normal float for any |q x| > 1e-23 and no overflow for |x| < 2^27; the sum of a run is multiplied back by 2^49.
// Codes above bit 23 are first shifted down by 12. Per value: one AND and one FMA.
typedef unsigned int u32;
typedef unsigned short u16;
typedef long long i64;

struct QmvArgs {
    const void* x;          // [R or 1, x_stride] float32 or bf16
    i64 x_stride;           // elements between rows of x (0: one x shared by every row)
    const u32* w;           // slot s, output n: w + s * w_slot_stride + n * (n_in * BITS / 32)
    const void* s;          // scales, slot s: s + s * s_slot_stride + n * (n_in / GROUP)
    const void* b;          // biases, the same layout as the scales
    const u32* w2;          // MODE 1: the up projection's words, scales, biases (the same strides as gate's)
    const void* s2;
    const void* b2;
    i64 w_slot_stride;      // in words
    i64 s_slot_stride;      // in elements
    const int* slots;       // [R]
    float* y;               // [R, n_out]
    int n_out;
    int n_in;
};

template <int T> __device__ __forceinline__ float load_f(const void* p, i64 i);
template <> __device__ __forceinline__ float load_f<0>(const void* p, i64 i) { return __ldg((const float*)p + i); }
template <> __device__ __forceinline__ float load_f<1>(const void* p, i64 i) {
    return __uint_as_float(((u32)__ldg((const u16*)p + i)) << 16);
}

// Programmatic dependent launch (sm_90+; no-ops before, and when the launch did not ask for it): a kernel launched
// with it may start while the previous kernel of the stream drains. The FMA and mma kernels (the launcher's
// OVERLAP_PRIOR, off by default) read the slot table, weights, scales and biases before prior_grid_wait(), and x, y
// only after it: safe only when the previous kernel wrote none of those (a grid's blocks may all have exited before
// its writes are visible to a dependent that has not waited). The bulk-copy kernel (launched so by default: the
// launcher's BULK_OVERLAP) reads nothing before the wait unless its `early` argument says the caller vouches for the
// slot table and the weights (the launcher's slots_ready).
__device__ __forceinline__ void prior_grid_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void next_grid_may_start() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ uint4 load_stream(const u32* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

__device__ __forceinline__ u32 word_of(const uint4& v, int k) {
    return k == 0 ? v.x : k == 1 ? v.y : k == 2 ? v.z : v.w;
}

// the 8 bf16 values of a 16-byte load as floats, in order
__device__ __forceinline__ void bf16x8(const uint4& raw, float (&v)[8]) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const u32 wd = word_of(raw, j);
        v[2 * j] = __uint_as_float(wd << 16);
        v[2 * j + 1] = __uint_as_float(wd & 0xFFFF0000u);
    }
}

// bit position of value e of a word after the optional shift by 12 (codes that would reach bit 23 are shifted)
template <int BITS> __device__ __host__ constexpr int low_value(int e) { return (e + 1) * BITS <= 23; }
template <int BITS> __device__ __host__ constexpr int code_pos(int e) { return low_value<BITS>(e) ? e * BITS : e * BITS - 12; }

template <int BITS, int GROUP, int RPW, int IT, int NM> struct Batch {
    static constexpr int EPW = 32 / BITS, VPC = 4 * EPW, SUB = GROUP < VPC ? GROUP : VPC, NSUB = VPC / SUB;
    uint4 q[NM][RPW][IT];
    float sc[NM][RPW][IT][NSUB], bi[NM][RPW][IT][NSUB];
};

// matrix m of a pass (0: w / s / b; 1: the up projection's w2 / s2 / b2): its words in slot `slot`, scales, biases
__device__ __forceinline__ const u32* mat_words(const QmvArgs& a, int m, i64 slot) {
    return (m == 0 ? a.w : a.w2) + slot * a.w_slot_stride;
}
__device__ __forceinline__ const void* mat_scales(const QmvArgs& a, int m) { return m == 0 ? a.s : a.s2; }
__device__ __forceinline__ const void* mat_biases(const QmvArgs& a, int m) { return m == 0 ? a.b : a.b2; }

// issue every load of RPW rows from n0 (weights, scales, biases): nothing waits on them until they are used
template <int BITS, int GROUP, int ST, int RPW, int IT, int NM>
__device__ __forceinline__ void load_batch(Batch<BITS, GROUP, RPW, IT, NM>& bt, const QmvArgs& a, i64 slot, int n0,
                                           int lane, int nchunks, int groups) {
    typedef Batch<BITS, GROUP, RPW, IT, NM> B;
#pragma unroll
    for (int m = 0; m < NM; ++m) {
        const u32* base = mat_words(a, m, slot);
        const void* sp = mat_scales(a, m);
        const void* bp = mat_biases(a, m);
#pragma unroll
        for (int rr = 0; rr < RPW; ++rr) {
            const int n = n0 + rr;
            const int ns = n < a.n_out ? n : a.n_out - 1;
#pragma unroll
            for (int it = 0; it < IT; ++it) {
                const int c = lane + 32 * it;
                if (n < a.n_out && c < nchunks)
                    bt.q[m][rr][it] = load_stream(base + ((i64)n * nchunks + c) * 4);
                else
                    bt.q[m][rr][it] = make_uint4(0, 0, 0, 0);
                const int cs = c < nchunks ? c : nchunks - 1;
#pragma unroll
                for (int t = 0; t < B::NSUB; ++t) {
                    const i64 si = slot * a.s_slot_stride + (i64)ns * groups + (cs * B::VPC + t * B::SUB) / GROUP;
                    bt.sc[m][rr][it][t] = load_f<ST>(sp, si);
                    bt.bi[m][rr][it][t] = load_f<ST>(bp, si);
                }
            }
        }
    }
}

// the dot products of a loaded batch with the staged x, reduced over the warp, written by lanes 0..RPW-1
template <int BITS, int GROUP, int RPW, int IT, int NM, int MODE>
__device__ __forceinline__ void run_batch(const Batch<BITS, GROUP, RPW, IT, NM>& bt, const QmvArgs& a, const float* xs,
                                          const float* xsum, int r, int n0, int lane, int nchunks, float unscale) {
    typedef Batch<BITS, GROUP, RPW, IT, NM> B;
    constexpr int EPW = B::EPW, SUB = B::SUB, NSUB = B::NSUB, WPS = SUB / EPW;
    constexpr u32 MASK = (1u << BITS) - 1;
    float acc[NM][RPW] = {};
#pragma unroll
    for (int it = 0; it < IT; ++it) {
        const int c = lane + 32 * it;
        if (c < nchunks) {
#pragma unroll
            for (int t = 0; t < NSUB; ++t) {
                float d[NM][RPW] = {};
#pragma unroll
                for (int k = 0; k < WPS; ++k) {
                    const int kw = t * WPS + k;                         // word of the chunk
                    u32 lo[NM][RPW], hi[NM][RPW];
#pragma unroll
                    for (int m = 0; m < NM; ++m)
#pragma unroll
                        for (int rr = 0; rr < RPW; ++rr) {
                            lo[m][rr] = word_of(bt.q[m][rr][it], kw);
                            hi[m][rr] = lo[m][rr] >> 12;
                        }
                    float xw[EPW];                                      // this word's activations, as float4 reads
#pragma unroll
                    for (int e4 = 0; e4 < EPW; e4 += 4) {
                        const int jj = t * SUB + k * EPW + e4;          // value of the chunk
                        const float4 f4 = *(const float4*)&xs[((jj >> 2) * nchunks + c) * 4];
                        xw[e4] = f4.x; xw[e4 + 1] = f4.y; xw[e4 + 2] = f4.z; xw[e4 + 3] = f4.w;
                    }
#pragma unroll
                    for (int e = 0; e < EPW; ++e) {
#pragma unroll
                        for (int m = 0; m < NM; ++m)
#pragma unroll
                            for (int rr = 0; rr < RPW; ++rr) {
                                const u32 src = low_value<BITS>(e) ? lo[m][rr] : hi[m][rr];
                                const float f = __uint_as_float(src & (MASK << code_pos<BITS>(e)));   // q 2^(p-149)
                                d[m][rr] = fmaf(f, xw[e], d[m][rr]);
                            }
                    }
                }
                const float xsub = xsum[c * NSUB + t];
#pragma unroll
                for (int m = 0; m < NM; ++m)
#pragma unroll
                    for (int rr = 0; rr < RPW; ++rr)
                        acc[m][rr] += bt.sc[m][rr][it][t] * (d[m][rr] * unscale) + bt.bi[m][rr][it][t] * xsub;
            }
        }
    }
#pragma unroll
    for (int m = 0; m < NM; ++m)
#pragma unroll
        for (int rr = 0; rr < RPW; ++rr)
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) acc[m][rr] += __shfl_xor_sync(0xffffffffu, acc[m][rr], o);
#pragma unroll
    for (int rr = 0; rr < RPW; ++rr) {                  // lane rr writes row rr (static indices: registers only)
        const int n = n0 + rr;
        if (lane == rr && n < a.n_out) {
            float v = acc[0][rr];
            if (MODE == 1) v = v / (1.f + expf(-v)) * acc[NM - 1][rr];
            a.y[(i64)r * a.n_out + n] = v;
        }
    }
}

// Each warp runs NB batches of RPW rows, loading batch b + 1 while it computes batch b (two register buffers).
template <int BITS, int GROUP, int XT, int ST, int RPW, int IT, int MODE, int NB>
__global__ void __launch_bounds__(256) fmoe_qmv(const QmvArgs a) {
    constexpr int NM = MODE == 1 ? 2 : 1;               // matrices per slot in this pass
    typedef Batch<BITS, GROUP, RPW, IT, NM> B;
    constexpr int EPW = B::EPW, VPC = B::VPC, SUB = B::SUB;
    constexpr int XSHIFT = 100;                         // x is staged as x * 2^(XSHIFT - p)
    const float unscale = __int_as_float((127 + 149 - XSHIFT) << 23);   // products are q x 2^(XSHIFT - 149)
    extern __shared__ float smem[];
    const int n_in = a.n_in;
    float* xs = smem;                                   // [n_in] x * 2^(XSHIFT - code_pos), conflict-free layout
    float* xsum = smem + n_in;                          // [n_in / SUB] plain sums
    const int r = blockIdx.y;
    const i64 xoff = (i64)r * a.x_stride;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n0 = (blockIdx.x * (blockDim.x >> 5) + warp) * RPW * NB;
    const i64 slot = a.slots[r];
    const int nchunks = n_in / VPC;
    const int groups = n_in / GROUP;

    B buf[2];
    load_batch<BITS, GROUP, ST>(buf[0], a, slot, n0, lane, nchunks, groups);
    prior_grid_wait();
    next_grid_may_start();

    // stage x while those loads are in flight: 16-byte loads, each value scaled by 2^(XSHIFT - code_pos) and stored
    // where the lane that reads it finds it without bank conflicts (value j of chunk c at ((j / 4) * nchunks + c) * 4
    // + j % 4: the 32 lanes of a warp, on consecutive chunks, read 512 consecutive bytes as float4); each run of SUB
    // values summed across the SUB / VEC lanes that loaded it
    constexpr int VEC = XT ? 8 : 4;                     // values per 16-byte load
    constexpr int LPS = SUB / VEC;                      // lanes per SUB run
    const int nvec = n_in / VEC;
    const int nvec_pad = (nvec + 31) & ~31;             // whole warps, for the shuffles
    for (int i = threadIdx.x; i < nvec_pad; i += blockDim.x) {
        float part = 0.f;
        if (i < nvec) {
            const uint4 raw = *(const uint4*)((const char*)a.x + (xoff + (i64)i * VEC) * (XT ? 2 : 4));
            float v[VEC];
            if constexpr (XT != 0) {
                bf16x8(raw, v);
            } else {
#pragma unroll
                for (int j = 0; j < 4; ++j) v[j] = __uint_as_float(word_of(raw, j));
            }
#pragma unroll
            for (int j = 0; j < VEC; ++j) {
                const int idx = i * VEC + j, c = idx / VPC, jj = idx % VPC, e = idx % EPW;
                const int p = (e + 1) * BITS <= 23 ? e * BITS : e * BITS - 12;
                part += v[j];
                xs[((jj >> 2) * nchunks + c) * 4 + (jj & 3)] = v[j] * __int_as_float((127 + XSHIFT - p) << 23);
            }
        }
#pragma unroll
        for (int o = 1; o < LPS; o <<= 1) part += __shfl_xor_sync(0xffffffffu, part, o);
        if (i < nvec && i % LPS == 0) xsum[i / LPS] = part;
    }
    __syncthreads();

#pragma unroll
    for (int b = 0; b < NB; ++b) {
        if (b + 1 < NB)
            load_batch<BITS, GROUP, ST>(buf[(b + 1) & 1], a, slot, n0 + (b + 1) * RPW, lane, nchunks, groups);
        run_batch<BITS, GROUP, RPW, IT, NM, MODE>(buf[b & 1], a, xs, xsum, r, n0 + b * RPW, lane, nchunks, unscale);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 4-bit on tensor cores: fmoe_qmv4_mma. The FMA kernel above spends ~2.2 issued instructions per 4-bit value (one
// AND + one FFMA + its share of the rest); this one ~1.1, by letting mma.sync do the multiply-adds on bf16 pairs.
// Measured on the H200 (bench/results/cuda_kernels.md): as fast as the FMA kernel at decode sizes (10 rows: both
// bound by something other than instructions), faster with many rows (64 rows: 0.60-0.71 of HBM against 0.57-0.61).
//
//   codes -> bf16: ((w >> 4s) & 0x000F000F) | 0x43004300 is the bf16 pair (128 + q_s, 128 + q_{s+4}) of nibbles s and
//   s + 4 of a word, exactly (bf16 holds 128..143). So each (row, group) sum is
//       sum_k (s q_k + b) x_k = s * (C - 128 * sum_k x_k) + b * sum_k x_k,   C = sum_k (128 + q_k) x_k  (the mma's).
//   mma m16n8k16 (A row-major 16 x 16 bf16, B 16 x 8 bf16, C/D 16 x 8 float32) with A = 16 output rows x 16 codes and
//   B = the activations, column n = 2 (group % 4) + h holding x_hi (h = 0) or x_lo (h = 1) of that group's codes and
//   zero elsewhere (x = x_hi + x_lo, two bf16: float32 activations keep ~16 mantissa bits; bf16 ones have x_lo = 0).
//   Four consecutive groups accumulate into the same D without mixing (each in its own column pair), then lane
//   (g, c) holds group 4w + c of rows g and g + 8: one epilogue per four groups, applied by every lane to its own.
//
// An item: 16 output rows (A rows) of one table row r over KS consecutive inputs. Lane (g = lane / 4, c = lane % 4)
// loads, of rows g and g + 8, the quarter c of every group (GROUP / 32 words), and the scales and biases of its own
// groups; all of an item's loads are issued before anything waits on them.
// Mapping of a group's codes to mma k: lane c's words j (0..WPG-1) hold the group's values 16c.. (G = 64); mma jj of
// the group (jj = 2 j + h) takes nibble pairs 2h and 2h + 1 of word j, so its k = 2c, 2c + 1, 2c + 8, 2c + 9 are the
// values P, P + 4, P + 1, P + 5 with P = c G / 4 + 8 j + 2 h. x is staged in exactly that order: the 8 values 8m..8m+7
// become the four words (x0,x4) (x1,x5) (x2,x6) (x3,x7) at word 4m, so that lane c's B registers of a group are
// GROUP / 8 consecutive words (a zero block for lanes whose column is not this group's).
// Shared memory per staged x row: x_hi pairs [n_in / 2] words, x_lo pairs [n_in / 2] (float32 x only), then the
// sums of x_hi + x_lo over each group [n_in / GROUP] floats.
template <int WPG> __device__ __forceinline__ void load_words(u32* d, const u32* p) {
    if constexpr (WPG == 1) {
        asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(d[0]) : "l"(p));
    } else if constexpr (WPG == 2) {
        asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];" : "=r"(d[0]), "=r"(d[1]) : "l"(p));
    } else {
        asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                     : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3]) : "l"(p));
    }
}

// one LOP3 with both constants in registers (written in C, the AND and the OR each take an immediate: two LOP3s)
__device__ __forceinline__ u32 nibble_pair(u32 w, int s) {
    u32 d;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(w >> (4 * s)), "r"(0x000F000Fu), "r"(0x43004300u));
    return d;                                     // 0xEA: (a & b) | c
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ u32 bf16_bits(float f) {           // round to nearest even (finite inputs)
    const u32 u = __float_as_uint(f);
    return (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
}

// 32-bit words of one staged x row
template <int GROUP, int XT> __device__ __host__ constexpr int staged_words(int n_in) {
    return (XT ? n_in / 2 : n_in) + n_in / GROUP;
}

// stage the n values of x at x + xoff at xs, by threads tid = 0..nth-1 (whole warps: a block, or one warp); the
// caller synchronizes them
template <int GROUP, int XT>
__device__ __forceinline__ void mma_stage(u32* xs, const void* x, i64 xoff, int n, int tid, int nth) {
    u32* xh = xs;
    u32* xl = xs + n / 2;
    float* sx = (float*)(xs + (XT ? n / 2 : n));
    constexpr int LPG = GROUP / 8;                    // lanes per group (8 values each)
    const int n8 = n / 8, n8_pad = (n8 + 31) & ~31;
    for (int i = tid; i < n8_pad; i += nth) {
        float part = 0.f;
        if (i < n8) {
            u32 hi[8], lo[8];
            if (XT) {
                const uint4 raw = *(const uint4*)((const u16*)x + xoff + (i64)i * 8);
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const u32 wd = word_of(raw, j);
                    hi[2 * j] = wd & 0xFFFFu;
                    hi[2 * j + 1] = wd >> 16;
                    lo[2 * j] = lo[2 * j + 1] = 0;
                    part += __uint_as_float(wd << 16) + __uint_as_float(wd & 0xFFFF0000u);
                }
            } else {
                const float* xp = (const float*)x + xoff + (i64)i * 8;
                const float4 f0 = *(const float4*)xp, f1 = *(const float4*)(xp + 4);
                const float v[8] = {f0.x, f0.y, f0.z, f0.w, f1.x, f1.y, f1.z, f1.w};
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    hi[j] = bf16_bits(v[j]);
                    lo[j] = bf16_bits(v[j] - __uint_as_float(hi[j] << 16));
                    part += __uint_as_float(hi[j] << 16) + __uint_as_float(lo[j] << 16);
                }
            }
            *(uint4*)&xh[4 * i] = make_uint4(hi[0] | (hi[4] << 16), hi[1] | (hi[5] << 16), hi[2] | (hi[6] << 16),
                                             hi[3] | (hi[7] << 16));
            if (!XT)
                *(uint4*)&xl[4 * i] = make_uint4(lo[0] | (lo[4] << 16), lo[1] | (lo[5] << 16),
                                                 lo[2] | (lo[6] << 16), lo[3] | (lo[7] << 16));
        }
#pragma unroll
        for (int o = 1; o < LPG; o <<= 1) part += __shfl_xor_sync(0xffffffffu, part, o);
        if (i < n8 && i % LPG == 0) sx[i / LPG] = part;
    }
}

template <int GROUP, int NM, int KS> struct MmaItem {
    static constexpr int WPG = GROUP / 32;            // words of a row per lane per group
    static constexpr int NG = KS / GROUP;             // groups per item
    static constexpr int NWIN = (NG + 3) / 4;         // four-group windows
    static constexpr int NW = KS / 32;                // words of a row per lane
    u32 q[NM][2][NW];
    float sc[NM][2][NWIN], bi[NM][2][NWIN];
};

// issue the loads of rows n0.. of slot `slot` over inputs k0..k0 + KS - 1
template <int GROUP, int ST, int NM, int KS>
__device__ __forceinline__ void mma_load(MmaItem<GROUP, NM, KS>& it, const QmvArgs& a, i64 slot, int n0, int k0,
                                         int g, int c) {
    typedef MmaItem<GROUP, NM, KS> I;
    const int row_words = a.n_in / 8, groups = a.n_in / GROUP, g0 = k0 / GROUP;
#pragma unroll
    for (int m = 0; m < NM; ++m) {
        const u32* base = mat_words(a, m, slot);
        const void* sp = mat_scales(a, m);
        const void* bp = mat_biases(a, m);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int n = min(n0 + g + 8 * h, a.n_out - 1);
            const u32* rowp = base + (i64)n * row_words + k0 / 8 + c * I::WPG;
#pragma unroll
            for (int gi = 0; gi < I::NG; ++gi)
                load_words<I::WPG>(&it.q[m][h][gi * I::WPG], rowp + gi * (GROUP / 8));
#pragma unroll
            for (int w = 0; w < I::NWIN; ++w) {
                const i64 si = slot * a.s_slot_stride + (i64)n * groups + g0 + min(4 * w + c, I::NG - 1);
                it.sc[m][h][w] = load_f<ST>(sp, si);
                it.bi[m][h][w] = load_f<ST>(bp, si);
            }
        }
    }
}

// the item's sums for rows g and g + 8 (acc[m][0], acc[m][1]), complete in lanes c == 0; xs: the staged x row at the
// item's first input (x_hi pairs; x_lo pairs n_in / 2 words further; sxg: the sums of the item's first group)
template <int GROUP, int XT, int NM, int KS>
__device__ __forceinline__ void mma_dot(const MmaItem<GROUP, NM, KS>& it, const u32* xh, const u32* xl,
                                        const float* sxg, const u32* zero, int g, int c, float (&acc)[NM][2]) {
    typedef MmaItem<GROUP, NM, KS> I;
    const u32* bsrc = (g & 1) ? (XT ? nullptr : xl) : xh;   // this lane's B column: hi / lo of group g / 2 (mod 4)
#pragma unroll
    for (int m = 0; m < NM; ++m) acc[m][0] = acc[m][1] = 0.f;
#pragma unroll
    for (int w = 0; w < I::NWIN; ++w) {
        float d[NM][4] = {};
#pragma unroll
        for (int gq = 0; gq < 4; ++gq) {
            const int gi = 4 * w + gq;
            if (gi >= I::NG) break;
            const bool mine = (g >> 1) == gq && bsrc != nullptr;
            const u32* bp = mine ? bsrc + gi * (GROUP / 2) + c * (GROUP / 8) : zero;
            u32 bw[GROUP / 8];
#pragma unroll
            for (int v = 0; v < GROUP / 8; v += 4) *(uint4*)&bw[v] = *(const uint4*)&bp[v];
#pragma unroll
            for (int j = 0; j < I::WPG; ++j)
#pragma unroll
                for (int h = 0; h < 2; ++h)
#pragma unroll
                    for (int m = 0; m < NM; ++m) {
                        const u32 w0 = it.q[m][0][gi * I::WPG + j], w1 = it.q[m][1][gi * I::WPG + j];
                        mma_bf16(d[m], nibble_pair(w0, 2 * h), nibble_pair(w1, 2 * h), nibble_pair(w0, 2 * h + 1),
                                 nibble_pair(w1, 2 * h + 1), bw[4 * j + 2 * h], bw[4 * j + 2 * h + 1]);
                    }
        }
        if (4 * w + c < I::NG) {
            const float xsum = sxg[4 * w + c];
#pragma unroll
            for (int m = 0; m < NM; ++m) {
                acc[m][0] += it.sc[m][0][w] * (d[m][0] + d[m][1] - 128.f * xsum) + it.bi[m][0][w] * xsum;
                acc[m][1] += it.sc[m][1][w] * (d[m][2] + d[m][3] - 128.f * xsum) + it.bi[m][1][w] * xsum;
            }
        }
    }
#pragma unroll
    for (int m = 0; m < NM; ++m)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            acc[m][h] += __shfl_xor_sync(0xffffffffu, acc[m][h], 1);
            acc[m][h] += __shfl_xor_sync(0xffffffffu, acc[m][h], 2);
        }
}

template <int NM> __device__ __forceinline__ float mma_out(const float (&v)[NM]) {
    return NM == 2 ? v[0] / (1.f + expf(-v[0])) * v[NM - 1] : v[0];
}

// One item per warp: a tile of 16 rows split over WPT = n_in / KS warps (added up through shared memory), a block of
// BW = max(8, WPT) warps (BW / WPT tiles). WS = 0: the block stages its row of x while the loads fly, then one
// barrier; WS = 1: each warp stages its own KS inputs (no barrier before the products; 8 / WPT times the staging
// work when a block holds several tiles). MINB: blocks an SM (launch bounds: fewer registers).
template <int GROUP, int XT, int ST, int MODE, int WPT, int KS, int WS, int MINB>
__global__ void __launch_bounds__((WPT > 8 ? WPT : 8) * 32, MINB) fmoe_qmv4_mma(const QmvArgs a) {
    constexpr int NM = MODE == 1 ? 2 : 1, BW = WPT > 8 ? WPT : 8, TPB = BW / WPT;
    extern __shared__ __align__(16) u32 sm[];
    __shared__ __align__(16) u32 zero[GROUP / 8];
    __shared__ float red[BW][NM][16];
    const int n_in = a.n_in, r = blockIdx.y;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int tile = blockIdx.x * TPB + warp / WPT, k0 = (warp % WPT) * KS;
    MmaItem<GROUP, NM, KS> it;
    mma_load<GROUP, ST>(it, a, a.slots[r], tile * 16, k0, g, c);
    prior_grid_wait();
    next_grid_may_start();
    float acc[NM][2];
    if constexpr (WS != 0) {                          // this warp's region: its x and its own zero block, each
        constexpr int ZOFF = (staged_words<GROUP, XT>(KS) + 3) & ~3;   // 16-byte aligned (uint4 reads and stores)
        u32* xs = sm + warp * (ZOFF + GROUP / 8);
        u32* wzero = xs + ZOFF;
        if (lane < GROUP / 8) wzero[lane] = 0;
        mma_stage<GROUP, XT>(xs, a.x, (i64)r * a.x_stride + k0, KS, lane, 32);
        __syncwarp();
        mma_dot<GROUP, XT>(it, xs, xs + KS / 2, (const float*)(xs + (XT ? KS / 2 : KS)), wzero, g, c, acc);
    } else {
        if (threadIdx.x < GROUP / 8) zero[threadIdx.x] = 0;
        mma_stage<GROUP, XT>(sm, a.x, (i64)r * a.x_stride, n_in, threadIdx.x, blockDim.x);
        __syncthreads();
        const float* sx = (const float*)(sm + (XT ? n_in / 2 : n_in));
        mma_dot<GROUP, XT>(it, sm + k0 / 2, sm + n_in / 2 + k0 / 2, sx + k0 / GROUP, zero, g, c, acc);
    }
    if (c == 0) {
#pragma unroll
        for (int m = 0; m < NM; ++m) {
            red[warp][m][g] = acc[m][0];
            red[warp][m][g + 8] = acc[m][1];
        }
    }
    __syncthreads();
    if (threadIdx.x < TPB * 16) {
        const int t = threadIdx.x / 16, row = threadIdx.x % 16, n = (blockIdx.x * TPB + t) * 16 + row;
        float v[NM];
#pragma unroll
        for (int m = 0; m < NM; ++m) {
            v[m] = 0.f;
#pragma unroll
            for (int k = 0; k < WPT; ++k) v[m] += red[t * WPT + k][m][row];
        }
        if (n < a.n_out) a.y[(i64)r * a.n_out + n] = mma_out<NM>(v);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 4-bit on tensor cores, weights streamed into shared memory by the copy engine: fmoe_qmv4_bulk (sm_90+). The
// kernels above hold an item's codes in registers, so an SM's loads stop while its blocks compute and a decode call
// (20 MB, ~1.6 waves of blocks) alternates between loading and computing: 13 us where a kernel that only reads the
// same bytes takes 6.7 (bench/results/cuda_stream.md, session 9). Here one block an SM (16 warps) owns a contiguous
// run of stages (SR = 16 TPS TPW output rows of one table row, all K inputs: codes, scales, biases, one bulk copy
// each, contiguous in mlx's layout); thread 0 issues the copies of its first `stages` stages (the launcher's
// BULK_STAGES: two were faster than all that fit, which then complete together), warps compute a stage as soon as
// its mbarrier completes, and thread 0 refills the buffer once every warp is done with it.
// Warp w takes TPW tiles of 16 rows from tile (w / WPT) TPW of the stage, over inputs (w % WPT) KW .. + KW; its
// tiles share the activation fragments. Lane (g, c) reads 16 bytes (32 codes) of rows g and g + 8 at byte 16 c of
// each 64-byte run, so a group of 64 spans lanes c = 0, 1 or 2, 3 of an mma; each lane's B column pair is its own
// group's (group % 4), so four groups (a 4 GROUP window) accumulate without mixing. The products are int8 (below).
// Measured on the H200 (bench/results/cuda_stream.md, sessions 10-11): the fastest of the kernels here at every
// shape timed, one matrix and gate+up; at decode a call is bound by its start (the first stage of every block lands
// after ~9 MB of copies) and its last stage's products, which shared-memory bank conflicts slowed (Nsight Compute:
// 5.4-way on average, the 8 rows of an mma fragment read their scales from one bank: SWZ instances below); launches
// overlapping the previous kernel with the slots vouched for hide part of the start.
__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void bulk_copy(u32 dst, const void* src, u32 bytes, u32 bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 :: "r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");
}

// SWZ instances: scales and biases come by 2-D tensor copies (a tensor map a table: [slots][rows][groups] 16-bit
// elements, built by the launcher) with the 128-byte swizzle, so that a stage's rows of exactly 128 bytes (4096
// inputs, groups of 64, bf16) store their 16-byte chunk c at chunk c ^ (row % 8): the 8 rows of an mma fragment then
// read their scales from 8 different banks (linear, the 8 rows share one: 8-way conflicts, Nsight Compute of
// session 11). The launcher aligns the stage buffers to 1024 bytes (the swizzle's period).
struct alignas(64) TensorMap {
    unsigned long long opaque[16];
};
struct BulkMaps {                 // scales, biases; MODE 1: the up matrices' too
    TensorMap s, b, s2, b2;
};

__device__ __forceinline__ void tensor_copy(u32 dst, const TensorMap* map, int c0, int c1, int c2, u32 bar) {
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, "
                 "%4}], [%5];"
                 :: "r"(dst), "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
                 : "memory");
}

__device__ __forceinline__ void bar_expect(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(bar), "r"(bytes) : "memory");
}

__device__ __forceinline__ void bar_wait(u32 bar, u32 parity) {
    u32 done = 0;
    while (!done)
        asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                     : "=r"(done) : "r"(bar), "r"(parity) : "memory");
}

template <int T> __device__ __forceinline__ float smem_f(const unsigned char* p, int i) {
    return T ? __uint_as_float(((u32)((const u16*)p)[i]) << 16) : ((const float*)p)[i];
}

// scale (or bias) of (row, group) of a stage: linear, or (SWZ: bf16, 128-byte rows) swizzled by the tensor copy
template <int ST, int SWZ>
__device__ __forceinline__ float stage_scale(const unsigned char* p, int row, int group, int groups) {
    if (SWZ) {
        const int byte = 2 * group;
        const u16 v = *(const u16*)(p + row * 128 + (((byte >> 4) ^ (row & 7)) << 4) + (byte & 15));
        return __uint_as_float((u32)v << 16);
    }
    return smem_f<ST>(p, row * groups + group);
}

struct BulkPlan {                 // a stage: SR rows of one table row r, from output row n0
    int r, n0;
};

__device__ __forceinline__ BulkPlan bulk_plan(int unit, int per_row, int sr) {
    return BulkPlan{unit / per_row, (unit % per_row) * sr};
}

// thread 0: the slot of each unit it issues, the next table row's loaded one unit ahead (a load waited for when the
// copy is issued would hold warp 0, and with it every stage's barrier, for a memory latency)
struct SlotAhead {
    int r, next_r;
    i64 slot, next_slot;
    __device__ __forceinline__ i64 take(const QmvArgs& a, int unit, int per_row, int end) {
        const int ur = unit / per_row;
        if (ur != r) {
            slot = ur == next_r ? next_slot : (i64)a.slots[ur];
            r = ur;
        }
        const int nr = (unit + 1) / per_row;          // load the following unit's slot now if it is a new row
        if (nr != r && nr != next_r && unit + 1 < end) {
            next_slot = a.slots[nr];
            next_r = nr;
        }
        return slot;
    }
};

// thread 0: the copies of stage unit `unit` of slot `slot` into stage buffer `st`. MODE 1 (gate+up): units come in
// pairs, unit 2p the gate rows of stage p, unit 2p + 1 the up rows of the same stage
template <int GROUP, int ST, int MODE, int SWZ>
__device__ __forceinline__ void bulk_issue(const QmvArgs& a, const BulkMaps* maps, unsigned char* stage, u32 bar,
                                           int unit, i64 slot, int per_row, int sr) {
    const BulkPlan p = bulk_plan(unit >> MODE, per_row, sr);
    const bool up = MODE && (unit & 1);
    const int k = a.n_in, groups = k / GROUP, es = ST ? 2 : 4;
    const u32 code_bytes = (u32)sr * k / 2, scale_bytes = (u32)sr * groups * es;
    bar_expect(bar, code_bytes + 2 * scale_bytes);
    const u32 dst = smem_addr(stage);
    bulk_copy(dst, (up ? a.w2 : a.w) + slot * a.w_slot_stride + (i64)p.n0 * (k / 8), code_bytes, bar);
    if (SWZ) {
        tensor_copy(dst + code_bytes, up ? &maps->s2 : &maps->s, 0, p.n0, (int)slot, bar);
        tensor_copy(dst + code_bytes + scale_bytes, up ? &maps->b2 : &maps->b, 0, p.n0, (int)slot, bar);
        return;
    }
    const i64 si = (slot * a.s_slot_stride + (i64)p.n0 * groups) * es;
    bulk_copy(dst + code_bytes, (const char*)(up ? a.s2 : a.s) + si, scale_bytes, bar);
    bulk_copy(dst + code_bytes + scale_bytes, (const char*)(up ? a.b2 : a.b) + si, scale_bytes, bar);
}

// thread 0: the copies of the block's units u0 + s, s in [s0, s1), into stage buffer s
template <int GROUP, int ST, int MODE, int SWZ>
__device__ __forceinline__ void bulk_issue_units(const QmvArgs& a, const BulkMaps* maps, unsigned char* bsm,
                                                 unsigned long long* bars, u32 stage_bytes, int s0, int s1, int u0,
                                                 int u1, int per_row, int sr, SlotAhead& ahead) {
    for (int s = s0; s < s1 && u0 + s < u1; ++s)
        bulk_issue<GROUP, ST, MODE, SWZ>(a, maps, bsm + (size_t)s * stage_bytes, smem_addr(&bars[s]), u0 + s,
                                         ahead.take(a, (u0 + s) >> MODE, per_row, u1 >> MODE), per_row, sr);
}

// the issuing thread (thread 0; PROD: the producer warp's lane 0): the stage buffers' mbarriers (PROD: also their
// "empty" barriers, bars[16 + s], one arrival a consumer warp of the unit), then the copies of the block's first
// `stages` units
template <int GROUP, int ST, int MODE, int SWZ, int PROD>
__device__ __forceinline__ void bulk_start(const QmvArgs& a, const BulkMaps* maps, unsigned char* bsm,
                                           unsigned long long* bars, int stages, u32 stage_bytes, int u0, int u1,
                                           int per_row, int sr, SlotAhead& ahead) {
    const int releases = PROD >= 2 ? sr / 16 : 16;             // a buffer's consumer warps (PROD 2: its tiles)
    if (threadIdx.x == (PROD ? 512 : 0)) {
        for (int s = 0; s < stages; ++s)
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(smem_addr(&bars[s])) : "memory");
        if (PROD)
            for (int s = 0; s < stages; ++s)
                asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(smem_addr(&bars[16 + s])),
                             "r"(releases) : "memory");
        asm volatile("fence.mbarrier_init.release.cluster;\n\tfence.proxy.async.shared::cta;" ::: "memory");
        bulk_issue_units<GROUP, ST, MODE, SWZ>(a, maps, bsm, bars, stage_bytes, 0, stages, u0, u1, per_row, sr,
                                               ahead);
    }
}

// PROD: the producer warp's lane 0 refills each buffer with the block's next unit once its consumer warps have
// released it (its empty barrier's phase), so no consumer warp spends ~0.1 us a copy issuing them (session 11)
template <int GROUP, int ST, int MODE, int SWZ>
__device__ __forceinline__ void bulk_produce(const QmvArgs& a, const BulkMaps* maps, unsigned char* bsm,
                                             unsigned long long* bars, int stages, u32 stage_bytes, int u0, int u1,
                                             int per_row, int sr, SlotAhead& ahead) {
    for (int u = u0 + stages; u < u1; ++u) {
        const int i = u - u0, s = i % stages;
        bar_wait(smem_addr(&bars[16 + s]), (u32)((i / stages - 1) & 1));
        bulk_issue<GROUP, ST, MODE, SWZ>(a, maps, bsm + (size_t)s * stage_bytes, smem_addr(&bars[s]), u,
                                         ahead.take(a, u >> MODE, per_row, u1 >> MODE), per_row, sr);
    }
}

// the 16 consumer warps' barrier (PROD: the producer warp takes no part), else the block's
template <int PROD>
__device__ __forceinline__ void consumers_sync() {
    if (PROD)
        asm volatile("bar.sync 1, 512;" ::: "memory");
    else
        __syncthreads();
}

// the end of the block's unit u (table row r, rows n0..): each warp's sums of its TPW tiles (rows g and g + 8, lane
// c = 0 of each quad) into red, the barrier that ends every warp's reads of the stage, thread 0's refill of its
// buffer with unit u + stages, and the stage's rows of y (threads 0..sr-1 add up the wpt warps of their tile).
// MODE 1: a gate unit's rows go to gate_rows (the same threads read them back at the up unit), an up unit's rows
// make y = silu(gate) * up
template <int GROUP, int ST, int TPW, int MODE, int SWZ, int PROD>
__device__ __forceinline__ void bulk_finish(const QmvArgs& a, const BulkMaps* maps, float (&acc0)[TPW],
                                            float (&acc1)[TPW], float (*red)[16][TPW][16], float* gate_rows,
                                            unsigned char* stage, u32 bar, int u, int stages, int u1, int per_row,
                                            int sr, int wpt, int r, int n0, int warp, int g, int c,
                                            SlotAhead& ahead) {
    const int h = u & 1;
#pragma unroll
    for (int t = 0; t < TPW; ++t) {
        if (c == 0) {
            red[h][warp][t][g] = acc0[t];
            red[h][warp][t][g + 8] = acc1[t];
        }
    }
    consumers_sync<PROD>();                                     // every warp is done with the stage and its x
    if (!PROD && threadIdx.x == 0 && u + stages < u1)
        bulk_issue<GROUP, ST, MODE, SWZ>(a, maps, stage, bar, u + stages,
                                         ahead.take(a, (u + stages) >> MODE, per_row, u1 >> MODE), per_row, sr);
    if (threadIdx.x < sr) {                                     // row threadIdx.x of the stage: tile T, its warps
        const int tile = threadIdx.x >> 4, row = threadIdx.x & 15, w0 = (tile / TPW) * wpt;
        float v = 0.f;
        for (int q = 0; q < wpt; ++q) v += red[h][w0 + q][tile % TPW][row];
        if (MODE == 0) {
            a.y[(i64)r * a.n_out + n0 + threadIdx.x] = v;
        } else if ((u & 1) == 0) {
            gate_rows[threadIdx.x] = v;
        } else {
            const float gv = gate_rows[threadIdx.x];
            a.y[(i64)r * a.n_out + n0 + threadIdx.x] = gv / (1.f + expf(-gv)) * v;
        }
    }
}

// the next unit's buffer and phase parity, and (after the unit's last matrix) its table row and first output row
template <int MODE>
__device__ __forceinline__ void bulk_next(int u, int& s, u32& parity, int& r, int& n0, int stages, int sr,
                                          int n_out) {
    if (++s == stages) { s = 0; parity ^= 1u; }
    if (MODE && (u & 1) == 0) return;
    n0 += sr;
    if (n0 == n_out) { n0 = 0; ++r; }
}

// int8 products (session 10; bench/results/cuda_stream.md): a code word gives two registers of four int8 codes with
// three instructions (w & 0x0F0F0F0F, (w >> 4) & 0x0F0F0F0F) and one mma.sync m16n8k32 s8 takes 512 codes, where the
// bf16 products spent 7 of ~13 issued instructions an mma on the nibbles. Faster than the bf16 bulk kernel at every
// shape on the H200 (decode 10 rows: 10.5-12.3 us against 12.2-13.9; 64 rows 0.81-0.84 of HBM against 0.71-0.78).
//   A: 16 output rows x 32 codes: lane (g, c) holds rows g, g + 8 at k = 4c..4c+3 (a0, a1) and 16+4c..16+4c+3 (a2,
//      a3); k 4c.. are the even positions 0, 2, 4, 6 of the lane's word, k 16+4c.. the odd ones 1, 3, 5, 7.
//   B: x as two int8 digits per group g: x ~ sigma_g (256 h + l), x_q = rint(x / sigma_g) in +-32639,
//      h = (x_q + 128) >> 8 in [-127, 127], l = x_q - 256 h in [-128, 127]: each value within 1 / 65278 of its
//      group's largest |x| (the CPU kernel's int16 activations have the same bound: a group with an outlier loses
//      its small values' precision, ~1e-4 of max |y| where a few values are 500x the rest);
//      column 2 (g % 4) + d holds digit d (0: h, 1: l) of that group's positions, zero elsewhere (the column trick of
//      fmoe_qmv4_mma), so four groups accumulate in one int32 D exactly (|D| <= 128 x 15 x 128 at groups of 128).
//   Per group: s_g sigma_g (256 D_h + D_l) + b_g sigma_g sum(x_q) (exact integer sums): y = W x^ exactly, x^ the
//      quantized x (with the float32 sum of x instead, the bias term would not cancel against the scale term's error).
// Staged x of a table row: h words [K / 4] (per 8 values 8m..: word 2m = h of 0, 2, 4, 6; word 2m + 1 = 1, 3, 5, 7),
// l words [K / 4] the same, sigma [K / GROUP] floats, sum(x) [K / GROUP] floats.
__device__ __forceinline__ void mma_s8(int (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ u32 pack_s8(int a, int b, int c, int d) {
    return (u32)(a & 0xFF) | ((u32)(b & 0xFF) << 8) | ((u32)(c & 0xFF) << 16) | ((u32)(d & 0xFF) << 24);
}

// x staging in two halves, so that a block's x loads are in flight before its weight copies (a load issued after
// them waited behind every block's copies: 4-6 us of a 10-13 us decode call, session 10's timelines): thread i
// (< K / 8 rounded up to a warp; K <= 8 x blockDim) loads values 8i..8i+7, then quantizes and stores them.
template <int XT>
__device__ __forceinline__ void int8_load(const void* x, i64 xoff, int i, int n8, float (&v)[8]) {
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = 0.f;
    if (i >= n8) return;
    if (XT) {
        const uint4 raw = *(const uint4*)((const u16*)x + xoff + (i64)i * 8);
        bf16x8(raw, v);
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
    float mx = 0.f, bad = 0.f;                        // bad: NaN where the group has a NaN or an infinity
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        mx = fmaxf(mx, fabsf(v[j]));
        bad += v[j] - v[j];
    }
#pragma unroll
    for (int o = 1; o < LPG; o <<= 1) {
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        bad += __shfl_xor_sync(0xffffffffu, bad, o);
    }
    // a group below 1e-30 counts as zero (its scale would overflow); non-finite x makes the row's y NaN (sigma NaN)
    const float inv = mx >= 1e-30f && bad == 0.f ? 32639.f / mx : 0.f;
    int h[8], l[8], qsum = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const int q = max(-32639, min(32639, __float2int_rn(v[j] * inv)));
        qsum += q;
        h[j] = (q + 128) >> 8;
        l[j] = q - 256 * h[j];
    }
#pragma unroll
    for (int o = 1; o < LPG; o <<= 1) qsum += __shfl_xor_sync(0xffffffffu, qsum, o);
    if (i < n8) {
        *(uint2*)&xh[2 * i] = make_uint2(pack_s8(h[0], h[2], h[4], h[6]), pack_s8(h[1], h[3], h[5], h[7]));
        *(uint2*)&xl[2 * i] = make_uint2(pack_s8(l[0], l[2], l[4], l[6]), pack_s8(l[1], l[3], l[5], l[7]));
        if (i % LPG == 0) {
            const float sg = (mx >= 1e-30f ? mx / 32639.f : 0.f) + bad;
            sig[i / LPG] = sg;
            sx[i / LPG] = sg * (float)qsum;                     // |qsum| <= 128 x 32639 < 2^24: exact in float32
        }
    }
}

// A block's timeline (TRACE = 1 instances, for bench/device/bulk_timeline.py; the engine's are TRACE = 0, where
// `trace` is unused): thread 0 writes 64 u64 a block: [0] globaltimer at entry, [1] clock64 at entry, then clock64
// offsets: [2] x staged, per unit i < 19: [3 + 3i] its stage landed, [4 + 3i] its products done, [5 + 3i] the unit
// finished; [61] units, [62] clock64 offset at the end, [63] globaltimer at the end.
struct BulkTrace {
    unsigned long long* t;
    long long c0;
    __device__ __forceinline__ void start(unsigned long long* trace) {
        t = trace ? trace + 64 * blockIdx.x : nullptr;
        if (t && threadIdx.x == 0) {
            unsigned long long gt;
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(gt));
            c0 = clock64();
            t[0] = gt;
            t[1] = (unsigned long long)c0;
        }
    }
    __device__ __forceinline__ void mark(int i) {
        if (t && threadIdx.x == 0 && i < 61) t[i] = (unsigned long long)(clock64() - c0);
    }
    __device__ __forceinline__ void end(int units) {
        if (t && threadIdx.x == 0) {
            unsigned long long gt;
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(gt));
            t[63] = gt;
            t[62] = (unsigned long long)(clock64() - c0);
            t[61] = (unsigned long long)units;
        }
    }
};

// One warp's products of a stage: its TPW tiles (rows tw 16 + 16 t + g and + 8) over its inputs kw0 .. kw0 + KW,
// against the x staged at xs; acc0 / acc1: the lane's partial sums of rows g and g + 8 (the caller adds up a quad)
template <int GROUP, int ST, int KW, int TPW, int SWZ>
__device__ __forceinline__ void bulk_products(const unsigned char* stage, const u32* xs, int k, int sr, int tw,
                                              int kw0, int g, int c, float (&acc0)[TPW], float (&acc1)[TPW]) {
    const int groups = k / GROUP, es = ST ? 2 : 4;
    const u32* xsrc = (g & 1) ? xs + k / 4 : xs;                // this lane's B column: digit l (odd g) or h
    const float* sig = (const float*)(xs + k / 2);
    const float* sx = sig + groups;
    const unsigned char* codes = stage + (size_t)(tw * 16 + g) * (k / 2) + 16 * c;
    const unsigned char* scl = stage + (size_t)sr * k / 2;
    const unsigned char* bia = scl + (size_t)sr * groups * es;
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
        const int kb = kw0 + 128 * j, p0 = kb + 32 * c;
        uint4 wa[TPW], wb[TPW];
#pragma unroll
        for (int t = 0; t < TPW; ++t) {
            wa[t] = *(const uint4*)(codes + (size_t)(16 * t) * (k / 2) + kb / 2);
            wb[t] = *(const uint4*)(codes + (size_t)(16 * t + 8) * (k / 2) + kb / 2);
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
        if ((kb + 128) % (4 * GROUP) == 0 || j == KW / 128 - 1) {  // the end of a 4-group window: its epilogue
            const int gc = (kb / (4 * GROUP)) * 4 + c;              // the group of this lane's column pair
            if (gc * GROUP >= acc_start && gc * GROUP < kb + 128) {
                const float xsum = sx[gc], sg = sig[gc];
#pragma unroll
                for (int t = 0; t < TPW; ++t) {
                    const int r0 = tw * 16 + 16 * t + g, r1 = r0 + 8;
                    acc0[t] += stage_scale<ST, SWZ>(scl, r0, gc, groups) * sg * (float)(256 * d[t][0] + d[t][1])
                               + stage_scale<ST, SWZ>(bia, r0, gc, groups) * xsum;
                    acc1[t] += stage_scale<ST, SWZ>(scl, r1, gc, groups) * sg * (float)(256 * d[t][2] + d[t][3])
                               + stage_scale<ST, SWZ>(bia, r1, gc, groups) * xsum;
                }
            }
#pragma unroll
            for (int t = 0; t < TPW; ++t)
#pragma unroll
                for (int e = 0; e < 4; ++e) d[t][e] = 0;
            acc_start = kb + 128;
        }
    }
#pragma unroll
    for (int t = 0; t < TPW; ++t) {                             // the quad's sums (lanes c = 0..3 of rows g, g + 8)
        acc0[t] += __shfl_xor_sync(0xffffffffu, acc0[t], 1);
        acc0[t] += __shfl_xor_sync(0xffffffffu, acc0[t], 2);
        acc1[t] += __shfl_xor_sync(0xffffffffu, acc1[t], 1);
        acc1[t] += __shfl_xor_sync(0xffffffffu, acc1[t], 2);
    }
}

// PROD 2 (whole rows, MODE 0, KW = K): a unit is TILES = sr / 16 tiles of 16 rows over all K inputs, one warp a
// tile, so no warp waits for another: warp w multiplies tile w % TILES of the block's units i = w / TILES, + 16 /
// TILES, ... (buffer i % stages), releases the buffer and writes its rows of y. A buffer's fills are awaited by parity,
// so no warp may wait for a fill two phases ahead of the buffer's: the launcher takes a buffer a unit of the block (no
// refills) where they fit, else a multiple of 16 / TILES buffers (a buffer's next unit is then its same warps' next
// one). xs holds the staged x of every table row of the block (x_words each, from r_first); thread 0 counts warp 0's
// units in the trace.
template <int GROUP, int ST, int KW, int TILES, int SWZ, int TRACE>
__device__ __forceinline__ void bulk_whole_rows(const QmvArgs& a, const unsigned char* bsm, unsigned long long* bars,
                                                const u32* xs, int x_words, int r_first, int stages, u32 stage_bytes,
                                                int u0, int u1, int per_row, int sr, int warp, int lane, int g, int c,
                                                BulkTrace& tr) {
    constexpr int NG = 16 / TILES;
    const int t = warp % TILES;
    int done = 0;
    for (int i = warp / TILES; u0 + i < u1; i += NG, ++done) {
        const int u = u0 + i, s = i % stages, r = u / per_row, n0 = (u % per_row) * sr;
        bar_wait(smem_addr(&bars[s]), (u32)((i / stages) & 1));
        if (TRACE) tr.mark(3 + 3 * done);
        float acc0[1], acc1[1];
        bulk_products<GROUP, ST, KW, 1, SWZ>(bsm + (size_t)s * stage_bytes,
                                             xs + (a.x_stride ? (r - r_first) * x_words : 0), a.n_in, sr, t, 0, g, c,
                                             acc0, acc1);
        if (TRACE) tr.mark(4 + 3 * done);
        __syncwarp();
        if (lane == 0)
            asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" :: "r"(smem_addr(&bars[16 + s])) : "memory");
        if (c == 0) {
            float* y = a.y + (i64)r * a.n_out + n0 + 16 * t + g;
            y[0] = acc0[0];
            y[8] = acc1[0];
        }
        if (TRACE) tr.mark(5 + 3 * done);
    }
    if (TRACE) tr.end(done);
}

// MODE 0: y = W x; MODE 1: y = silu(G x) * (U x) (gate+up of the same slots, a.w2 / s2 / b2 the up matrices): each
// stage of output rows is two units, its gate rows then its up rows, in one block. `early` (the launcher's
// slots_ready, with programmatic dependent launch): the caller vouches that the previous kernel of the stream wrote
// neither the slot table nor the weights, so a block reads its slots and issues its first copies before
// griddepcontrol.wait (while the previous kernel drains) and only x after it; else everything after the wait.
// PROD: a producer warp issues the copies (bulk_produce); PROD 2: also whole rows a warp (bulk_whole_rows; TPW is
// then the tiles of a unit).
template <int GROUP, int XT, int ST, int KW, int TPW, int MODE, int TRACE, int SWZ, int PROD>
__global__ void __launch_bounds__(PROD ? 544 : 512, 1) fmoe_qmv4_bulk(const QmvArgs a, int rows, int stages, int early,
                                                                      unsigned long long* trace,
                                                                      const __grid_constant__ BulkMaps maps) {
    BulkTrace tr;
    if (TRACE) tr.start(trace);
    extern __shared__ __align__(128) unsigned char bsm_raw[];
    unsigned char* bsm = SWZ ? bsm_raw + ((1024 - (smem_addr(bsm_raw) & 1023)) & 1023) : bsm_raw;   // (SWZ: +1 KB)
    __shared__ __align__(8) unsigned long long bars[32];
    __shared__ float red[PROD >= 2 ? 1 : 2][16][TPW][16];
    __shared__ float gate_rows[MODE ? 16 * 16 * TPW : 1];      // MODE 1: a stage's gate rows (sr <= 16 x 16 TPW)
    const int k = a.n_in, wpt = k / KW, sr = PROD >= 2 ? 16 * TPW : 16 * (16 / wpt) * TPW, groups = k / GROUP;
    if (PROD >= 2 && (MODE || wpt != 1)) __trap();
    const int per_row = a.n_out / sr;
    const int es = ST ? 2 : 4;
    const u32 stage_bytes = (u32)sr * k / 2 + 2u * sr * groups * es;
    const int pairs = rows * per_row;                           // stages of output rows (MODE 1: two units each)
    const int u0 = (int)((long long)blockIdx.x * pairs / gridDim.x) << MODE;
    const int u1 = (int)((long long)(blockIdx.x + 1) * pairs / gridDim.x) << MODE;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int n8 = k / 8, n8_pad = (n8 + 31) & ~31;
    if (n8_pad > (int)blockDim.x) __trap();                     // one 8-value chunk of x a thread (K <= 4096)
    u32* xs = (u32*)(bsm + (size_t)stages * stage_bytes);       // staged x of the current table row (PROD 2: rows)
    const int x_words = k / 2 + 2 * groups;
    SlotAhead ahead{-1, -1, 0, 0};
    int r = (u0 >> MODE) / per_row, n0 = ((u0 >> MODE) % per_row) * sr;
    const bool issuer = threadIdx.x == (PROD ? 512 : 0);
    if (early) {                                                // the slots and copies while the previous kernel drains
        if (issuer && u0 < u1) (void)ahead.take(a, u0 >> MODE, per_row, u1 >> MODE);
        bulk_start<GROUP, ST, MODE, SWZ, PROD>(a, &maps, bsm, bars, stages, stage_bytes, u0, u1, per_row, sr, ahead);
        prior_grid_wait();
    } else {
        prior_grid_wait();
        if (issuer && u0 < u1) (void)ahead.take(a, u0 >> MODE, per_row, u1 >> MODE);   // in flight now
    }
    float xv[8];
    if (PROD < 2 && threadIdx.x < n8_pad)                      // before the copies
        int8_load<XT>(a.x, (i64)r * a.x_stride, threadIdx.x, n8, xv);
    if (!early)
        bulk_start<GROUP, ST, MODE, SWZ, PROD>(a, &maps, bsm, bars, stages, stage_bytes, u0, u1, per_row, sr, ahead);
    next_grid_may_start();
    if (PROD && warp == 16) {                                   // the producer warp: the barriers' init published to
        asm volatile("bar.arrive 2, 544;" ::: "memory");       // the consumers, then the block's other copies
        if (lane == 0)
            bulk_produce<GROUP, ST, MODE, SWZ>(a, &maps, bsm, bars, stages, stage_bytes, u0, u1, per_row, sr, ahead);
        return;
    }
    if (PROD >= 2) {                                            // x of each table row of the block's units
        const int nx = u0 >= u1 ? 0 : a.x_stride ? (u1 - 1) / per_row - r + 1 : 1, at_once = 512 / n8_pad;
        if (nx > 4) __trap();                                   // (the launcher's _whole_rows)
        for (int q = threadIdx.x / n8_pad; q < nx; q += at_once) {
            int8_load<XT>(a.x, (i64)(r + q) * a.x_stride, threadIdx.x % n8_pad, n8, xv);
            int8_store<GROUP>(xs + q * x_words, k, threadIdx.x % n8_pad, n8, xv);
        }
    } else if (threadIdx.x < n8_pad) {
        int8_store<GROUP>(xs, k, threadIdx.x, n8, xv);
    }
    if (PROD)                                                   // x staged, the barriers' init visible (the producer
        asm volatile("bar.sync 2, 544;" ::: "memory");         // warp does not wait for x)
    else
        __syncthreads();
    if (TRACE) tr.mark(2);
    if (PROD >= 2) {
        bulk_whole_rows<GROUP, ST, KW, TPW, SWZ, TRACE>(a, bsm, bars, xs, x_words, r, stages, stage_bytes, u0, u1,
                                                        per_row, sr, warp, lane, g, c, tr);
        return;
    }
    const int tw = (warp / wpt) * TPW, kw0 = (warp % wpt) * KW;   // this warp's first tile of a stage, its inputs
    int staged_r = r, s = 0;
    u32 parity = 0;
    for (int u = u0; u < u1; ++u) {
        if (r != staged_r && a.x_stride != 0) {                 // (block-uniform) every warp is past the previous
            if (threadIdx.x < n8_pad) {                         // stage's barrier
                int8_load<XT>(a.x, (i64)r * a.x_stride, threadIdx.x, n8, xv);
                int8_store<GROUP>(xs, k, threadIdx.x, n8, xv);
            }
            staged_r = r;
            consumers_sync<PROD>();
        }
        unsigned char* stage = bsm + (size_t)s * stage_bytes;
        bar_wait(smem_addr(&bars[s]), parity);
        if (TRACE) tr.mark(3 + 3 * (u - u0));
        float acc0[TPW], acc1[TPW];
        bulk_products<GROUP, ST, KW, TPW, SWZ>(stage, xs, k, sr, tw, kw0, g, c, acc0, acc1);
        if (TRACE) tr.mark(4 + 3 * (u - u0));
        if (PROD) {                                             // this warp is done with the buffer
            __syncwarp();
            if (lane == 0)
                asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" :: "r"(smem_addr(&bars[16 + s])) : "memory");
        }
        bulk_finish<GROUP, ST, TPW, MODE, SWZ, PROD>(a, &maps, acc0, acc1, red, gate_rows, stage,
                                                     smem_addr(&bars[s]), u, stages, u1, per_row, sr, wpt, r, n0,
                                                     warp, g, c, ahead);
        if (TRACE) tr.mark(5 + 3 * (u - u0));
        bulk_next<MODE>(u, s, parity, r, n0, stages, sr, a.n_out);
    }
    if (TRACE) tr.end(u1 - u0);
}
