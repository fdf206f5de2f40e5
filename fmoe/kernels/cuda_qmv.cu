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

__device__ __forceinline__ uint4 load_stream(const u32* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

__device__ __forceinline__ u32 word_of(const uint4& v, int k) {
    return k == 0 ? v.x : k == 1 ? v.y : k == 2 ? v.z : v.w;
}

// bit position of value e of a word after the optional shift by 12 (codes that would reach bit 23 are shifted)
template <int BITS> __device__ __host__ constexpr int low_value(int e) { return (e + 1) * BITS <= 23; }
template <int BITS> __device__ __host__ constexpr int code_pos(int e) { return low_value<BITS>(e) ? e * BITS : e * BITS - 12; }

template <int BITS, int GROUP, int RPW, int IT, int NM> struct Batch {
    static constexpr int EPW = 32 / BITS, VPC = 4 * EPW, SUB = GROUP < VPC ? GROUP : VPC, NSUB = VPC / SUB;
    uint4 q[NM][RPW][IT];
    float sc[NM][RPW][IT][NSUB], bi[NM][RPW][IT][NSUB];
};

// issue every load of RPW rows from n0 (weights, scales, biases): nothing waits on them until they are used
template <int BITS, int GROUP, int ST, int RPW, int IT, int NM>
__device__ __forceinline__ void load_batch(Batch<BITS, GROUP, RPW, IT, NM>& bt, const QmvArgs& a, i64 slot, int n0,
                                           int lane, int nchunks, int groups) {
    typedef Batch<BITS, GROUP, RPW, IT, NM> B;
#pragma unroll
    for (int m = 0; m < NM; ++m) {
        const u32* base = (m == 0 ? a.w : a.w2) + slot * a.w_slot_stride;
        const void* sp = m == 0 ? a.s : a.s2;
        const void* bp = m == 0 ? a.b : a.b2;
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
            if (XT) {
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const u32 wd = word_of(raw, j);
                    v[2 * j] = __uint_as_float(wd << 16);
                    v[2 * j + 1] = __uint_as_float(wd & 0xFFFF0000u);
                }
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
