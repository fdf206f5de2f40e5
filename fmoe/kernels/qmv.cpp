// fmoe quantized matrix-vector product on CPU, consuming mlx's affine packed layout directly (no repacking).
//
//   y[m, n] = sum_k x[m, k] * (scale[n, k / gs] * q[n, k] + bias[n, k / gs])
//
// w: uint32 [N, K * bits / 32] (LSB-first bit stream along k; 3-bit = 8 codes per 3 bytes), scales/biases
// [N, K / gs] as bf16 bit patterns (uint16) or float32.  x: float32 rows [M, K] (row stride x_stride), y: float32
// rows [M, N] (row stride y_stride).  Arithmetic by `mode` (fmoe_qmv):
//   0 (the default): int16 activations: x quantized per group to int16, exact int32 products and sums with the codes,
//     each group's sum scaled in float32 (see "Fast path: int16 activations" below; non-finite x falls back to 1).
//     2 bits use a 15-bit variant (|x16| <= 32639) split into two signed bytes for vpmaddubsw (see row_b);
//     the AVX-512 build sums those bytes with VNNI vpdpbusd (same integer sums, same results);
//   1 (exact): float32 activations and float32 FMAs (dequantized weight = fma(q, s, b), then fma with x);
//   2: portable scalar float32.
//
// Built at first use by fmoe/kernels/native.py, once per ISA variant with explicit flags (not -march=native):
// `-O3 -pthread -std=c++17 -fno-math-errno -ffp-contract=off` plus the variant's flags (list below); plain C ABI,
// called via ctypes.  SIMD paths (AVX2+FMA, and AVX-512/VNNI forms of them) with a portable scalar fallback (and
// scalar tails when K is not a block multiple); without AVX2 (the generic variant) every mode runs the portable row
// products (row_scalar: NEON on aarch64, scalar otherwise).
//
// Parts: the SIMD variants build as FMOE_PARTS objects compiled in parallel (-DFMOE_PARTS=P -DFMOE_PART=i) and linked
// into one library.  Part i generates the code of the bit widths whose index in (2, 3, 4, 5, 6, 8) is i modulo P
// (qmv_width_B / fused_width_B: nearly all of the build's time is these instances), part 0 also everything else and
// the C API; the thread pool and ExpertPtrs are shared by all parts (namespace fmoe_native).  Without those macros
// the file is one whole library, as before.

#ifndef FMOE_PARTS
#define FMOE_PARTS 1
#endif
#ifndef FMOE_PART
#define FMOE_PART 0
#endif
#define FMOE_OWNS(index) ((index) % FMOE_PARTS == FMOE_PART)

#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <vector>
#include <cmath>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

// Software prefetch distance in bytes along a row's packed words (0 = off).  One prefetch per 64-byte line, 2 KB ahead
// (into the next rows: the hardware prefetcher stops at 4 KB pages): 4-bit cold 1 thread 13.2 -> 14.0-14.7 GB/s on
// Zen 3 (1 KB: 13.4-14.5, 4 KB: 12.6-13.5; the earlier prefetch of every 32-byte block, 512 ahead, was slower).
#ifndef FMOE_PF
#define FMOE_PF 2048
#endif
// Locality hint of those prefetches. _MM_HINT_NTA (FMOE_QMV_CFLAGS=-DFMOE_PF_HINT=_MM_HINT_NTA) keeps more of the
// caches for the decode's Python and torch ops (2-core Zen, 397B-shaped decode: non-kernel time 14.3-14.7 vs
// 15.1-16.8 ms median per token) but slowed the cold 4-bit mat-vec 22.5-24.1 -> 21.0-21.2 GB/s: not the default.
#ifndef FMOE_PF_HINT
#define FMOE_PF_HINT _MM_HINT_T0
#endif
// Rows per work chunk handed to a thread.
#ifndef FMOE_GRAIN
#define FMOE_GRAIN 64
#endif
#ifndef FMOE_CHUNK_BYTES  // 4-bit mat-vec chunks: rows of about this many weight bytes (see qmv_avx2)
#define FMOE_CHUNK_BYTES 131072
#endif

// ISA variants: native.py compiles this file once per variant with explicit flags (not -march=native) and loads the
// best one the CPU supports:
//   avx512: -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512vnni  (the AVX2 code in EVEX form with 32
//           vector registers, and the int16 multiply-accumulate fused into one VNNI vpdpwssd)
//   avx2:   -mavx2 -mfma -mf16c
//   generic: no ISA flags (portable C++; on aarch64 with NEON intrinsics for the row products, row_neon)
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define FMOE_AVX2 1
#else
#define FMOE_AVX2 0
#endif
// NEON on aarch64 (every aarch64 CPU has it): the portable variant's row products (row_neon)
#if !FMOE_AVX2 && defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define FMOE_NEON 1
#else
#define FMOE_NEON 0
#endif
#if FMOE_AVX2 && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define FMOE_VNNI 1
// acc + sum of the two int16 x int16 products of each int32 lane (exact: codes are < 2^8, no saturation case)
#define FMOE_DPWSSD(ACC, A, B) _mm256_dpwssd_epi32((ACC), (A), (B))
#define FMOE_ISA_NAME "avx512vnni"
#else
#define FMOE_VNNI 0
#define FMOE_DPWSSD(ACC, A, B) _mm256_add_epi32((ACC), _mm256_madd_epi16((A), (B)))
#if FMOE_AVX2
#define FMOE_ISA_NAME "avx2"
#elif defined(__aarch64__)
#define FMOE_ISA_NAME "generic-neon"
#else
#define FMOE_ISA_NAME "generic"
#endif
#endif

// The AVX-512 build's 2-bit decode rows in 512-bit registers, two weight rows a register (row2_defer_zmm); 0
// (FMOE_QMV_CFLAGS=-DFMOE_ZMM=0) keeps them in 256-bit ones like the AVX2 build.
#ifndef FMOE_ZMM
#define FMOE_ZMM FMOE_VNNI
#endif

#if defined(__GNUC__)
#define FMOE_INLINE __attribute__((always_inline))
#else
#define FMOE_INLINE
#endif
// -O2 leaves the small loops over rows below rolled: the NW = 2 accumulators then went through the stack (35%
// slower); unrolled, R = 4 (prefill) also got faster (1 thread, hot, 4 x rows: 1024x4096 528-575 -> 495-498 us,
// 4096x1024 568 -> 516-527 us)
#if defined(__clang__)
#define FMOE_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define FMOE_UNROLL _Pragma("GCC unroll 8")
#else
#define FMOE_UNROLL
#endif

namespace {

inline float bf16_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <bool BF16>
inline float load_scale(const void* p, int64_t i) {
  if constexpr (BF16) {
    return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
  } else {
    return static_cast<const float*>(p)[i];
  }
}

// code k of a row, from the LSB-first bit stream (valid for every bit width).
inline uint32_t code_at(const uint32_t* row, int64_t k, int bits) {
  int64_t p = k * bits;
  int64_t wi = p >> 5;
  int off = static_cast<int>(p & 31);
  uint64_t v = row[wi] >> off;
  if (off + bits > 32) v |= static_cast<uint64_t>(row[wi + 1]) << (32 - off);
  return static_cast<uint32_t>(v) & ((1u << bits) - 1u);
}

inline bool valid_bits(int bits) { return bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 || bits == 8; }

// ---------------------------------------------------------------------------------------------------------------
}  // namespace

namespace fmoe_native {

// A small thread pool with "claimed chunks" semantics: the caller publishes a job (n chunks), workers and the caller
// claim chunks from an atomic counter, and the caller waits only for chunks that were actually claimed.  Unlike an
// OpenMP fork/join, a worker that the OS has not scheduled yet (a busy 2-core machine, I/O threads) never holds up
// the product: it wakes up later, finds nothing left and sleeps again.  Calls from several threads at once are safe:
// a caller that finds the pool busy runs its job alone.
class Pool {
 public:
  using Fn = void (*)(void* ctx, int64_t chunk);

  // split: each of the P participating threads (the caller and nthreads - 1 workers) starts on its own contiguous
  // range of about nchunks / P chunks, claims them in order, then takes what is left of the others' ranges from their
  // ends.  Each thread then reads one sequential stream of rows (the prefetches run on into its next chunk, the
  // hardware prefetcher keeps its stream), where with one shared counter two threads alternated chunks and each
  // stream restarted at every chunk: 2 threads cold, 4096x1024 (16 KB chunks at 2 bits): 2 bits 14.0 -> 17.5 GB/s,
  // 4 bits 23.1 -> 29.0.  A descheduled thread still never holds up the product (its range is taken from the end).
  // Not for callers whose chunks wait on lower-numbered chunks (moe_fused_run): those need the increasing order.
  void run(Fn fn, void* ctx, int64_t nchunks, int nthreads, bool split = false) {
    if (nchunks <= 0) return;
    const int nworkers = static_cast<int>(std::min<int64_t>(nthreads, nchunks)) - 1;
    std::unique_lock<std::mutex> call(call_mu_, std::try_to_lock);
    // (more chunks than a claim word's range holds, 4M: never in practice, the caller runs them alone)
    if (nworkers <= 0 || !call.owns_lock() || nchunks >= (int64_t{1} << kRangeBits)) {
      for (int64_t c = 0; c < nchunks; ++c) fn(ctx, c);
      return;
    }
    ensure_workers(nworkers);
    if (nworkers + 1 > kMaxParts) split = false;
    uint64_t gen;
    bool wake;
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_.store(fn, std::memory_order_relaxed);
      ctx_.store(ctx, std::memory_order_relaxed);
      active_workers_.store(nworkers, std::memory_order_relaxed);
      done_.store(0, std::memory_order_relaxed);
      gen = gen_.load(std::memory_order_relaxed) + 1;
      split_.store(split ? nworkers + 1 : 0, std::memory_order_relaxed);
      if (split) {
        const int P = nworkers + 1;
        for (int p = 0; p < P; ++p)
          parts_[p].v.store(pack(gen, nchunks * p / P, nchunks * (p + 1) / P), std::memory_order_relaxed);
      }
      // the shared counter: generation | next | end (empty in split mode), one word, so that a claim for an older
      // generation can never pair that generation's tag with this job's bounds
      claim_.store(pack(gen, 0, split ? 0 : nchunks), std::memory_order_release);
      gen_.store(gen, std::memory_order_release);          // spinning workers start here
      wake = sleepers_ > 0;
    }
    if (wake) cv_.notify_all();
    int64_t mine = 0;
    for (;;) {
      const int64_t c = split ? claim_split(gen, 0, nworkers + 1) : claim(gen);
      if (c < 0) break;
      fn(ctx, c);
      ++mine;
    }
    done_.fetch_add(mine, std::memory_order_acq_rel);
    // wait for the chunks claimed by workers (they are running now, so this is short)
    while (done_.load(std::memory_order_acquire) < nchunks) {
#if FMOE_AVX2
      _mm_pause();
#endif
    }
  }

  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_.store(true);
    }
    cv_.notify_all();
    for (auto& t : threads_) t.detach();  // process exit: do not join threads blocked in the OS
  }

 private:
  // split mode: per participant a word of generation (kGenBits, low bits of gen) | first | end of its range
  static constexpr int kMaxParts = 256, kRangeBits = 22, kGenBits = 64 - 2 * kRangeBits;
  static constexpr uint64_t kRangeMask = (uint64_t{1} << kRangeBits) - 1;
  static uint64_t pack(uint64_t gen, int64_t lo, int64_t hi) {
    return (gen << (2 * kRangeBits)) | (static_cast<uint64_t>(lo) << kRangeBits) | static_cast<uint64_t>(hi);
  }
  // A chunk of generation `gen` from the word `a` (generation | first | end): its first (front) or its last, -1 when
  // the range is empty or the word belongs to another generation (then that generation is over).
  static int64_t take(std::atomic<uint64_t>& a, uint64_t gen, bool front) {
    const uint64_t gtag = gen & ((uint64_t{1} << kGenBits) - 1);
    uint64_t cur = a.load(std::memory_order_acquire);
    for (;;) {
      if ((cur >> (2 * kRangeBits)) != gtag) return -1;
      const int64_t lo = static_cast<int64_t>((cur >> kRangeBits) & kRangeMask);
      const int64_t hi = static_cast<int64_t>(cur & kRangeMask);
      if (lo >= hi) return -1;
      if (a.compare_exchange_weak(cur, front ? pack(gen, lo + 1, hi) : pack(gen, lo, hi - 1),
                                  std::memory_order_acq_rel))
        return front ? lo : hi - 1;
    }
  }

  // Participant p's next chunk of generation `gen` (P participants): the front of its own range, else the back of
  // another's; -1 when none is left (or the generation is over).
  int64_t claim_split(uint64_t gen, int p, int P) {
    for (int i = 0; i < P; ++i) {
      const int64_t c = take(parts_[(p + i) % P].v, gen, i == 0);
      if (c >= 0) return c;
    }
    return -1;
  }

  // Next chunk of generation `gen` from the shared counter, or -1 when none is left (or the generation is over).
  int64_t claim(uint64_t gen) { return take(claim_, gen, true); }

  void ensure_workers(int n) {
    while (static_cast<int>(threads_.size()) < n) {
      const int id = static_cast<int>(threads_.size());
      threads_.emplace_back([this, id] { worker(id); });
    }
  }

  // A worker that finished a job spins (FMOE_SPIN_US, default 300 us) for the next one before it sleeps: decode
  // calls come back to back (tens of us apart), and a sleeping worker takes a futex wake-up (10-50 us on a busy VM)
  // to start, which cost ~30 us of a 100 us mat-vec.
  void worker(int id) {
    uint64_t seen = 0;
    for (;;) {
      uint64_t gen = gen_.load(std::memory_order_acquire);
      if (gen == seen || id >= active_workers_.load(std::memory_order_relaxed)) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int spins = 0;; ++spins) {
#if FMOE_AVX2
          _mm_pause();
#else
          std::this_thread::yield();
#endif
          gen = gen_.load(std::memory_order_acquire);
          if ((gen != seen && id < active_workers_.load(std::memory_order_relaxed)) || stop_.load()) break;
          if ((spins & 63) == 63 && std::chrono::steady_clock::now() - t0 > spin_) {
            std::unique_lock<std::mutex> lk(mu_);
            ++sleepers_;
            cv_.wait(lk, [&] {
              return stop_.load() || (gen_.load() != seen && id < active_workers_.load(std::memory_order_relaxed));
            });
            --sleepers_;
            gen = gen_.load();
            break;
          }
        }
        if (stop_.load()) return;
      }
      // The job of generation `gen` with no lock: gen_ was stored (release) after fn_/ctx_/split_, so these loads see
      // that job's values or a newer job's.  A newer job is only published once every chunk of `gen` is done, and
      // every claim word carries its generation with its bounds (claim_ and parts_: one atomic word each), so a
      // claim tagged `gen` then finds nothing, whichever of the newer values it read (split mode or not), and the
      // mixed values are never used.  (A mutex here made 16 waking workers queue on it: the last one started ~20 us
      // late on a 2 MB mat-vec of ~45 us.)
      const Fn fn = fn_.load(std::memory_order_acquire);
      void* const ctx = ctx_.load(std::memory_order_acquire);
      const int split = split_.load(std::memory_order_acquire);
      seen = gen;
      int64_t mine = 0;
      for (;;) {
        const int64_t c = split ? claim_split(gen, id + 1, split) : claim(gen);
        if (c < 0) break;
        fn(ctx, c);
        ++mine;
      }
      if (mine) done_.fetch_add(mine, std::memory_order_acq_rel);
    }
  }

  static std::chrono::microseconds spin_time() {
    const char* e = std::getenv("FMOE_SPIN_US");
    return std::chrono::microseconds(e ? std::max(0L, std::atol(e)) : 300L);
  }

  std::mutex call_mu_, mu_;
  std::condition_variable cv_;
  std::vector<std::thread> threads_;
  std::atomic<uint64_t> claim_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<uint64_t> gen_{0};
  std::atomic<Fn> fn_{nullptr};
  std::atomic<void*> ctx_{nullptr};
  std::atomic<int> active_workers_{0};
  std::atomic<int> split_{0};  // split mode: the number of participants; 0: one shared counter (claim)
  struct alignas(64) Part {
    std::atomic<uint64_t> v{0};
  };
  Part parts_[kMaxParts];
  std::atomic<bool> stop_{false};
  int sleepers_ = 0;  // guarded by mu_
  const std::chrono::microseconds spin_ = spin_time();
};

inline Pool& pool() {  // one pool for all parts (an inline function's static: one instance in the library)
  static Pool* p = new Pool();  // leaked on purpose: no destructor ordering issues at exit
  return *p;
}

}  // namespace fmoe_native

namespace {

using fmoe_native::pool;

// Run body(chunk) for chunk in [0, nchunks) on up to nthreads threads (the caller included).  split: each thread
// starts on its own contiguous range of chunks (see Pool::run); otherwise chunks are claimed in increasing order.
template <typename Body>
void parallel_chunks(int64_t nchunks, int nthreads, Body&& body, bool split = false) {
  auto tramp = [](void* ctx, int64_t c) { (*static_cast<Body*>(ctx))(c); };
  pool().run(tramp, static_cast<void*>(&body), nchunks, nthreads, split);
}

#if FMOE_NEON
// NEON (aarch64, the generic variant): 16 codes of a row as four float32x4 in order, from 2 * BITS bytes at p.  2/4/8
// bits: byte j holds codes (8 / BITS) j .. LSB first, so nibbles / crumbs are split with AND and shifts and put back
// in order with zips; then widened u8 -> u16 -> u32 -> float32.
inline void widen16(uint8x16_t c, float32x4_t (&f)[4]) {
  const uint16x8_t a = vmovl_u8(vget_low_u8(c)), b = vmovl_high_u8(c);
  f[0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(a)));
  f[1] = vcvtq_f32_u32(vmovl_high_u16(a));
  f[2] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(b)));
  f[3] = vcvtq_f32_u32(vmovl_high_u16(b));
}

// 3, 5, 6 bits: 8 codes span BITS bytes; code j sits at bit BITS * j, inside the 16-bit window that starts at byte
// BITS * j / 8.  A table lookup gathers the 8 windows into u16 lanes, a per-lane shift and a mask leave the codes.
// The BITS bytes are copied into a zeroed register first (no read past the row's end).
template <int BITS>
struct OddCodes {
  uint8_t idx[16];
  int16_t shift[8];
  constexpr OddCodes() : idx(), shift() {
    for (int j = 0; j < 8; ++j) {
      idx[2 * j] = static_cast<uint8_t>(BITS * j / 8);
      idx[2 * j + 1] = static_cast<uint8_t>(BITS * j / 8 + 1);
      shift[j] = static_cast<int16_t>(-(BITS * j % 8));
    }
  }
};

template <int BITS>
inline void codes8_odd(const uint8_t* p, uint8x16_t idx, int16x8_t shift, float32x4_t& lo, float32x4_t& hi) {
  uint64_t bytes = 0;
  std::memcpy(&bytes, p, BITS);
  const uint8x16_t table = vcombine_u8(vcreate_u8(bytes), vdup_n_u8(0));
  const uint16x8_t win = vreinterpretq_u16_u8(vqtbl1q_u8(table, idx));
  const uint16x8_t c = vandq_u16(vshlq_u16(win, shift), vdupq_n_u16((1u << BITS) - 1u));
  lo = vcvtq_f32_u32(vmovl_u16(vget_low_u16(c)));
  hi = vcvtq_f32_u32(vmovl_high_u16(c));
}

template <int BITS>
inline void codes16(const uint8_t* p, float32x4_t (&f)[4]) {
  if constexpr (BITS == 3 || BITS == 5 || BITS == 6) {
    static constexpr OddCodes<BITS> t{};
    const uint8x16_t idx = vld1q_u8(t.idx);
    const int16x8_t shift = vld1q_s16(t.shift);
    codes8_odd<BITS>(p, idx, shift, f[0], f[1]);
    codes8_odd<BITS>(p + BITS, idx, shift, f[2], f[3]);
  } else if constexpr (BITS == 8) {
    widen16(vld1q_u8(p), f);
  } else if constexpr (BITS == 4) {
    const uint8x8_t v = vld1_u8(p);
    const uint8x8_t lo = vand_u8(v, vdup_n_u8(0x0F)), hi = vshr_n_u8(v, 4);
    widen16(vcombine_u8(vzip1_u8(lo, hi), vzip2_u8(lo, hi)), f);      // codes 0..7, 8..15
  } else {                                                            // 2 bits: 4 bytes, codes 4j + t at bit 2t
    uint32_t word;
    std::memcpy(&word, p, 4);
    const uint8x8_t v = vcreate_u8(word), m = vdup_n_u8(3);
    const uint8x8_t c0 = vand_u8(v, m), c1 = vand_u8(vshr_n_u8(v, 2), m), c2 = vand_u8(vshr_n_u8(v, 4), m),
                    c3 = vshr_n_u8(v, 6);
    const uint16x4_t p01 = vreinterpret_u16_u8(vzip1_u8(c0, c1)), p23 = vreinterpret_u16_u8(vzip1_u8(c2, c3));
    widen16(vcombine_u8(vreinterpret_u8_u16(vzip1_u16(p01, p23)), vreinterpret_u8_u16(vzip2_u16(p01, p23))), f);
  }
}

// One row's sum over all K (a multiple of gs, gs of 16): per group the scale and bias are loaded once, each code's
// weight is fma(q, s, b) and four float32x4 accumulators take its products with x.
template <int BITS, bool BF16>
float row_neon(const uint32_t* row, const void* sc, const void* bi, int64_t srow, const float* x, int64_t K, int gs) {
  const uint8_t* p = reinterpret_cast<const uint8_t*>(row);
  float32x4_t acc[4] = {vdupq_n_f32(0.f), vdupq_n_f32(0.f), vdupq_n_f32(0.f), vdupq_n_f32(0.f)};
  for (int64_t g0 = 0; g0 < K; g0 += gs) {
    const float32x4_t s = vdupq_n_f32(load_scale<BF16>(sc, srow + g0 / gs));
    const float32x4_t b = vdupq_n_f32(load_scale<BF16>(bi, srow + g0 / gs));
    for (int64_t k = g0; k < g0 + gs; k += 16) {
      float32x4_t f[4];
      codes16<BITS>(p + k * BITS / 8, f);
      FMOE_UNROLL for (int i = 0; i < 4; ++i) acc[i] = vfmaq_f32(acc[i], vfmaq_f32(b, f[i], s), vld1q_f32(x + k + 4 * i));
    }
  }
  return vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])));
}
#endif

template <bool BF16>
float row_scalar(const uint32_t* row, const void* sc, const void* bi, int64_t srow, const float* x, int64_t k0,
                 int64_t K, int bits, int gs) {
#if FMOE_NEON
  if (k0 == 0 && gs % 16 == 0 && K % gs == 0) {
    switch (bits) {
      case 2: return row_neon<2, BF16>(row, sc, bi, srow, x, K, gs);
      case 3: return row_neon<3, BF16>(row, sc, bi, srow, x, K, gs);
      case 4: return row_neon<4, BF16>(row, sc, bi, srow, x, K, gs);
      case 5: return row_neon<5, BF16>(row, sc, bi, srow, x, K, gs);
      case 6: return row_neon<6, BF16>(row, sc, bi, srow, x, K, gs);
      case 8: return row_neon<8, BF16>(row, sc, bi, srow, x, K, gs);
    }
  }
#endif
  float acc = 0.f;
  for (int64_t k = k0; k < K; ++k) {
    int64_t g = srow + k / gs;
    float w = static_cast<float>(code_at(row, k, bits)) * load_scale<BF16>(sc, g) + load_scale<BF16>(bi, g);
    acc += w * x[k];
  }
  return acc;
}

#if FMOE_AVX2

// Codes per lane per block: a block is 8 lanes x W codes.  For bits 2/3/4 lane i of "step" j holds code
// k = base + W*i + j (bits 2: W=16, bits 3/4: W=8).  8 bits uses natural order (vpmovzxbd, W=1).
template <int BITS>
constexpr int lane_codes() {
  return BITS == 2 ? 16 : (BITS == 8 ? 1 : 8);
}

// For bits 2/3/4 step j extracts its code without shifting: c = v & (mask << BITS*j) = q * 2^(BITS*j) (exact in
// float32).  The power of two is folded into the permuted x: xp[b*8W + j*8 + i] = x[b*8W + W*i + j] * 2^-(BITS*j).
// The top code of a full 32-bit word (bits 2/4) is extracted by a shift instead (c = v >> (32-BITS), scale 1) so
// that the signed int32 -> float conversion never sees bit 31.
template <int BITS>
constexpr bool top_by_shift(int j) {
  return BITS * lane_codes<BITS>() == 32 && j == lane_codes<BITS>() - 1;
}

template <int BITS>
void prepare_x(const float* x, float* xp, float* xsum, int64_t K, int gs) {
  if (K <= 0) return;  // (inlined into moe_fused_run, g++ 12 otherwise warns of a memcpy of K = -16 floats)
  constexpr int W = lane_codes<BITS>();
  constexpr int BLOCK = 8 * W;
  const int64_t nblocks = K / BLOCK;
  if constexpr (W == 1) {
    std::memcpy(xp, x, sizeof(float) * K);
  } else {
    float pw[W];
    for (int j = 0; j < W; ++j) pw[j] = top_by_shift<BITS>(j) ? 1.0f : std::ldexp(1.0f, -BITS * j);
    for (int64_t b = 0; b < nblocks; ++b) {
      const float* xs = x + b * BLOCK;
      float* xd = xp + b * BLOCK;
      for (int j = 0; j < W; ++j)
        for (int i = 0; i < 8; ++i) xd[j * 8 + i] = xs[W * i + j] * pw[j];
    }
  }
  for (int64_t g = 0; g < K / gs; ++g) {
    float t = 0.f;
    for (int k = 0; k < gs; ++k) t += x[g * gs + k];
    xsum[g] = t;
  }
}

inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  __m128 hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 sh = _mm_movehdup_ps(lo);
  __m128 s = _mm_add_ps(lo, sh);
  sh = _mm_movehl_ps(sh, s);
  s = _mm_add_ss(s, sh);
  return _mm_cvtss_f32(s);
}

// Per-lane values of a per-group array for a block of BLOCK codes starting at k0 (lane i holds codes
// k0 + (BLOCK/8)*i ..., all in group (k0 + (BLOCK/8)*i) / GS).
template <int BLOCK, int GS, bool BF16>
inline __m256 lane_groups(const void* a, int64_t gbase, int64_t k0) {
  const int64_t g0 = gbase + k0 / GS;
  if constexpr (BLOCK <= GS) {
    return _mm256_set1_ps(load_scale<BF16>(a, g0));
  } else if constexpr (BLOCK == 2 * GS) {
    return _mm256_setr_m128(_mm_set1_ps(load_scale<BF16>(a, g0)), _mm_set1_ps(load_scale<BF16>(a, g0 + 1)));
  } else {
    static_assert(BLOCK == 4 * GS, "unsupported block/group combination");
    const float s0 = load_scale<BF16>(a, g0), s1 = load_scale<BF16>(a, g0 + 1);
    const float s2 = load_scale<BF16>(a, g0 + 2), s3 = load_scale<BF16>(a, g0 + 3);
    return _mm256_setr_ps(s0, s0, s1, s1, s2, s2, s3, s3);
  }
}

// sum_g b[g] * xsum[g] over one row's groups.
template <bool BF16>
inline float bias_dot(const void* bi, int64_t gbase, const float* xsum, int64_t G) {
  __m256 acc = _mm256_setzero_ps();
  int64_t g = 0;
  for (; g + 8 <= G; g += 8) {
    __m256 b;
    if constexpr (BF16) {
      __m128i h = _mm_loadu_si128((const __m128i*)(static_cast<const uint16_t*>(bi) + gbase + g));
      b = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    } else {
      b = _mm256_loadu_ps(static_cast<const float*>(bi) + gbase + g);
    }
    acc = _mm256_fmadd_ps(b, _mm256_loadu_ps(xsum + g), acc);
  }
  float r = hsum(acc);
  for (; g < G; ++g) r += load_scale<BF16>(bi, gbase + g) * xsum[g];
  return r;
}

// One output row, bits 2/3/4: y = sum_g s_g * (sum_{k in g} q_k x_k) + sum_g b_g * xsum_g.
template <int BITS, int GS, bool BF16>
float row_fact(const uint32_t* row, const void* sc, const void* bi, int64_t gbase, const float* xp,
               const float* xsum, const float* x, int64_t K) {
  constexpr int W = lane_codes<BITS>();
  constexpr int BLOCK = 8 * W;
  constexpr int BLOCK_BYTES = BLOCK * BITS / 8;  // 32 (2/4 bits) or 24 (3 bits)
  constexpr int SB = BLOCK > GS ? BLOCK : GS;    // codes per scale application
  constexpr int BPG = SB / BLOCK;                // blocks per scale application
  const int64_t nsb = K / SB;
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(row);
  const __m256i shuf3 = _mm256_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1,  //
                                         4, 5, 6, -1, 7, 8, 9, -1, 10, 11, 12, -1, 13, 14, 15, -1);
  __m256 tot0 = _mm256_setzero_ps(), tot1 = _mm256_setzero_ps();
  for (int64_t sbi = 0; sbi < nsb; ++sbi) {
    __m256 a0, a1, a2, a3, a4, a5, a6, a7;
    for (int bb = 0; bb < BPG; ++bb) {
      const int64_t blk = sbi * BPG + bb;
      const uint8_t* p = bytes + blk * BLOCK_BYTES;
      __m256i v;
      if constexpr (BITS == 3) {
        // lane i <- bytes [3i, 3i+3) of the 24-byte block (zero-extended 24-bit value holding 8 codes).
        __m256i raw = _mm256_loadu2_m128i((const __m128i*)(p + 8), (const __m128i*)p);
        v = _mm256_shuffle_epi8(raw, shuf3);
      } else {
        v = _mm256_loadu_si256((const __m256i*)p);
      }
      const float* xb = xp + blk * BLOCK;
#define FMOE_CODE(J)                                                                                   \
  (top_by_shift<BITS>(J) ? _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 32 - BITS))                         \
                         : _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(((1 << BITS) - 1) << (BITS * (J))))))
#define FMOE_FIRST(J, A) A = (bb == 0) ? _mm256_mul_ps(FMOE_CODE(J), _mm256_loadu_ps(xb + (J) * 8)) \
                                       : _mm256_fmadd_ps(FMOE_CODE(J), _mm256_loadu_ps(xb + (J) * 8), A);
#define FMOE_NEXT(J, A) A = _mm256_fmadd_ps(FMOE_CODE(J), _mm256_loadu_ps(xb + (J) * 8), A);
      FMOE_FIRST(0, a0) FMOE_FIRST(1, a1) FMOE_FIRST(2, a2) FMOE_FIRST(3, a3)
      FMOE_FIRST(4, a4) FMOE_FIRST(5, a5) FMOE_FIRST(6, a6) FMOE_FIRST(7, a7)
      if constexpr (W == 16) {
        FMOE_NEXT(8, a0) FMOE_NEXT(9, a1) FMOE_NEXT(10, a2) FMOE_NEXT(11, a3)
        FMOE_NEXT(12, a4) FMOE_NEXT(13, a5) FMOE_NEXT(14, a6) FMOE_NEXT(15, a7)
      }
#undef FMOE_NEXT
#undef FMOE_FIRST
#undef FMOE_CODE
    }
    const __m256 a = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                                   _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    const __m256 s = lane_groups<BLOCK, GS, BF16>(sc, gbase, sbi * SB);
    if (sbi & 1)
      tot1 = _mm256_fmadd_ps(s, a, tot1);
    else
      tot0 = _mm256_fmadd_ps(s, a, tot0);
  }
  float r = hsum(_mm256_add_ps(tot0, tot1));
  r += bias_dot<BF16>(bi, gbase, xsum, K / GS);
  for (int64_t k = nsb * SB; k < K; ++k)  // tail (K not a multiple of the block): scale part only
    r += static_cast<float>(code_at(row, k, BITS)) * load_scale<BF16>(sc, gbase + k / GS) * x[k];
  return r;
}

// One output row, 8 bits: dequantize (fma(q, s, b)) then fma with x, natural order.
template <int GS, bool BF16>
float row_q8(const uint32_t* row, const void* sc, const void* bi, int64_t gbase, const float* x, int64_t K) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(),
         acc3 = _mm256_setzero_ps();
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(row);
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {  // GS >= 32: one group per iteration
    const int64_t g = gbase + k / GS;
    const __m256 s = _mm256_set1_ps(load_scale<BF16>(sc, g));
    const __m256 b = _mm256_set1_ps(load_scale<BF16>(bi, g));
    const uint8_t* p = bytes + k;
    __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(p + 0))));
    __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(p + 8))));
    __m256 w2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(p + 16))));
    __m256 w3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(p + 24))));
    acc0 = _mm256_fmadd_ps(_mm256_fmadd_ps(w0, s, b), _mm256_loadu_ps(x + k + 0), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_fmadd_ps(w1, s, b), _mm256_loadu_ps(x + k + 8), acc1);
    acc2 = _mm256_fmadd_ps(_mm256_fmadd_ps(w2, s, b), _mm256_loadu_ps(x + k + 16), acc2);
    acc3 = _mm256_fmadd_ps(_mm256_fmadd_ps(w3, s, b), _mm256_loadu_ps(x + k + 24), acc3);
  }
  float r = hsum(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
  if (k < K) r += row_scalar<BF16>(row, sc, bi, gbase, x, k, K, 8, GS);
  return r;
}

// ---------------------------------------------------------------------------------------------------------------
// Fast path: int16 activations.  x is quantized per group g to x16 = rint(x / xs_g), xs_g = max|x_g| / 32767
// (error <= 2^-16 of the group's largest |x|), codes are unpacked into 16-bit lanes and multiplied with vpmaddwd
// (exact int32 products and pair sums), and each group's int32 sum is scaled in float32:
//   y = sum_g s_g * xs_g * (sum_{k in g} q_k x16_k) + sum_g b_g * xsum_g          (xsum_g exact float32 sums of x)
// Per dword lane i of a block, step j yields the pair (code W*i + j, code W*i + W/2 + j) in its two 16-bit halves.
// W = codes per 32-bit lane: bits 2 -> 16, 3 -> 8 (24-bit lanes made by a byte shuffle), 4 -> 8, 8 -> 4.
template <int BITS>
constexpr int i16_lane_codes() {
  return BITS == 2 ? 16 : ((BITS == 3 || BITS == 4) ? 8 : 4);  // 5, 6, 8 bits: 4 codes per lane
}

// 2 bits (and 4 bits with FMOE_SPLIT_BYTES=2) use the "split int16" byte layout instead (see row_b): the 15-bit activation x16 = 256*hi + lo is
// stored as two signed bytes and multiplied with unsigned code bytes by vpmaddubsw.
// Which widths use it: 2 bits (1 thread on Zen 3, hot 124 -> 120 us, cold 143 -> 139 us per 1024x4096).  4 bits works
// too (FMOE_SPLIT_BYTES=2 selects it, tested) but measured 2-3% slower than the int16 layout on Zen 3 (hot 138 vs
// 141 us), so it is off; with VNNI (vpdpbusd) it needs fewer instructions than vpdpwssd and may pay on AVX-512 hosts
// (not measured: no such host here).  0: int16 layout for every width.
#ifndef FMOE_SPLIT_BYTES
#define FMOE_SPLIT_BYTES 1
#endif
template <int BITS>
constexpr bool split_bytes() {
  return (FMOE_SPLIT_BYTES >= 1 && BITS == 2) || (FMOE_SPLIT_BYTES >= 2 && BITS == 4);
}

// Split-int16 activations (bits 2 and 4; see split_bytes): x16 = rint(x / xs_g), xs_g = max|x_g| / 32639, so that x16 = 256*hi + lo
// with hi, lo both in [-128, 127] (lo = the low byte of x16 read as signed, hi = (x16 - lo) / 256).  Block b (32 bytes
// of codes = BLOCK = 32 * T codes, T = 8 / BITS codes per byte; byte j holds codes T*j .. T*j + T-1, LSB first) has
// 2 * BLOCK bytes of x: for t = 0..T-1, 32 bytes hi then 32 bytes lo, byte j of either = code T*j + t.
inline bool all_finite(const float* x, int64_t K) {
  const __m256i e = _mm256_set1_epi32(0x7f800000);
  __m256i bad = _mm256_setzero_si256();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256i v = _mm256_and_si256(_mm256_loadu_si256((const __m256i*)(x + k)), e);
    bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(v, e));
  }
  if (!_mm256_testz_si256(bad, bad)) return false;
  for (; k < K; ++k)
    if (!std::isfinite(x[k])) return false;
  return true;
}

// x16 = rint(x * qmax / max|x_g|) per group g (AVX2; round to nearest even, the MXCSR default, as nearbyint), with
// xscale[g] = max|x_g| / qmax and xsum[g] = the group's float32 sum of x.  Returns q (a per-thread buffer of K).
inline int16_t* quantize_groups(const float* x, float* xscale, float* xsum, int64_t K, int gs, float qmax) {
  thread_local std::vector<int16_t> qv;
  if (qv.size() < static_cast<size_t>(K)) qv.resize(static_cast<size_t>(K));
  int16_t* q = qv.data();
  const int64_t G = K / gs;
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int64_t g = 0; g < G; ++g) {
    const float* xg = x + g * gs;
    int k = 0;
    __m256 vmx = _mm256_setzero_ps(), vsum = _mm256_setzero_ps();
    for (; k + 8 <= gs; k += 8) {
      const __m256 v = _mm256_loadu_ps(xg + k);
      vmx = _mm256_max_ps(vmx, _mm256_and_ps(v, absmask));
      vsum = _mm256_add_ps(vsum, v);
    }
    // horizontal max (x is finite here: the callers check all_finite first)
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(vmx), _mm256_extractf128_ps(vmx, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    float mx = _mm_cvtss_f32(m);
    float sum = hsum(vsum);
    for (; k < gs; ++k) {
      mx = std::fmax(mx, std::fabs(xg[k]));
      sum += xg[k];
    }
    const float inv = mx > 0.f ? qmax / mx : 0.f;
    const __m256 vinv = _mm256_set1_ps(inv);
    k = 0;
    for (; k + 16 <= gs; k += 16) {  // |x * inv| <= qmax (+ rounding), packs saturates at 32767 anyway
      const __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xg + k), vinv));
      const __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xg + k + 8), vinv));
      _mm256_storeu_si256((__m256i*)(q + g * gs + k), _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8));
    }
    for (; k < gs; ++k) q[g * gs + k] = static_cast<int16_t>(std::nearbyint(xg[k] * inv));
    xscale[g] = mx / qmax;
    xsum[g] = sum;
  }
  return q;
}

template <int BITS>
void prepare_xb(const float* x, int8_t* xb, float* xscale, float* xsum, int64_t K, int gs) {
  constexpr int T = 8 / BITS;
  constexpr int BLOCK = 32 * T;
  const int16_t* q = quantize_groups(x, xscale, xsum, K, gs, 32639.0f);
  const int64_t nblocks = K / BLOCK;
  int64_t b0 = 0;
  if constexpr (T == 4) {
    // 2 bits, the same layout with shuffles (the scalar loop below took ~4.5 us of a 1024x4096 call at K = 4096).
    // Per chunk c of 32 values: X = [q 0..7 | q 16..23], Y = [q 8..15 | q 24..31] (16-bit), so that a byte pack puts
    // q 0..15 in the low lane and q 16..31 in the high lane; a byte shuffle then gathers dword t = values 4i + t of
    // its lane, a dword permute pairs the lanes (qword t = the chunk's 8 bytes of step t), and a 4x4 qword transpose
    // over the 4 chunks of the block makes step t's 32 bytes.
    const __m256i gather4 = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,  //
                                             0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m256i pair = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (; b0 < nblocks; ++b0) {
      const __m256i* qs = reinterpret_cast<const __m256i*>(q + b0 * BLOCK);
      __m256i H[4], L[4];
      for (int c = 0; c < 4; ++c) {
        const __m256i A = _mm256_loadu_si256(qs + 2 * c), B = _mm256_loadu_si256(qs + 2 * c + 1);
        const __m256i X = _mm256_permute2x128_si256(A, B, 0x20), Y = _mm256_permute2x128_si256(A, B, 0x31);
        // lo = the low byte as signed, hi = (v - lo) / 256 (exact: |x16| <= 32639)
        const __m256i lx = _mm256_srai_epi16(_mm256_slli_epi16(X, 8), 8), ly = _mm256_srai_epi16(_mm256_slli_epi16(Y, 8), 8);
        const __m256i hx = _mm256_srai_epi16(_mm256_sub_epi16(X, lx), 8), hy = _mm256_srai_epi16(_mm256_sub_epi16(Y, ly), 8);
        H[c] = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(_mm256_packs_epi16(hx, hy), gather4), pair);
        L[c] = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(_mm256_packs_epi16(lx, ly), gather4), pair);
      }
      __m256i* xd = reinterpret_cast<__m256i*>(xb + b0 * 2 * BLOCK);
      const __m256i* src[2] = {H, L};
      for (int h = 0; h < 2; ++h) {
        const __m256i* V = src[h];
        const __m256i lo01 = _mm256_unpacklo_epi64(V[0], V[1]), hi01 = _mm256_unpackhi_epi64(V[0], V[1]);
        const __m256i lo23 = _mm256_unpacklo_epi64(V[2], V[3]), hi23 = _mm256_unpackhi_epi64(V[2], V[3]);
        _mm256_storeu_si256(xd + 0 * 2 + h, _mm256_permute2x128_si256(lo01, lo23, 0x20));  // step 0
        _mm256_storeu_si256(xd + 1 * 2 + h, _mm256_permute2x128_si256(hi01, hi23, 0x20));  // step 1
        _mm256_storeu_si256(xd + 2 * 2 + h, _mm256_permute2x128_si256(lo01, lo23, 0x31));  // step 2
        _mm256_storeu_si256(xd + 3 * 2 + h, _mm256_permute2x128_si256(hi01, hi23, 0x31));  // step 3
      }
    }
  }
  for (int64_t b = b0; b < nblocks; ++b) {
    const int16_t* qs = q + b * BLOCK;
    int8_t* xd = xb + b * 2 * BLOCK;
    for (int t = 0; t < T; ++t)
      for (int j = 0; j < 32; ++j) {
        const int v = qs[T * j + t];
        const int lo = static_cast<int8_t>(static_cast<uint8_t>(v & 0xff));
        xd[t * 64 + j] = static_cast<int8_t>((v - lo) >> 8);
        xd[t * 64 + 32 + j] = static_cast<int8_t>(lo);
      }
  }
}

// 3 bits: a 24-byte block of 8 triples (3 bytes, 8 codes each) as 8 dwords whose two 16-bit halves
// hold 4 codes at bits 0, 3, 6, 9 each: per 128-bit half h (triples 4h..4h+3), dword 0 = the 16-bit windows at byte 0
// of triples 0 and 1 (codes 0..3 of each), dword 1 the same of triples 2 and 3, dwords 2 and 3 the windows at byte 1
// (codes 3..7 at bits 1, 4, 7, 10, 13) of triples 0, 1 and 2, 3, shifted right by 4 per dword (vpsrlvd: codes 4..7
// at 0, 3, 6, 9; the low half's bits 12..15 take the high half's low bits, above every code read). Step j then
// takes (v >> 3j) & 7 in every 16-bit lane, codes j (dwords 0, 1) and 4 + j (dwords 2, 3) of its triples. (Session
// 10: against dwords of one triple each, whose low half a vpmullw shifted into line with the high one, one thread
// 2-6% faster on 4096-code rows on Zen 3, the same on 1024-code rows: bench/results/kernels_2core_session10.md.)
inline __m256i code_block3(const uint8_t* p) {
  const __m256i shuf = _mm256_setr_epi8(0, 1, 3, 4, 6, 7, 9, 10, 1, 2, 4, 5, 7, 8, 10, 11,  //
                                        4, 5, 7, 8, 10, 11, 13, 14, 5, 6, 8, 9, 11, 12, 14, 15);
  const __m256i raw = _mm256_loadu2_m128i((const __m128i*)(p + 8), (const __m128i*)p);
  return _mm256_srlv_epi32(_mm256_shuffle_epi8(raw, shuf), _mm256_setr_epi32(0, 0, 4, 4, 0, 0, 4, 4));
}
// The same dwords from one 32-byte load at p - 4 (bytes p - 4 .. p + 27: the low lane holds block bytes 0..11 at 4..15,
// the high lane bytes 12..23 at 0..11), instead of two 16-byte loads and an insert.  It reads 4 bytes on each side
// of the block (not used), so callers take it only where those lie inside the same row (not a row's first or last
// block).  Session 12 (docs/log/kernels.md), Zen 3: one 4096-code row from L1 7.2 -> 6.8 cycles per 64 codes, four
// 1024-code rows 7.9 -> 6.7; `fmoe bench kernels --threads 1` 1024x4096 176-181 -> 162-168 us, 4096x1024 187-191 ->
// 163-165 us.
inline __m256i code_block3_inner(const uint8_t* p) {
  const __m256i shuf = _mm256_setr_epi8(4, 5, 7, 8, 10, 11, 13, 14, 5, 6, 8, 9, 11, 12, 14, 15,  //
                                        0, 1, 3, 4, 6, 7, 9, 10, 1, 2, 4, 5, 7, 8, 10, 11);
  const __m256i raw = _mm256_loadu_si256((const __m256i*)(p - 4));
  return _mm256_srlv_epi32(_mm256_shuffle_epi8(raw, shuf), _mm256_setr_epi32(0, 0, 4, 4, 0, 0, 4, 4));
}

template <int BITS>
void prepare_xq(const float* x, int16_t* xq, float* xscale, float* xsum, int64_t K, int gs) {
  if constexpr (split_bytes<BITS>()) {
    prepare_xb<BITS>(x, reinterpret_cast<int8_t*>(xq), xscale, xsum, K, gs);
    return;
  }
  constexpr int W = i16_lane_codes<BITS>();
  constexpr int H = W / 2;
  constexpr int BLOCK = 8 * W;
  const int16_t* q = quantize_groups(x, xscale, xsum, K, gs, 32767.0f);
  const int64_t nblocks = K / BLOCK;
  int64_t b0 = 0;
  if constexpr (BITS == 4 || BITS == 3) {
    // the same permutation with shuffles: output vector j holds q[4l + j] in 16-bit lane l (l = 0..15); 3 bits
    // (code_block3's dwords: per 128-bit half, codes j of triples 0..3, then codes 4 + j) take the 16-bit lanes of
    // each half in the order 0, 2, 4, 6, 1, 3, 5, 7 of that
    const __m256i sh = _mm256_setr_epi8(0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15,  //
                                        0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15);
    const __m256i odd3 = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,  //
                                          0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
    auto store = [&](__m256i* d, __m256i v) {
      _mm256_storeu_si256(d, BITS == 3 ? _mm256_shuffle_epi8(v, odd3) : v);
    };
    for (; b0 < nblocks; ++b0) {
      const __m256i* qs = reinterpret_cast<const __m256i*>(q + b0 * 64);
      // per 128-bit half: dword j = (q[8h + j], q[8h + 4 + j]) for the half's 8 values starting at 8h
      const __m256i A = _mm256_shuffle_epi8(_mm256_loadu_si256(qs), sh);
      const __m256i B = _mm256_shuffle_epi8(_mm256_loadu_si256(qs + 1), sh);
      const __m256i C = _mm256_shuffle_epi8(_mm256_loadu_si256(qs + 2), sh);
      const __m256i D = _mm256_shuffle_epi8(_mm256_loadu_si256(qs + 3), sh);
      const __m256i P0 = _mm256_permute2x128_si256(A, C, 0x20), P1 = _mm256_permute2x128_si256(A, C, 0x31);
      const __m256i P2 = _mm256_permute2x128_si256(B, D, 0x20), P3 = _mm256_permute2x128_si256(B, D, 0x31);
      const __m256i t0 = _mm256_unpacklo_epi32(P0, P1), t1 = _mm256_unpackhi_epi32(P0, P1);
      const __m256i t2 = _mm256_unpacklo_epi32(P2, P3), t3 = _mm256_unpackhi_epi32(P2, P3);
      __m256i* qd = reinterpret_cast<__m256i*>(xq + b0 * 64);
      store(qd + 0, _mm256_unpacklo_epi64(t0, t2));
      store(qd + 1, _mm256_unpackhi_epi64(t0, t2));
      store(qd + 2, _mm256_unpacklo_epi64(t1, t3));
      store(qd + 3, _mm256_unpackhi_epi64(t1, t3));
    }
  }
  for (int64_t b = b0; b < nblocks; ++b) {
    const int16_t* qs = q + b * BLOCK;
    int16_t* qd = xq + b * BLOCK;
    for (int j = 0; j < H; ++j)
      for (int i = 0; i < 8; ++i) {
        qd[j * 16 + 2 * i] = qs[W * i + j];
        qd[j * 16 + 2 * i + 1] = qs[W * i + H + j];
      }
  }
}

// comb[g] = s_g * xs_g for every group of the row (see row_comb).
template <bool BF16>
inline void row_comb(const void* sc, int64_t gbase, const float* xscale, float* comb, int64_t G) {
  int64_t g = 0;
  for (; g + 8 <= G; g += 8) {
    __m256 s;
    if constexpr (BF16) {
      __m128i h = _mm_loadu_si128((const __m128i*)(static_cast<const uint16_t*>(sc) + gbase + g));
      s = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    } else {
      s = _mm256_loadu_ps(static_cast<const float*>(sc) + gbase + g);
    }
    _mm256_storeu_ps(comb + g, _mm256_mul_ps(s, _mm256_loadu_ps(xscale + g)));
  }
  for (; g < G; ++g) comb[g] = load_scale<BF16>(sc, gbase + g) * xscale[g];
}

// Lane vector of comb for a block of BLOCK codes starting at code k0.
template <int BLOCK, int GS>
inline __m256 comb_lanes(const float* comb, int64_t k0) {
  const float* c = comb + k0 / GS;
  if constexpr (BLOCK <= GS) {
    return _mm256_broadcast_ss(c);
  } else if constexpr (BLOCK == 2 * GS) {
    return _mm256_setr_m128(_mm_broadcast_ss(c), _mm_broadcast_ss(c + 1));
  } else {
    static_assert(BLOCK == 4 * GS, "unsupported block/group combination");
    const __m256 v = _mm256_castps128_ps256(_mm_loadu_ps(c));
    return _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
  }
}

// One block of packed codes in the int16-lane layout both row_i16 kernels multiply: 32 bytes as loaded, or for 3 bits
// code_block3's dwords.  6 bits: 24 bytes spread so that dword lane i holds the 3-byte triple i re-split into 12-bit
// halves at bits 0 and 16 (two codes each).  5 bits: a block is 20 bytes, lane i holds the
// 20 bits [20i, 20i+20) (4 codes), re-split into 10-bit halves at bits 0 and 16.
template <int BITS>
inline __m256i load_code_block(const uint8_t* p) {
  if constexpr (BITS == 5) {
    // low 128: bytes 0..15 (lanes 0-3 use bytes 0..9); high 128: bytes 4..19 (lanes 4-7 use bytes 10..19)
    const __m256i shuf5 = _mm256_setr_epi8(0, 1, 2, -1, 2, 3, 4, -1, 5, 6, 7, -1, 7, 8, 9, -1,  //
                                           6, 7, 8, -1, 8, 9, 10, -1, 11, 12, 13, -1, 13, 14, 15, -1);
    const __m256i raw = _mm256_loadu2_m128i((const __m128i*)(p + 4), (const __m128i*)p);
    const __m256i t = _mm256_and_si256(
        _mm256_srlv_epi32(_mm256_shuffle_epi8(raw, shuf5), _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4)),
        _mm256_set1_epi32(0xFFFFF));
    return _mm256_or_si256(_mm256_and_si256(t, _mm256_set1_epi32(0x3FF)),
                           _mm256_slli_epi32(_mm256_and_si256(t, _mm256_set1_epi32(0xFFC00)), 6));
  } else if constexpr (BITS == 3) {
    return code_block3(p);
  } else if constexpr (BITS == 6) {
    const __m256i shuf3 = _mm256_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1,  //
                                           4, 5, 6, -1, 7, 8, 9, -1, 10, 11, 12, -1, 13, 14, 15, -1);
    const __m256i raw = _mm256_loadu2_m128i((const __m128i*)(p + 8), (const __m128i*)p);
    const __m256i t = _mm256_shuffle_epi8(raw, shuf3);
    return _mm256_or_si256(_mm256_and_si256(t, _mm256_set1_epi32(0xFFF)),
                           _mm256_slli_epi32(_mm256_and_si256(t, _mm256_set1_epi32(0xFFF000)), 4));
  } else {
    return _mm256_loadu_si256((const __m256i*)p);
  }
}

// Split-int16 row kernel (bits 2 and 4; see split_bytes), R rows of x against one weight row (R = 1: decode; R = 4: prefill, the
// same arithmetic per row, so 4-row results are bit-identical to single rows).  Per 32-byte block: T code vectors
// (one code per byte: shift within 16-bit lanes + AND), each multiplied with the hi and the lo bytes of x by
// vpmaddubsw (u8 x s8 -> int16 pair sums, exact: |sum| <= 2 * 15 * 128); the int16 sums of a group stay below 2^15
// (4 bits: 15360 at group 128; 2 bits: 3072), then 256 * hi + lo is formed by two vpmaddwd into int32 and scaled
// in float32 as in row_i16.  Per 64 codes at 4 bits: 3 unpack ops, 4 vpmaddubsw, 2 adds, 2 vpmaddwd + 1 add,
// convert, FMA (vs 7 + 4 + 3 + 2 for the int16 layout); per 128 codes at 2 bits 7 + 8 + 6 + 3 + 2 (vs 15 + 8 + 7 + 4).
// Fewer instructions did not make the 4-bit loop faster on Zen 3 (both ~5-6 cycles per 64 codes from L1), see
// docs/log/kernels.md.
template <int BITS, int GS, bool BF16, int R>
inline void row_b(const uint32_t* row, const void* bi, int64_t gbase, const int8_t* const* xb,
                  const float* const* comb, const float* const* xsum, int64_t K, float* out) {
  constexpr int T = 8 / BITS;
  constexpr int BLOCK = 32 * T;
  constexpr int SB = BLOCK > GS ? BLOCK : GS;
  constexpr int BPG = SB / BLOCK;
  const __m256i m8 = _mm256_set1_epi8(static_cast<char>((1 << BITS) - 1));
  const __m256i k256 = _mm256_set1_epi16(256), k1 = _mm256_set1_epi16(1);
  const int64_t nsb = K / SB;
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(row);
  __m256 tot[R][2];
  for (int r = 0; r < R; ++r) tot[r][0] = tot[r][1] = _mm256_setzero_ps();
  for (int64_t sbi = 0; sbi < nsb; ++sbi) {
    __m256i ph[R], pl[R];
    for (int bb = 0; bb < BPG; ++bb) {
      const int64_t blk = sbi * BPG + bb;
      const uint8_t* p = bytes + blk * 32;
      if constexpr (FMOE_PF > 0)
        if ((blk & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(p) + FMOE_PF, FMOE_PF_HINT);
      const __m256i v = _mm256_loadu_si256((const __m256i*)p);
      FMOE_UNROLL
      for (int t = 0; t < T; ++t) {
        const __m256i c = _mm256_and_si256(t == 0 ? v : _mm256_srli_epi16(v, BITS * t), m8);
        FMOE_UNROLL
        for (int r = 0; r < R; ++r) {
          const __m256i* xv = reinterpret_cast<const __m256i*>(xb[r] + blk * 2 * BLOCK) + 2 * t;
#if FMOE_VNNI
          // vpdpbusd: the same u8 x s8 products, summed 4 at a time straight into int32 (no int16 stage)
          if (bb == 0 && t == 0) ph[r] = pl[r] = _mm256_setzero_si256();
          ph[r] = _mm256_dpbusd_epi32(ph[r], c, _mm256_loadu_si256(xv));
          pl[r] = _mm256_dpbusd_epi32(pl[r], c, _mm256_loadu_si256(xv + 1));
#else
          const __m256i h = _mm256_maddubs_epi16(c, _mm256_loadu_si256(xv));
          const __m256i l = _mm256_maddubs_epi16(c, _mm256_loadu_si256(xv + 1));
          if (bb == 0 && t == 0) {
            ph[r] = h;
            pl[r] = l;
          } else {
            ph[r] = _mm256_add_epi16(ph[r], h);
            pl[r] = _mm256_add_epi16(pl[r], l);
          }
#endif
        }
      }
    }
    FMOE_UNROLL
    for (int r = 0; r < R; ++r) {  // two accumulators (even / odd groups): the FMA latency is not the bound
#if FMOE_VNNI
      (void)k1;
      (void)k256;
      const __m256i i32 = _mm256_add_epi32(_mm256_slli_epi32(ph[r], 8), pl[r]);  // exact, the same sums as AVX2
#else
      const __m256i i32 = _mm256_add_epi32(_mm256_madd_epi16(ph[r], k256), _mm256_madd_epi16(pl[r], k1));
#endif
      const __m256 f = _mm256_cvtepi32_ps(i32), cl = comb_lanes<BLOCK, GS>(comb[r], sbi * SB);
      if (sbi & 1)
        tot[r][1] = _mm256_fmadd_ps(cl, f, tot[r][1]);
      else
        tot[r][0] = _mm256_fmadd_ps(cl, f, tot[r][0]);
    }
  }
  for (int r = 0; r < R; ++r)
    out[r] = hsum(_mm256_add_ps(tot[r][0], tot[r][1])) + bias_dot<BF16>(bi, gbase, xsum[r], K / GS);
}

template <int BITS, int GS, bool BF16>
float row_i16(const uint32_t* row, const void* sc, const void* bi, int64_t gbase, const int16_t* xq,
              const float* comb, const float* xsum, const float* x, int64_t K) {
  if constexpr (split_bytes<BITS>()) {
    constexpr int SB = 32 * 8 / BITS > GS ? 32 * 8 / BITS : GS;
    const int8_t* xb = reinterpret_cast<const int8_t*>(xq);
    float r;
    row_b<BITS, GS, BF16, 1>(row, bi, gbase, &xb, &comb, &xsum, K, &r);
    for (int64_t k = K / SB * SB; k < K; ++k)  // tail (K not a multiple of the block): scale part only, exact x
      r += static_cast<float>(code_at(row, k, BITS)) * load_scale<BF16>(sc, gbase + k / GS) * x[k];
    return r;
  }
  constexpr int W = i16_lane_codes<BITS>();
  constexpr int H = W / 2;
  constexpr int BLOCK = 8 * W;
  constexpr int BLOCK_BYTES = BLOCK * BITS / 8;  // 32, or 24 for 3 bits
  constexpr int SB = BLOCK > GS ? BLOCK : GS;
  constexpr int BPG = SB / BLOCK;
  constexpr uint32_t M1 = (1u << BITS) - 1u;
  const __m256i mask = _mm256_set1_epi32(static_cast<int>(M1 | (M1 << 16)));
  const int64_t nsb = K / SB;
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(row);
  __m256 tot = _mm256_setzero_ps();
  for (int64_t sbi = 0; sbi < nsb; ++sbi) {
    __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
    for (int bb = 0; bb < BPG; ++bb) {
      const int64_t blk = sbi * BPG + bb;
      const uint8_t* p = bytes + blk * BLOCK_BYTES;
      const __m256i v = load_code_block<BITS>(p);
      if constexpr (FMOE_PF > 0)  // about one prefetch per 64-byte line
        if ((blk & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(p) + FMOE_PF, FMOE_PF_HINT);
      const __m256i* xb = reinterpret_cast<const __m256i*>(xq + blk * BLOCK);
#define FMOE_I16(J, ACC)                                                                              \
  {                                                                                                   \
    __m256i c = _mm256_and_si256((J) == 0 ? v : _mm256_srli_epi32(v, (J) * BITS), mask);              \
    ACC = FMOE_DPWSSD(ACC, c, _mm256_loadu_si256(xb + (J)));                                          \
  }
      FMOE_I16(0, acc0)
      if constexpr (H > 1) FMOE_I16(1, acc1)
      if constexpr (H > 2) { FMOE_I16(2, acc0) FMOE_I16(3, acc1) }
      if constexpr (H > 4) { FMOE_I16(4, acc0) FMOE_I16(5, acc1) FMOE_I16(6, acc0) FMOE_I16(7, acc1) }
#undef FMOE_I16
    }
    const __m256 f = _mm256_cvtepi32_ps(_mm256_add_epi32(acc0, acc1));
    tot = _mm256_fmadd_ps(comb_lanes<BLOCK, GS>(comb, sbi * SB), f, tot);
  }
  float r = hsum(tot);
  r += bias_dot<BF16>(bi, gbase, xsum, K / GS);
  for (int64_t k = nsb * SB; k < K; ++k)  // tail (K not a multiple of the block): scale part only, exact x
    r += static_cast<float>(code_at(row, k, BITS)) * load_scale<BF16>(sc, gbase + k / GS) * x[k];
  return r;
}

// Four rows of x at once against one weight row (prefill): each code vector is decoded once and multiplied with the
// four activation rows.  Same arithmetic as row_i16.  Only for K a multiple of the block (no scalar tail).
template <int BITS, int GS, bool BF16>
void row_i16_x4(const uint32_t* row, const void* bi, int64_t gbase, const int16_t* const* xq,
                const float* const* comb, const float* const* xsum, int64_t K, float* out) {
  if constexpr (split_bytes<BITS>()) {
    const int8_t* xb[4];
    for (int r = 0; r < 4; ++r) xb[r] = reinterpret_cast<const int8_t*>(xq[r]);
    row_b<BITS, GS, BF16, 4>(row, bi, gbase, xb, comb, xsum, K, out);
    return;
  }
  constexpr int W = i16_lane_codes<BITS>();
  constexpr int H = W / 2;
  constexpr int BLOCK = 8 * W;
  constexpr int BLOCK_BYTES = BLOCK * BITS / 8;
  constexpr int SB = BLOCK > GS ? BLOCK : GS;
  constexpr int BPG = SB / BLOCK;
  constexpr uint32_t M1 = (1u << BITS) - 1u;
  const __m256i mask = _mm256_set1_epi32(static_cast<int>(M1 | (M1 << 16)));
  const int64_t nsb = K / SB;
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(row);
  __m256 t0 = _mm256_setzero_ps(), t1 = _mm256_setzero_ps(), t2 = _mm256_setzero_ps(), t3 = _mm256_setzero_ps();
  for (int64_t sbi = 0; sbi < nsb; ++sbi) {
    __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256(), a2 = _mm256_setzero_si256(),
            a3 = _mm256_setzero_si256();
    for (int bb = 0; bb < BPG; ++bb) {
      const int64_t blk = sbi * BPG + bb;
      const uint8_t* p = bytes + blk * BLOCK_BYTES;
      const __m256i v = load_code_block<BITS>(p);
      const int64_t off = blk * BLOCK / 16;  // in __m256i units
      const __m256i* x0 = reinterpret_cast<const __m256i*>(xq[0]) + off;
      const __m256i* x1 = reinterpret_cast<const __m256i*>(xq[1]) + off;
      const __m256i* x2 = reinterpret_cast<const __m256i*>(xq[2]) + off;
      const __m256i* x3 = reinterpret_cast<const __m256i*>(xq[3]) + off;
      for (int j = 0; j < H; ++j) {
        const __m256i c = _mm256_and_si256(j == 0 ? v : _mm256_srl_epi32(v, _mm_cvtsi32_si128(j * BITS)), mask);
        a0 = FMOE_DPWSSD(a0, c, _mm256_loadu_si256(x0 + j));
        a1 = FMOE_DPWSSD(a1, c, _mm256_loadu_si256(x1 + j));
        a2 = FMOE_DPWSSD(a2, c, _mm256_loadu_si256(x2 + j));
        a3 = FMOE_DPWSSD(a3, c, _mm256_loadu_si256(x3 + j));
      }
    }
    t0 = _mm256_fmadd_ps(comb_lanes<BLOCK, GS>(comb[0], sbi * SB), _mm256_cvtepi32_ps(a0), t0);
    t1 = _mm256_fmadd_ps(comb_lanes<BLOCK, GS>(comb[1], sbi * SB), _mm256_cvtepi32_ps(a1), t1);
    t2 = _mm256_fmadd_ps(comb_lanes<BLOCK, GS>(comb[2], sbi * SB), _mm256_cvtepi32_ps(a2), t2);
    t3 = _mm256_fmadd_ps(comb_lanes<BLOCK, GS>(comb[3], sbi * SB), _mm256_cvtepi32_ps(a3), t3);
  }
  const __m256 tt[4] = {t0, t1, t2, t3};
  for (int r = 0; r < 4; ++r) out[r] = hsum(tt[r]) + bias_dot<BF16>(bi, gbase, xsum[r], K / GS);
}

// 4 bits, group size 64 or 128 (the int16 layout of row_i16): the float step deferred to 8 groups at a time.  Each
// group's int32 lane sums (exact, as in row_i16) stay in registers; 8 groups are reduced horizontally at once
// (unpack + add twice, then one cross-half add) into one vector holding the 8 groups' sums, converted once and scaled by
// the 8 groups' s_g * xs_g in one FMA, the bias term sum_g b_g * xsum_g taken in the same pass (no row_comb /
// bias_dot passes over the row's scales).  Per 64 codes: 3 shifts (16-bit lanes: the top nibble needs no AND),
// 3 ANDs, 4 vpmaddwd, 3 adds, plus ~2.6 ops of the 8-group reduction; the per-group convert + broadcast + FMA is
// gone.  Zen 3, one row from L1: 5.7-6.2 cycles per 64 codes (row_i16: 6.1-6.4); see docs/log/kernels.md.
// R rows of x against one weight row (R = 4: prefill), the same arithmetic per row: bit-identical to R = 1.
// 3 bits use the same scheme (row_defer): a 24-byte block of 64 codes becomes code_block3's dwords (one byte
// shuffle and one vpsrlvd: both 16-bit halves of every dword hold 4 codes at bits 0, 3, 6, 9), and step j is
// (v >> 3j) & 7 in 16-bit lanes: per 64 codes 1 shuffle + 1 variable shift + 3 shifts + 4 ANDs, vs a per-group
// convert + FMA in row_i16.  The int16 x layout is 4 bits' (W = 8, H = 4) with each 128-bit half's 16-bit lanes
// reordered (prepare_xq).
// 2 bits at group size 64 (split-byte layout, see row_b) defer too (row2_defer), when K is a multiple of 128 (whole
// 32-byte blocks: defer_k).
template <int BITS, int GS>
constexpr bool defer_groups() {
  return ((BITS == 4 || BITS == 3) && GS >= 64 && !split_bytes<BITS>()) || (BITS == 2 && GS == 64 && split_bytes<2>());
}
template <int BITS>
inline bool defer_k(int64_t K) {
  return BITS != 2 || K % 128 == 0;
}

// bf16 or float32 values a[i .. i+8) as 8 floats
template <bool BF16>
inline __m256 load8_scales(const void* a, int64_t i) {
  if constexpr (BF16) {
    const __m128i h = _mm_loadu_si128((const __m128i*)(static_cast<const uint16_t*>(a) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    return _mm256_loadu_ps(static_cast<const float*>(a) + i);
  }
}

// Lane sums of 4 consecutive blocks (or groups) for P products at once, in 256-bit registers (or 512-bit ones in the
// FMOE_ZMM kernels: the same ops per 256-bit half): block(i, a) fills a[P] with block i's int32 lanes; blocks from
// nb on count as zero. Out: per 128-bit lane [sum of b, b + 1, b + 2, b + 3] of that lane's 4 dwords.
// (vphaddd runs at 1 per 2 cycles on Zen 3; unpack + add: 3 ops at 1-2 per cycle each)
FMOE_INLINE inline __m256i pair_sum32(__m256i a, __m256i b) {
  return _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
}
FMOE_INLINE inline __m256i pair_sum64(__m256i a, __m256i b) {
  return _mm256_add_epi32(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));
}
#if FMOE_ZMM
FMOE_INLINE inline __m512i pair_sum32(__m512i a, __m512i b) {
  return _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
}
FMOE_INLINE inline __m512i pair_sum64(__m512i a, __m512i b) {
  return _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
}
#endif
template <class V, int P, class Block>
FMOE_INLINE inline void reduce4(Block&& block, int64_t b, int nb, V* q) {
  V a0[P], a1[P], h[P];
  block(b, a0);
  if (nb > 1) block(b + 1, a1); else for (int i = 0; i < P; ++i) a1[i] = V{};
  FMOE_UNROLL
  for (int i = 0; i < P; ++i) h[i] = pair_sum32(a0[i], a1[i]);  // per lane [a0_0+a0_2, a1_0+a1_2, a0_1+a0_3, ..]
  if (nb > 2) block(b + 2, a0); else for (int i = 0; i < P; ++i) a0[i] = V{};
  if (nb > 3) block(b + 3, a1); else for (int i = 0; i < P; ++i) a1[i] = V{};
  FMOE_UNROLL
  for (int i = 0; i < P; ++i) q[i] = pair_sum64(h[i], pair_sum32(a0[i], a1[i]));
}

// NW weight rows (rows[w], groups from gbase[w]; NW > 1: consecutive rows of one matrix, rows[w] = rows[0] + w
// rows) per pass: NW = 2 in decode gives the scheduler two independent chains and overlaps one row's tail (the
// 8-group reduction, the horizontal sum) with the other's loop; out[w * R + r].  Every (w, r) product does the same
// arithmetic in the same order as NW = 1, so the results are bit-identical (tested).
// s[w], b[w]: the scales and biases of groups g .. g + 7 of each of the NW weight rows (rows at gbase[w]); n < 8:
// the first n groups, zeros for the rest (a row's last G % 8 groups)
template <bool BF16, int NW>
FMOE_INLINE inline void group_scales(const void* sc, const void* bi, const int64_t* gbase, int64_t g, int n,
                                     __m256* s, __m256* b) {
  FMOE_UNROLL
  for (int w = 0; w < NW; ++w) {
    if (n == 8) {
      s[w] = load8_scales<BF16>(sc, gbase[w] + g);
      b[w] = load8_scales<BF16>(bi, gbase[w] + g);
      continue;
    }
    alignas(32) float sv[8] = {0}, bv[8] = {0};
    for (int i = 0; i < n; ++i) {
      sv[i] = load_scale<BF16>(sc, gbase[w] + g + i);
      bv[i] = load_scale<BF16>(bi, gbase[w] + g + i);
    }
    s[w] = _mm256_load_ps(sv);
    b[w] = _mm256_load_ps(bv);
  }
}

// The deferred kernels' walk over a row's G groups: 8 at a time (their sums, then the 8 groups' scales and biases
// of every weight row at once), the last G % 8 with zeros for the missing groups (xsc / xsum have 8 floats of
// padding past the last group: read, then multiplied by zero scales). step(g, n, s, b): groups g .. g + n.
template <bool BF16, int NW, class Step>
FMOE_INLINE inline void walk_groups8(int64_t G, const void* sc, const void* bi, const int64_t* gbase, Step&& step) {
  for (int64_t g = 0; g < G; g += 8) {
    const int n = static_cast<int>(std::min<int64_t>(8, G - g));
    __m256 s[NW], b[NW];
    group_scales<BF16, NW>(sc, bi, gbase, g, n, s, b);
    step(g, n, s, b);
  }
}

// Decode rows of at most this many codes go two weight rows per pass (row_defer NW = 2).  4096x1024, Zen 3:
// 1 thread hot 14.8 -> 16.7 GB/s, cold 13.9 -> 14.8, 2 threads cold 25.4 -> 25.7 (median of 6).  Longer rows lose:
// 2048x2048 cold 1 thread 16.0 -> 14.0, 2 threads 28.5 -> 22.6; 1024x4096 hot 120 -> 126 us.  (2 and 3 bits: multi_rows.)
#ifndef FMOE_PAIR_MAXK
#define FMOE_PAIR_MAXK 1024
#endif
// whether a pass of NW rows of K codes takes the pass-ahead prefetch (prefetch_block) (2 and 3 bits; 4 bits never)
template <int BITS, int NW>
constexpr bool pass_ahead(int64_t K) {
  return BITS != 4 && NW > 1 && K > FMOE_PAIR_MAXK;
}
// Software prefetch FMOE_PF bytes ahead in the weight stream, for block blk (BB bytes) of weight row w of NW
// contiguous rows read together. One row: a line every other 32-byte block. Several: one sequential stream over the
// NW rows, a line per 64 bytes of it (with a prefetch per row, 2 KB ahead of each, pairs were slower than single
// rows when cold: 4096x1024, 2 threads 21.1-23.7 vs 22.6-26.1 GB/s).
// ahead (pass_ahead: NW > 1, rows longer than FMOE_PAIR_MAXK codes, 2 and 3 bits, see multi_rows): each row
// prefetches the same block of the row NW rows below it, one pass ahead, a line per 64 bytes (the sequential stream
// above runs behind the far rows of a long group: 3 bits 1024 x 4096, 1 thread cold, 10.4 -> 5.7-8.0 GB/s with it,
// session 10).
template <int NW, int BB>
FMOE_INLINE inline void prefetch_block(const uint8_t* const* bytes, int64_t blk, int w, bool ahead = false) {
  if constexpr (FMOE_PF > 0) {
    if constexpr (NW == 1) {
      if ((blk & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(bytes[0] + blk * BB) + FMOE_PF, FMOE_PF_HINT);
    } else if (ahead) {
      if ((blk * BB) % 64 < BB)
        _mm_prefetch(reinterpret_cast<const char*>(bytes[w] + (bytes[1] - bytes[0]) * NW + blk * BB), FMOE_PF_HINT);
    } else if (w * 64 < BB * NW) {
      _mm_prefetch(reinterpret_cast<const char*>(bytes[0]) + FMOE_PF + blk * BB * NW + w * 64, FMOE_PF_HINT);
    }
  }
}

template <int BITS, int GS, bool BF16, int R, int NW = 1>
inline void row_defer34(const uint32_t* const* rows, const void* sc, const void* bi, const int64_t* gbase,
                      const int16_t* const* xq, const float* const* xsc, const float* const* xsum, int64_t K,
                      float* out) {
  // (instantiated for other widths by a runtime-guarded call in qmv_avx2, never run: see defer_groups)
  constexpr int BB = 8 * BITS;  // bytes per block of 64 codes: 32 (4 bits) or 24 (3 bits)
  constexpr int BPG = GS / 64;  // blocks per group
  constexpr int P = NW * R;     // products per pass, index w * R + r
  const __m256i m4 = _mm256_set1_epi16(BITS == 4 ? 0x000F : 0x0007);
  const int64_t G = K / GS;
  const bool ahead = pass_ahead<BITS, NW>(K);  // long rows (multi_rows): see prefetch_block
  [[maybe_unused]] const int64_t last_blk = K / 64 - 1;  // 3 bits: a row's last 64-code block (code_block3_inner)
  const uint8_t* bytes[NW];
  FMOE_UNROLL
  for (int w = 0; w < NW; ++w) bytes[w] = reinterpret_cast<const uint8_t*>(rows[w]);
  __m256 ft[P] = {}, bt[P] = {};  // zeros
  // int32 lane sums of group g for each (weight row, x row)
  auto group = [&](int64_t g, __m256i* a) FMOE_INLINE {
    FMOE_UNROLL
    for (int bb = 0; bb < BPG; ++bb) {
      const int64_t blk = g * BPG + bb;
      // row by row, each x block loaded again (L1 loads are cheap here): holding both rows' codes and x in
      // registers at once spilled the accumulators to the stack
      FMOE_UNROLL
      for (int w = 0; w < NW; ++w) {
        const uint8_t* p = bytes[w] + blk * BB;
        prefetch_block<NW, BB>(bytes, blk, w, ahead);
        __m256i c0, c1, c2, c3;
        if constexpr (BITS == 4) {
          const __m256i v = _mm256_loadu_si256((const __m256i*)p);
          c0 = _mm256_and_si256(v, m4);
          c1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
          c2 = _mm256_and_si256(_mm256_srli_epi16(v, 8), m4);
          c3 = _mm256_srli_epi16(v, 12);
        } else {  // 24 bytes, see code_block3 (one load for the row's inner blocks: code_block3_inner)
          const __m256i v = (blk == 0 || blk == last_blk) ? code_block3(p) : code_block3_inner(p);
          c0 = _mm256_and_si256(v, m4);
          c1 = _mm256_and_si256(_mm256_srli_epi16(v, 3), m4);
          c2 = _mm256_and_si256(_mm256_srli_epi16(v, 6), m4);
          c3 = _mm256_and_si256(_mm256_srli_epi16(v, 9), m4);
        }
        FMOE_UNROLL
        for (int r = 0; r < R; ++r) {
          const __m256i* xb = reinterpret_cast<const __m256i*>(xq[r] + blk * 64);
          __m256i& acc = a[w * R + r];
#if FMOE_VNNI
          __m256i s = bb == 0 ? _mm256_madd_epi16(c0, _mm256_loadu_si256(xb)) : FMOE_DPWSSD(acc, c0, _mm256_loadu_si256(xb));
          s = FMOE_DPWSSD(s, c1, _mm256_loadu_si256(xb + 1));
          s = FMOE_DPWSSD(s, c2, _mm256_loadu_si256(xb + 2));
          acc = FMOE_DPWSSD(s, c3, _mm256_loadu_si256(xb + 3));
#else
          const __m256i s = _mm256_add_epi32(
              _mm256_add_epi32(_mm256_madd_epi16(c0, _mm256_loadu_si256(xb)), _mm256_madd_epi16(c1, _mm256_loadu_si256(xb + 1))),
              _mm256_add_epi32(_mm256_madd_epi16(c2, _mm256_loadu_si256(xb + 2)), _mm256_madd_epi16(c3, _mm256_loadu_si256(xb + 3))));
          acc = bb == 0 ? s : _mm256_add_epi32(acc, s);
#endif
        }
      }
    }
  };
  // groups g .. g+3 (n valid; the others count as zero): per 128-bit half [sum g, g+1, g+2, g+3] of that half's lanes
  auto quad = [&](int64_t g, int n, __m256i* q) FMOE_INLINE { reduce4<__m256i, P>(group, g, n, q); };
  auto scale8 = [&](int64_t g, const __m256i* q0, const __m256i* q1, const __m256* s, const __m256* b) FMOE_INLINE {
    FMOE_UNROLL
    for (int w = 0; w < NW; ++w)
      FMOE_UNROLL
      for (int r = 0; r < R; ++r) {
        const int i = w * R + r;
        // [q0 lo | q1 hi] + [q0 hi | q1 lo] = the 8 groups' full sums
        const __m256i t = _mm256_add_epi32(_mm256_blend_epi32(q0[i], q1[i], 0xF0), _mm256_permute2x128_si256(q0[i], q1[i], 0x21));
        const __m256 comb = _mm256_mul_ps(s[w], _mm256_loadu_ps(xsc[r] + g));
        ft[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), comb, ft[i]);
        bt[i] = _mm256_fmadd_ps(b[w], _mm256_loadu_ps(xsum[r] + g), bt[i]);
      }
  };
  walk_groups8<BF16, NW>(G, sc, bi, gbase, [&](int64_t g, int n, const __m256* s, const __m256* b) FMOE_INLINE {
    __m256i q0[P], q1[P];
    quad(g, std::min(n, 4), q0);
    if (n > 4) quad(g + 4, n - 4, q1); else for (int i = 0; i < P; ++i) q1[i] = __m256i{};
    scale8(g, q0, q1, s, b);
  });
  FMOE_UNROLL
  for (int i = 0; i < P; ++i) out[i] = hsum(_mm256_add_ps(ft[i], bt[i]));
}

// 2 bits, group size 64, split-byte x layout (row_b's arithmetic per 32-byte block: the same exact int16 / int32
// sums), with the float step deferred as in row_defer34: a block holds 128 codes = groups 2b (dword lanes 0-3) and
// 2b+1 (lanes 4-7), so the unpack + add reduction of 4 blocks gives per 128-bit half [b0, b1, b2, b3] = groups
// [0, 2, 4, 6 | 1, 3, 5, 7] of the 8 (one vpermd puts them in order), converted once and scaled by the 8 groups'
// s_g * xs_g in one FMA, the bias term in the same pass (no row_comb / bias_dot passes, no per-block convert +
// broadcast + FMA).  K a multiple of 128 (defer_k).  Same (w, r) arithmetic for every NW / R: bit-identical.
template <bool BF16, int R, int NW = 1>
inline void row2_defer(const uint32_t* const* rows, const void* sc, const void* bi, const int64_t* gbase,
                       const int8_t* const* xb, const float* const* xsc, const float* const* xsum, int64_t K,
                       float* out) {
  constexpr int P = NW * R;
  const __m256i m8 = _mm256_set1_epi8(3);
  const __m256i k256 = _mm256_set1_epi16(256), k1 = _mm256_set1_epi16(1);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const int64_t G = K / 64;
  const bool ahead = pass_ahead<2, NW>(K);  // long rows (multi_rows): see prefetch_block
  const uint8_t* bytes[NW];
  FMOE_UNROLL
  for (int w = 0; w < NW; ++w) bytes[w] = reinterpret_cast<const uint8_t*>(rows[w]);
  __m256 ft[P] = {}, bt[P] = {};  // zeros
  // int32 lane sums of block blk (groups 2 blk, 2 blk + 1) for each (weight row, x row)
  auto block = [&](int64_t blk, __m256i* a) FMOE_INLINE {
    FMOE_UNROLL
    for (int w = 0; w < NW; ++w) {
      const uint8_t* p = bytes[w] + blk * 32;
      prefetch_block<NW, 32>(bytes, blk, w, ahead);
      const __m256i v = _mm256_loadu_si256((const __m256i*)p);
      __m256i ph[R], pl[R];
      FMOE_UNROLL
      for (int t = 0; t < 4; ++t) {
        const __m256i c = _mm256_and_si256(t == 0 ? v : _mm256_srli_epi16(v, 2 * t), m8);
        FMOE_UNROLL
        for (int r = 0; r < R; ++r) {
          const __m256i* xv = reinterpret_cast<const __m256i*>(xb[r] + blk * 256) + 2 * t;
#if FMOE_VNNI
          if (t == 0) ph[r] = pl[r] = _mm256_setzero_si256();
          ph[r] = _mm256_dpbusd_epi32(ph[r], c, _mm256_loadu_si256(xv));
          pl[r] = _mm256_dpbusd_epi32(pl[r], c, _mm256_loadu_si256(xv + 1));
#else
          const __m256i h = _mm256_maddubs_epi16(c, _mm256_loadu_si256(xv));
          const __m256i l = _mm256_maddubs_epi16(c, _mm256_loadu_si256(xv + 1));
          ph[r] = t == 0 ? h : _mm256_add_epi16(ph[r], h);
          pl[r] = t == 0 ? l : _mm256_add_epi16(pl[r], l);
#endif
        }
      }
      FMOE_UNROLL
      for (int r = 0; r < R; ++r) {
#if FMOE_VNNI
        a[w * R + r] = _mm256_add_epi32(_mm256_slli_epi32(ph[r], 8), pl[r]);
#else
        a[w * R + r] = _mm256_add_epi32(_mm256_madd_epi16(ph[r], k256), _mm256_madd_epi16(pl[r], k1));
#endif
      }
    }
  };
  // groups g .. g+7 (nb of the 4 blocks valid, the others zero) -> the 8 groups' sums in order
  auto oct = [&](int64_t g, int nb, __m256i* q) FMOE_INLINE {
    reduce4<__m256i, P>(block, g / 2, nb, q);
    FMOE_UNROLL
    for (int i = 0; i < P; ++i) q[i] = _mm256_permutevar8x32_epi32(q[i], order);
  };
  auto scale8 = [&](int64_t g, const __m256i* q, const __m256* s, const __m256* bb) FMOE_INLINE {
    FMOE_UNROLL
    for (int w = 0; w < NW; ++w)
      FMOE_UNROLL
      for (int r = 0; r < R; ++r) {
        const int i = w * R + r;
        const __m256 comb = _mm256_mul_ps(s[w], _mm256_loadu_ps(xsc[r] + g));
        ft[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q[i]), comb, ft[i]);
        bt[i] = _mm256_fmadd_ps(bb[w], _mm256_loadu_ps(xsum[r] + g), bt[i]);
      }
  };
  walk_groups8<BF16, NW>(G, sc, bi, gbase, [&](int64_t g, int n, const __m256* s, const __m256* b) FMOE_INLINE {
    __m256i q[P];
    oct(g, n / 2, q);  // (n even: K % 128 == 0)
    scale8(g, q, s, b);
  });
  FMOE_UNROLL
  for (int i = 0; i < P; ++i) out[i] = hsum(_mm256_add_ps(ft[i], bt[i]));
}

#if FMOE_ZMM
// Two 256-bit halves as one 512-bit register: lo in bits 0-255, hi in 256-511.
FMOE_INLINE inline __m512i zmm_pair(__m256i lo, __m256i hi) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}
FMOE_INLINE inline __m512 zmm_pair(__m256 lo, __m256 hi) {
  return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1));
}
// 8 floats / 32 bytes at p into both halves (a broadcast load)
FMOE_INLINE inline __m512 zmm_both(const float* p) {
  return _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(p))));
}
FMOE_INLINE inline __m512i zmm_both(const __m256i* p) { return _mm512_broadcast_i64x4(_mm256_loadu_si256(p)); }
// the sums of each half: out[0] of the low 256 bits, out[1] of the high (hsum of each, as the 256-bit kernels end)
FMOE_INLINE inline void zmm_hsums(__m512 t, float* out) {
  out[0] = hsum(_mm512_castps512_ps256(t));
  out[1] = hsum(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(t), 1)));
}

// row_defer34 for decode (R = 1) and NW = 2 or 4 weight rows, two rows a 512-bit register as in row2_defer_zmm (3
// bits: code_block3's shuffle and shifts act per 128-bit lane, so one vpshufb / vpsrlvd serves both rows); the
// 256-bit steps of row_defer34 on each half, so the same results bit for bit.
template <int BITS, int GS, bool BF16, int NW>
inline void row34_defer_zmm(const uint32_t* const* rows, const void* sc, const void* bi, const int64_t* gbase,
                            const int16_t* xq, const float* xsc, const float* xsum, int64_t K, float* out) {
  static_assert(NW == 2 || NW == 4, "two weight rows a register");
  constexpr int BB = 8 * BITS;
  constexpr int BPG = GS / 64;
  constexpr int P = NW / 2;
  const __m512i m4 = _mm512_set1_epi16(BITS == 4 ? 0x000F : 0x0007);
  // code_block3_inner's shuffle: its low 128-bit lane's constant in lanes 0 and 2, its high lane's in 1 and 3
  const __m512i shuf3 = _mm512_mask_blend_epi64(
      0xCC, _mm512_broadcast_i32x4(_mm_setr_epi8(4, 5, 7, 8, 10, 11, 13, 14, 5, 6, 8, 9, 11, 12, 14, 15)),
      _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 3, 4, 6, 7, 9, 10, 1, 2, 4, 5, 7, 8, 10, 11)));
  const __m512i sh3 = _mm512_setr_epi32(0, 0, 4, 4, 0, 0, 4, 4, 0, 0, 4, 4, 0, 0, 4, 4);
  const int64_t G = K / GS;
  const bool ahead = pass_ahead<BITS, NW>(K);
  [[maybe_unused]] const int64_t last_blk = K / 64 - 1;
  const uint8_t* bytes[NW];
  FMOE_UNROLL
  for (int w = 0; w < NW; ++w) bytes[w] = reinterpret_cast<const uint8_t*>(rows[w]);
  __m512 ft[P], bt[P];
  FMOE_UNROLL
  for (int j = 0; j < P; ++j) ft[j] = bt[j] = _mm512_setzero_ps();
  auto group = [&](int64_t g, __m512i* a) FMOE_INLINE {
    FMOE_UNROLL
    for (int bb = 0; bb < BPG; ++bb) {
      const int64_t blk = g * BPG + bb;
      const __m256i* xb = reinterpret_cast<const __m256i*>(xq + blk * 64);
      FMOE_UNROLL
      for (int j = 0; j < P; ++j) {
        const uint8_t* p0 = bytes[2 * j] + blk * BB;
        const uint8_t* p1 = bytes[2 * j + 1] + blk * BB;
        prefetch_block<NW, BB>(bytes, blk, 2 * j, ahead);
        prefetch_block<NW, BB>(bytes, blk, 2 * j + 1, ahead);
        __m512i c0, c1, c2, c3;
        if constexpr (BITS == 4) {
          const __m512i v = zmm_pair(_mm256_loadu_si256((const __m256i*)p0), _mm256_loadu_si256((const __m256i*)p1));
          c0 = _mm512_and_si512(v, m4);
          c1 = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
          c2 = _mm512_and_si512(_mm512_srli_epi16(v, 8), m4);
          c3 = _mm512_srli_epi16(v, 12);
        } else {  // code_block3 / code_block3_inner of both rows
          __m512i v;
          if (blk == 0 || blk == last_blk) {
            v = zmm_pair(code_block3(p0), code_block3(p1));
          } else {
            const __m512i raw = zmm_pair(_mm256_loadu_si256((const __m256i*)(p0 - 4)),
                                         _mm256_loadu_si256((const __m256i*)(p1 - 4)));
            v = _mm512_srlv_epi32(_mm512_shuffle_epi8(raw, shuf3), sh3);
          }
          c0 = _mm512_and_si512(v, m4);
          c1 = _mm512_and_si512(_mm512_srli_epi16(v, 3), m4);
          c2 = _mm512_and_si512(_mm512_srli_epi16(v, 6), m4);
          c3 = _mm512_and_si512(_mm512_srli_epi16(v, 9), m4);
        }
        __m512i& acc = a[j];
        __m512i t = bb == 0 ? _mm512_madd_epi16(c0, zmm_both(xb)) : _mm512_dpwssd_epi32(acc, c0, zmm_both(xb));
        t = _mm512_dpwssd_epi32(t, c1, zmm_both(xb + 1));
        t = _mm512_dpwssd_epi32(t, c2, zmm_both(xb + 2));
        acc = _mm512_dpwssd_epi32(t, c3, zmm_both(xb + 3));
      }
    }
  };
  auto quad = [&](int64_t g, int n, __m512i* q) FMOE_INLINE { reduce4<__m512i, P>(group, g, n, q); };
  // row_defer34's [q0 lo | q1 hi] + [q0 hi | q1 lo] in each 256-bit half
  const __m512i cross = _mm512_setr_epi64(2, 3, 8, 9, 6, 7, 12, 13);
  auto scale8 = [&](int64_t g, const __m512i* q0, const __m512i* q1, const __m256* s, const __m256* b) FMOE_INLINE {
    const __m512 xs2 = zmm_both(xsc + g), xm2 = zmm_both(xsum + g);
    FMOE_UNROLL
    for (int j = 0; j < P; ++j) {
      const __m512i t = _mm512_add_epi32(_mm512_mask_blend_epi32(0xF0F0, q0[j], q1[j]),
                                         _mm512_permutex2var_epi64(q0[j], cross, q1[j]));
      const __m512 comb = _mm512_mul_ps(zmm_pair(s[2 * j], s[2 * j + 1]), xs2);
      ft[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), comb, ft[j]);
      bt[j] = _mm512_fmadd_ps(zmm_pair(b[2 * j], b[2 * j + 1]), xm2, bt[j]);
    }
  };
  walk_groups8<BF16, NW>(G, sc, bi, gbase, [&](int64_t g, int n, const __m256* s, const __m256* b) FMOE_INLINE {
    __m512i q0[P], q1[P];
    quad(g, std::min(n, 4), q0);
    if (n > 4) quad(g + 4, n - 4, q1); else for (int j = 0; j < P; ++j) q1[j] = __m512i{};
    scale8(g, q0, q1, s, b);
  });
  FMOE_UNROLL
  for (int j = 0; j < P; ++j) zmm_hsums(_mm512_add_ps(ft[j], bt[j]), out + 2 * j);
}

// row2_defer for decode (R = 1) and NW = 2 or 4 weight rows, two rows a 512-bit register: weight row 2j in the low
// 256 bits of register j, row 2j + 1 in the high, x's bytes broadcast to both halves (vbroadcasti64x4 from memory,
// a load), so one vpdpbusd does the work of two 256-bit ones. Every 512-bit step is the 256-bit step of row2_defer on
// each half (unpacks act per 128-bit lane, the permute's indices repeat per half, the float ops are per lane), and a
// row's sum is hsum of its half: the same results, bit for bit. Session 15, 2-core Zen 5 (AVX-512 at full width):
// see bench/results/kernels_2core_session15.md.
template <bool BF16, int NW>
inline void row2_defer_zmm(const uint32_t* const* rows, const void* sc, const void* bi, const int64_t* gbase,
                           const int8_t* xb, const float* xsc, const float* xsum, int64_t K, float* out) {
  static_assert(NW == 2 || NW == 4, "two weight rows a register");
  constexpr int P = NW / 2;
  const __m512i m8 = _mm512_set1_epi8(3);
  const __m512i order = _mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
  const int64_t G = K / 64;
  const bool ahead = pass_ahead<2, NW>(K);  // long rows (multi_rows): see prefetch_block
  const uint8_t* bytes[NW];
  FMOE_UNROLL
  for (int w = 0; w < NW; ++w) bytes[w] = reinterpret_cast<const uint8_t*>(rows[w]);
  __m512 ft[P], bt[P];
  FMOE_UNROLL
  for (int j = 0; j < P; ++j) ft[j] = bt[j] = _mm512_setzero_ps();
  auto block = [&](int64_t blk, __m512i* a) FMOE_INLINE {
    const __m256i* xv = reinterpret_cast<const __m256i*>(xb + blk * 256);
    FMOE_UNROLL
    for (int j = 0; j < P; ++j) {
      prefetch_block<NW, 32>(bytes, blk, 2 * j, ahead);
      prefetch_block<NW, 32>(bytes, blk, 2 * j + 1, ahead);
      const __m512i v = zmm_pair(_mm256_loadu_si256((const __m256i*)(bytes[2 * j] + blk * 32)),
                                 _mm256_loadu_si256((const __m256i*)(bytes[2 * j + 1] + blk * 32)));
      __m512i ph = _mm512_setzero_si512(), pl = _mm512_setzero_si512();
      FMOE_UNROLL
      for (int t = 0; t < 4; ++t) {
        const __m512i c = _mm512_and_si512(t == 0 ? v : _mm512_srli_epi16(v, 2 * t), m8);
        ph = _mm512_dpbusd_epi32(ph, c, zmm_both(xv + 2 * t));
        pl = _mm512_dpbusd_epi32(pl, c, zmm_both(xv + 2 * t + 1));
      }
      a[j] = _mm512_add_epi32(_mm512_slli_epi32(ph, 8), pl);
    }
  };
  auto oct = [&](int64_t g, int nb, __m512i* q) FMOE_INLINE {
    reduce4<__m512i, P>(block, g / 2, nb, q);
    FMOE_UNROLL
    for (int j = 0; j < P; ++j) q[j] = _mm512_permutexvar_epi32(order, q[j]);
  };
  auto scale8 = [&](int64_t g, const __m512i* q, const __m256* s, const __m256* b) FMOE_INLINE {
    const __m512 xs2 = zmm_both(xsc + g), xm2 = zmm_both(xsum + g);
    FMOE_UNROLL
    for (int j = 0; j < P; ++j) {
      const __m512 comb = _mm512_mul_ps(zmm_pair(s[2 * j], s[2 * j + 1]), xs2);
      ft[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q[j]), comb, ft[j]);
      bt[j] = _mm512_fmadd_ps(zmm_pair(b[2 * j], b[2 * j + 1]), xm2, bt[j]);
    }
  };
  walk_groups8<BF16, NW>(G, sc, bi, gbase, [&](int64_t g, int n, const __m256* s, const __m256* b) FMOE_INLINE {
    __m512i q[P];
    oct(g, n / 2, q);
    scale8(g, q, s, b);
  });
  FMOE_UNROLL
  for (int j = 0; j < P; ++j) zmm_hsums(_mm512_add_ps(ft[j], bt[j]), out + 2 * j);
}
#endif

// The deferred-group kernel of each width (see defer_groups): 2 bits row2_defer (xq holds its split bytes), 3 and 4
// bits row_defer34.
template <int BITS, int GS, bool BF16, int R, int NW = 1>
inline void row_defer(const uint32_t* const* rows, const void* sc, const void* bi, const int64_t* gbase,
                      const int16_t* const* xq, const float* const* xsc, const float* const* xsum, int64_t K,
                      float* out) {
  if constexpr (BITS == 2) {
    const int8_t* xb[R];
    for (int r = 0; r < R; ++r) xb[r] = reinterpret_cast<const int8_t*>(xq[r]);
#if FMOE_ZMM
    if constexpr (R == 1 && NW >= 2) {
      row2_defer_zmm<BF16, NW>(rows, sc, bi, gbase, xb[0], xsc[0], xsum[0], K, out);
      return;
    }
#endif
    row2_defer<BF16, R, NW>(rows, sc, bi, gbase, xb, xsc, xsum, K, out);
  } else {
#if FMOE_ZMM
    if constexpr (R == 1 && NW >= 2) {
      row34_defer_zmm<BITS, GS, BF16, NW>(rows, sc, bi, gbase, xq[0], xsc[0], xsum[0], K, out);
      return;
    }
#endif
    row_defer34<BITS, GS, BF16, R, NW>(rows, sc, bi, gbase, xq, xsc, xsum, K, out);
  }
}

// 2 and 3 bits: four weight rows per pass in those decode rows (then pairs, then single rows for the rest; the same
// arithmetic per row, bit-identical).  4096x1024, 1 thread, hot: 2 bits 143-144 -> 113-116 us, 3 bits 191 ->
// 175-179 us; 4 bits got slower (149-151 -> 157-162 us), so it keeps pairs.
template <int BITS>
constexpr bool quad_rows() {
  return BITS == 2 || BITS == 3;
}
// Decode rows of at most this many codes go 4 / 2 weight rows per pass: 2 bits FMOE_QUAD2_MAXK, 3 bits
// FMOE_QUAD3_MAXK (longer rows with the pass-ahead prefetch, see prefetch_block), other widths FMOE_PAIR_MAXK.
// Session 12 (docs/log/kernels.md), Zen 3, 2 bits, 4096-code rows: one row from L1 5.5 -> 4.7 cycles per 64 codes;
// `fmoe bench kernels` 1 thread 1024x4096 130-131 -> 120-122 us, 4096x4096 501-524 -> 459-478 us.  3 bits gained
// hot (L1 6.8 -> 6.1 cycles, 1024x4096 hot +10%) but not cold (163-168 vs 162-167 us), so its long rows stay single.
#ifndef FMOE_QUAD2_MAXK
#define FMOE_QUAD2_MAXK 65536
#endif
// The AVX-512 build (FMOE_ZMM: two rows a 512-bit register) takes 3-bit quads on long rows too: session 15, 2-core
// Zen 5, 1024x4096 hot 31 -> 50 GB/s, cold 62 -> 58 us, 4096x4096 cold 234 -> 200 us (medians of 5 alternated runs,
// bench/results/kernels_2core_session15.md).
#ifndef FMOE_QUAD3_MAXK
#if FMOE_ZMM
#define FMOE_QUAD3_MAXK 65536
#else
#define FMOE_QUAD3_MAXK 1024
#endif
#endif
template <int BITS>
inline bool multi_rows(int64_t K) {
  return K <= (BITS == 2 ? FMOE_QUAD2_MAXK : BITS == 3 ? FMOE_QUAD3_MAXK : FMOE_PAIR_MAXK);
}

// mode 0: int16 activations (fast); mode 1: float32 activations (exact fp32 arithmetic).
template <int BITS, int GS, bool BF16>
void qmv_avx2(const uint32_t* w, const void* sc, const void* bi, const float* x, float* y, int64_t N, int64_t K,
              int M, int64_t xs, int64_t ys, int nthreads, int mode) {
  const int64_t wpr = K * BITS / 32;  // uint32 words per row
  const int64_t gpr = K / GS;         // groups per row
  const int64_t xps = K + 16, gps = gpr + 8;
  if (mode == 0) {
    // non-finite activations cannot be scaled to int16: use the float path for those
    for (int m = 0; m < M && mode == 0; ++m)
      if (!all_finite(x + m * xs, K)) mode = 1;
  }
  std::vector<float> xp_all, xsum_all(static_cast<size_t>(M) * gps), xsc_all;
  std::vector<int16_t> xq_all;
  if (mode == 0) {
    xq_all.resize(static_cast<size_t>(M) * xps);
    xsc_all.resize(static_cast<size_t>(M) * gps);
    for (int m = 0; m < M; ++m)
      prepare_xq<BITS>(x + m * xs, xq_all.data() + m * xps, xsc_all.data() + m * gps, xsum_all.data() + m * gps, K,
                       GS);
  } else {
    xp_all.resize(static_cast<size_t>(M) * xps);
    for (int m = 0; m < M; ++m)
      prepare_x<BITS>(x + m * xs, xp_all.data() + m * xps, xsum_all.data() + m * gps, K, GS);
  }
  const float* xp0 = xp_all.data();
  const int16_t* xq0 = xq_all.data();
  const float* xsc0 = xsc_all.data();
  const float* xsum0 = xsum_all.data();
  // 4 bits: chunks of about FMOE_CHUNK_BYTES of weights, at least FMOE_GRAIN rows, and at least 4 per thread while
  // FMOE_GRAIN allows (load balance when a thread is descheduled).  2 threads, cold, 4096x1024 (512-byte rows):
  // 64-row chunks (32 KB) 20.3-22.8 GB/s, 256-row (128 KB) 25.5-26.2 (1024x4096 is at 128 KB already).  Only
  // measured for 4 bits; slower kernels spend longer per chunk (2 bits ~5 GB/s per core: ~25 us per 128 KB), which
  // a late second thread pays at the end, and one bench series had 2 bits lower with it (within this VM's noise).
  int64_t grain = FMOE_GRAIN;
  if constexpr (BITS == 4) {
    grain = std::max<int64_t>(grain, (FMOE_CHUNK_BYTES + wpr * 4 - 1) / (wpr * 4));
    grain = std::min(grain, std::max<int64_t>(FMOE_GRAIN, N / (4 * std::max(nthreads, 1))));
  }
  const int64_t nchunks = (N + grain - 1) / grain;
  constexpr int SB_I16 = (8 * i16_lane_codes<BITS>()) > GS ? 8 * i16_lane_codes<BITS>() : GS;
  const bool tail_free = (K % SB_I16) == 0;
  int nt = nthreads;
  if (nt > nchunks) nt = static_cast<int>(nchunks);
  if (nt < 1) nt = 1;
  // chunks of FMOE_GRAIN rows handed out dynamically (see Pool): a descheduled thread never holds up the product.
  parallel_chunks(nchunks, nt, [&](int64_t c) {
    thread_local std::vector<float> comb;
    if (comb.size() < static_cast<size_t>(gpr + 8)) comb.resize(static_cast<size_t>(gpr + 8));
    const int64_t n1 = (c + 1) * grain < N ? (c + 1) * grain : N;
    if (mode == 0 && M >= 4 && comb.size() < static_cast<size_t>(4 * (gpr + 8)))
      comb.resize(static_cast<size_t>(4 * (gpr + 8)));
    int64_t n = c * grain;
    if constexpr (defer_groups<BITS, GS>())
      if (mode == 0 && M == 1 && multi_rows<BITS>(K) && defer_k<BITS>(K)) {  // decode: 4 / 2 weight rows per pass (see row_defer)
        if constexpr (quad_rows<BITS>())
          for (; n + 4 <= n1; n += 4) {
            const uint32_t* rows4[4] = {w + n * wpr, w + (n + 1) * wpr, w + (n + 2) * wpr, w + (n + 3) * wpr};
            const int64_t gb4[4] = {n * gpr, (n + 1) * gpr, (n + 2) * gpr, (n + 3) * gpr};
            row_defer<BITS, GS, BF16, 1, 4>(rows4, sc, bi, gb4, &xq0, &xsc0, &xsum0, K, y + n);
          }
        for (; n + 2 <= n1; n += 2) {
          const uint32_t* rows2[2] = {w + n * wpr, w + (n + 1) * wpr};
          const int64_t gb2[2] = {n * gpr, (n + 1) * gpr};
          float out2[2];
          row_defer<BITS, GS, BF16, 1, 2>(rows2, sc, bi, gb2, &xq0, &xsc0, &xsum0, K, out2);
          y[n] = out2[0];
          y[n + 1] = out2[1];
        }
      }
    for (; n < n1; ++n) {
      const uint32_t* row = w + n * wpr;
      int m0 = 0;
      if (mode == 0 && tail_free) {
        // prefill: four rows of x per pass over the weight row
        for (; m0 + 4 <= M; m0 += 4) {
          const int16_t* xqs[4];
          const float* cbs[4];
          const float* xss[4];
          float out4[4];
          if constexpr (defer_groups<BITS, GS>()) {
            const float* xcs[4];
            for (int r = 0; r < 4; ++r) {
              xqs[r] = xq0 + (m0 + r) * xps;
              xcs[r] = xsc0 + (m0 + r) * gps;
              xss[r] = xsum0 + (m0 + r) * gps;
            }
            const int64_t gb = n * gpr;
            row_defer<BITS, GS, BF16, 4>(&row, sc, bi, &gb, xqs, xcs, xss, K, out4);
            for (int r = 0; r < 4; ++r) y[(m0 + r) * ys + n] = out4[r];
            continue;
          }
          for (int r = 0; r < 4; ++r) {
            float* cb = comb.data() + r * (gpr + 8);
            row_comb<BF16>(sc, n * gpr, xsc0 + (m0 + r) * gps, cb, gpr);
            xqs[r] = xq0 + (m0 + r) * xps;
            cbs[r] = cb;
            xss[r] = xsum0 + (m0 + r) * gps;
          }
          row_i16_x4<BITS, GS, BF16>(row, bi, n * gpr, xqs, cbs, xss, K, out4);
          for (int r = 0; r < 4; ++r) y[(m0 + r) * ys + n] = out4[r];
        }
      }
      for (int m = m0; m < M; ++m) {
        float r;
        if (mode == 0 && defer_groups<BITS, GS>() && defer_k<BITS>(K)) {
          const int16_t* xqm = xq0 + m * xps;
          const float *xcm = xsc0 + m * gps, *xsm = xsum0 + m * gps;
          const int64_t gb = n * gpr;
          row_defer<BITS, GS, BF16, 1>(&row, sc, bi, &gb, &xqm, &xcm, &xsm, K, &r);
        } else if (mode == 0) {
          row_comb<BF16>(sc, n * gpr, xsc0 + m * gps, comb.data(), gpr);
          r = row_i16<BITS, GS, BF16>(row, sc, bi, n * gpr, xq0 + m * xps, comb.data(), xsum0 + m * gps,
                                      x + m * xs, K);
        } else if constexpr (BITS == 8) {
          r = row_q8<GS, BF16>(row, sc, bi, n * gpr, x + m * xs, K);
        } else if constexpr (BITS == 5 || BITS == 6) {  // float32 activations: portable code
          r = row_scalar<BF16>(row, sc, bi, n * gpr, x + m * xs, 0, K, BITS, GS);
        } else {
          r = row_fact<BITS, GS, BF16>(row, sc, bi, n * gpr, xp0 + m * xps, xsum0 + m * gps, x + m * xs, K);
        }
        y[m * ys + n] = r;
      }
    }
  }, /*split=*/true);
}

#endif  // FMOE_AVX2

template <bool BF16>
void qmv_scalar(const uint32_t* w, const void* sc, const void* bi, const float* x, float* y, int64_t N, int64_t K,
                int M, int64_t xs, int64_t ys, int bits, int gs, int nthreads) {
  const int64_t wpr = K * bits / 32;
  const int64_t gpr = K / gs;
  const int64_t grain = 16;
  parallel_chunks((N + grain - 1) / grain, nthreads, [&](int64_t c) {
    for (int64_t n = c * grain; n < std::min(N, (c + 1) * grain); ++n)
      for (int m = 0; m < M; ++m)
        y[m * ys + n] = row_scalar<BF16>(w + n * wpr, sc, bi, n * gpr, x + m * xs, 0, K, bits, gs);
  });
}

#if FMOE_AVX2
template <int BITS, bool BF16>
int dispatch_gs(const uint32_t* w, const void* sc, const void* bi, const float* x, float* y, int64_t N, int64_t K,
                int M, int64_t xs, int64_t ys, int gs, int nt, int mode) {
  switch (gs) {
    case 32: qmv_avx2<BITS, 32, BF16>(w, sc, bi, x, y, N, K, M, xs, ys, nt, mode); return 0;
    case 64: qmv_avx2<BITS, 64, BF16>(w, sc, bi, x, y, N, K, M, xs, ys, nt, mode); return 0;
    case 128: qmv_avx2<BITS, 128, BF16>(w, sc, bi, x, y, N, K, M, xs, ys, nt, mode); return 0;
  }
  return -2;
}

}  // namespace

// One bit width's SIMD mat-vec and fused experts, each defined in the part that owns the width (see "Parts" above)
namespace fmoe_native {
struct ExpertPtrs;
#define FMOE_WIDTH_DECL(B)                                                                                             \
  int qmv_width_##B(bool bf16, const uint32_t* w, const void* sc, const void* bi, const float* x, float* y, int64_t N, \
                    int64_t K, int M, int64_t xs, int64_t ys, int gs, int nt, int mode);                               \
  int fused_width_##B(bool bf16, const ExpertPtrs* ex, int E, int64_t H, const float* x, float* y, int acc, int nt,  \
                      int mode, int gs);
FMOE_WIDTH_DECL(2)
FMOE_WIDTH_DECL(3)
FMOE_WIDTH_DECL(4)
FMOE_WIDTH_DECL(5)
FMOE_WIDTH_DECL(6)
FMOE_WIDTH_DECL(8)
}  // namespace fmoe_native

namespace {

template <bool BF16>
int dispatch_bits(const uint32_t* w, const void* sc, const void* bi, const float* x, float* y, int64_t N, int64_t K,
                  int M, int64_t xs, int64_t ys, int bits, int gs, int nt, int mode) {
  using namespace fmoe_native;
  switch (bits) {
    case 2: return qmv_width_2(BF16, w, sc, bi, x, y, N, K, M, xs, ys, gs, nt, mode);
    case 3: return qmv_width_3(BF16, w, sc, bi, x, y, N, K, M, xs, ys, gs, nt, mode);
    case 4: return qmv_width_4(BF16, w, sc, bi, x, y, N, K, M, xs, ys, gs, nt, mode);
    case 5: return qmv_width_5(BF16, w, sc, bi, x, y, N, K, M, xs, ys, gs, nt, mode);
    case 6: return qmv_width_6(BF16, w, sc, bi, x, y, N, K, M, xs, ys, gs, nt, mode);
    case 8: return qmv_width_8(BF16, w, sc, bi, x, y, N, K, M, xs, ys, gs, nt, mode);
  }
  return -1;
}
#endif

// ---------------------------------------------------------------------------------------------------------------
// One call for a token's routed experts (decode): y (+)= sum_e w_e * down_e(silu(gate_e x) * up_e x).
// One parallel region for the whole call: chunk indices [0, nA) are row chunks of the gate and up matrices of all
// experts, [nA, nA + E) make h_e = silu(g_e) * u_e and prepare it for the down products, [nA + E, nA + E + nC) are
// row chunks of y (each sums the E experts' down rows, so no reduction across threads).  Chunks are claimed in
// increasing order, so a chunk of a later phase only ever waits for chunks that running threads already claimed
// (never for a worker the OS has not scheduled: see Pool).

struct XVec {  // one activation vector prepared for the row products
  const float* x = nullptr;
  int mode = 0;  // 0 int16 activations, 1 float32 SIMD, 2 portable scalar
  std::vector<int16_t> xq;
  std::vector<float> xsc, xsum, xp;
};

inline void spin_until(const std::atomic<int64_t>& a, int64_t target) {
  int spins = 0;
  while (a.load(std::memory_order_acquire) < target) {
    if (++spins < 4096) {
#if FMOE_AVX2
      _mm_pause();
#endif
    } else {
      std::this_thread::yield();  // the chunk we wait for is running on a thread that lost its CPU
    }
  }
}

}  // namespace

namespace fmoe_native {
struct ExpertPtrs {
  const uint32_t* w[3];  // gate, up, down
  const void* s[3];
  const void* b[3];
  int64_t inter;
  float weight;
};
}  // namespace fmoe_native

namespace {

using fmoe_native::ExpertPtrs;

// Portable row products (any bits / group size): the generic build, and mode 2 everywhere.
template <bool BF16>
struct ScalarOps {
  int bits, gs;
  void prepare(XVec& v, const float* x, int64_t, int) const {
    v.x = x;
    v.mode = 2;
  }
  float row(const XVec& v, const uint32_t* w, const void* sc, const void* bi, int64_t n, int64_t K, float*) const {
    return row_scalar<BF16>(w + n * (K * bits / 32), sc, bi, n * (K / gs), v.x, 0, K, bits, gs);
  }
  // out[n - n0] for the rows n0 .. n1
  void rows(const XVec& v, const uint32_t* w, const void* sc, const void* bi, int64_t n0, int64_t n1, int64_t K,
            float* comb, float* out) const {
    for (int64_t n = n0; n < n1; ++n) out[n - n0] = row(v, w, sc, bi, n, K, comb);
  }
};

#if FMOE_AVX2
template <int BITS, int GS, bool BF16>
struct SimdOps {
  void prepare(XVec& v, const float* x, int64_t K, int mode) const {
    v.x = x;
    if (mode == 0)
      if (!all_finite(x, K)) mode = 1;
    v.mode = mode;
    const int64_t gpr = K / GS;
    if (mode == 0) {
      v.xq.resize(static_cast<size_t>(K + 16));
      v.xsc.resize(static_cast<size_t>(gpr + 8));
      v.xsum.resize(static_cast<size_t>(gpr + 8));
      prepare_xq<BITS>(x, v.xq.data(), v.xsc.data(), v.xsum.data(), K, GS);
    } else if (mode == 1) {
      v.xp.resize(static_cast<size_t>(K + 16));
      v.xsum.resize(static_cast<size_t>(gpr + 8));
      prepare_x<BITS>(x, v.xp.data(), v.xsum.data(), K, GS);
    }
  }
  float row(const XVec& v, const uint32_t* w, const void* sc, const void* bi, int64_t n, int64_t K,
            float* comb) const {
    const int64_t gpr = K / GS;
    const uint32_t* r = w + n * (K * BITS / 32);
    if (v.mode == 0 && defer_groups<BITS, GS>() && defer_k<BITS>(K)) {
      const int16_t* xqm = v.xq.data();
      const float *xcm = v.xsc.data(), *xsm = v.xsum.data();
      float out;
      const int64_t gb = n * gpr;
      row_defer<BITS, GS, BF16, 1>(&r, sc, bi, &gb, &xqm, &xcm, &xsm, K, &out);
      return out;
    }
    if (v.mode == 0) {
      row_comb<BF16>(sc, n * gpr, v.xsc.data(), comb, gpr);
      return row_i16<BITS, GS, BF16>(r, sc, bi, n * gpr, v.xq.data(), comb, v.xsum.data(), v.x, K);
    }
    if (v.mode == 1) {
      if constexpr (BITS == 8) {
        return row_q8<GS, BF16>(r, sc, bi, n * gpr, v.x, K);
      } else if constexpr (BITS == 5 || BITS == 6) {
        return row_scalar<BF16>(r, sc, bi, n * gpr, v.x, 0, K, BITS, GS);
      } else {
        return row_fact<BITS, GS, BF16>(r, sc, bi, n * gpr, v.xp.data(), v.xsum.data(), v.x, K);
      }
    }
    return row_scalar<BF16>(r, sc, bi, n * gpr, v.x, 0, K, BITS, GS);
  }
  // out[n - n0] for the rows n0 .. n1: 4 / 2 rows per pass where qmv_avx2 does that (the experts' down rows, K = 1024)
  void rows(const XVec& v, const uint32_t* w, const void* sc, const void* bi, int64_t n0, int64_t n1, int64_t K,
            float* comb, float* out) const {
    int64_t n = n0;
    if constexpr (defer_groups<BITS, GS>())
      if (v.mode == 0 && multi_rows<BITS>(K) && defer_k<BITS>(K)) {
        const int64_t wpr = K * BITS / 32, gpr = K / GS;
        const int16_t* xqm = v.xq.data();
        const float *xcm = v.xsc.data(), *xsm = v.xsum.data();
        if constexpr (quad_rows<BITS>())
          for (; n + 4 <= n1; n += 4) {
            const uint32_t* rows4[4] = {w + n * wpr, w + (n + 1) * wpr, w + (n + 2) * wpr, w + (n + 3) * wpr};
            const int64_t gb4[4] = {n * gpr, (n + 1) * gpr, (n + 2) * gpr, (n + 3) * gpr};
            row_defer<BITS, GS, BF16, 1, 4>(rows4, sc, bi, gb4, &xqm, &xcm, &xsm, K, out + (n - n0));
          }
        for (; n + 2 <= n1; n += 2) {
          const uint32_t* rows2[2] = {w + n * wpr, w + (n + 1) * wpr};
          const int64_t gb2[2] = {n * gpr, (n + 1) * gpr};
          row_defer<BITS, GS, BF16, 1, 2>(rows2, sc, bi, gb2, &xqm, &xcm, &xsm, K, out + (n - n0));
        }
      }
    for (; n < n1; ++n) out[n - n0] = row(v, w, sc, bi, n, K, comb);
  }
};
#endif

template <class Ops>
void moe_fused_run(const Ops& ops, const ExpertPtrs* ex, int E, int64_t H, const float* x, float* y, int accumulate,
                   int nthreads, int mode) {
  const int64_t grain = FMOE_GRAIN;
  struct AChunk {
    int e, m;
    int64_t r0, r1;
  };
  std::vector<AChunk> achunks;
  std::vector<int64_t> hoff(static_cast<size_t>(E) + 1, 0);
  int64_t maxk = H;
  for (int e = 0; e < E; ++e) {
    const int64_t I = ex[e].inter;
    hoff[e + 1] = hoff[e] + I;
    maxk = std::max(maxk, I);
    for (int m = 0; m < 2; ++m)
      for (int64_t r0 = 0; r0 < I; r0 += grain) achunks.push_back({e, m, r0, std::min(I, r0 + grain)});
  }
  std::vector<float> g(static_cast<size_t>(hoff[E]) + 16), u(static_cast<size_t>(hoff[E]) + 16);
  XVec xv;
  ops.prepare(xv, x, H, mode);
  std::vector<XVec> hv(static_cast<size_t>(E));
  const int64_t nA = static_cast<int64_t>(achunks.size()), nB = E, nC = (H + grain - 1) / grain;
  const size_t comb_size = static_cast<size_t>(maxk / 32 + 8);
  std::atomic<int64_t> doneA{0}, doneB{0};
  parallel_chunks(nA + nB + nC, nthreads, [&](int64_t c) {
    thread_local std::vector<float> comb;
    if (comb.size() < comb_size) comb.resize(comb_size);
    if (c < nA) {
      const AChunk& a = achunks[static_cast<size_t>(c)];
      const ExpertPtrs& p = ex[a.e];
      float* out = (a.m == 0 ? g.data() : u.data()) + hoff[a.e];
      ops.rows(xv, p.w[a.m], p.s[a.m], p.b[a.m], a.r0, a.r1, H, comb.data(), out + a.r0);
      doneA.fetch_add(1, std::memory_order_acq_rel);
    } else if (c < nA + nB) {
      spin_until(doneA, nA);
      const int e = static_cast<int>(c - nA);
      const int64_t I = ex[e].inter;
      const float* gg = g.data() + hoff[e];
      float* h = u.data() + hoff[e];
      for (int64_t i = 0; i < I; ++i) h[i] = gg[i] / (1.0f + std::exp(-gg[i])) * h[i];
      ops.prepare(hv[static_cast<size_t>(e)], h, I, mode);
      doneB.fetch_add(1, std::memory_order_acq_rel);
    } else {
      spin_until(doneB, nB);
      const int64_t r0 = (c - nA - nB) * grain, r1 = std::min(H, r0 + grain);
      float acc[FMOE_GRAIN], part[FMOE_GRAIN];
      for (int64_t r = r0; r < r1; ++r) acc[r - r0] = 0.f;
      for (int e = 0; e < E; ++e) {  // expert by expert: each reads one contiguous block of its down matrix
        const XVec& hx = hv[static_cast<size_t>(e)];
        const ExpertPtrs& p = ex[e];
        ops.rows(hx, p.w[2], p.s[2], p.b[2], r0, r1, p.inter, comb.data(), part);
        for (int64_t r = r0; r < r1; ++r) acc[r - r0] += p.weight * part[r - r0];
      }
      for (int64_t r = r0; r < r1; ++r) y[r] = accumulate ? y[r] + acc[r - r0] : acc[r - r0];
    }
  });
}

#if FMOE_AVX2
template <int BITS, bool BF16>
int fused_gs(const ExpertPtrs* ex, int E, int64_t H, const float* x, float* y, int acc, int nt, int mode, int gs) {
  switch (gs) {
    case 32: moe_fused_run(SimdOps<BITS, 32, BF16>{}, ex, E, H, x, y, acc, nt, mode); return 0;
    case 64: moe_fused_run(SimdOps<BITS, 64, BF16>{}, ex, E, H, x, y, acc, nt, mode); return 0;
    case 128: moe_fused_run(SimdOps<BITS, 128, BF16>{}, ex, E, H, x, y, acc, nt, mode); return 0;
  }
  return -2;
}

template <bool BF16>
int fused_bits(const ExpertPtrs* ex, int E, int64_t H, const float* x, float* y, int acc, int nt, int mode, int bits,
               int gs) {
  using namespace fmoe_native;
  switch (bits) {
    case 2: return fused_width_2(BF16, ex, E, H, x, y, acc, nt, mode, gs);
    case 3: return fused_width_3(BF16, ex, E, H, x, y, acc, nt, mode, gs);
    case 4: return fused_width_4(BF16, ex, E, H, x, y, acc, nt, mode, gs);
    case 5: return fused_width_5(BF16, ex, E, H, x, y, acc, nt, mode, gs);
    case 6: return fused_width_6(BF16, ex, E, H, x, y, acc, nt, mode, gs);
    case 8: return fused_width_8(BF16, ex, E, H, x, y, acc, nt, mode, gs);
  }
  return -1;
}

}  // namespace

// the widths this part owns (index in 2, 3, 4, 5, 6, 8 modulo FMOE_PARTS == FMOE_PART)
namespace fmoe_native {
#define FMOE_WIDTH_DEF(B)                                                                                              \
  int qmv_width_##B(bool bf16, const uint32_t* w, const void* sc, const void* bi, const float* x, float* y, int64_t N, \
                    int64_t K, int M, int64_t xs, int64_t ys, int gs, int nt, int mode) {                              \
    return bf16 ? dispatch_gs<B, true>(w, sc, bi, x, y, N, K, M, xs, ys, gs, nt, mode)                                 \
                : dispatch_gs<B, false>(w, sc, bi, x, y, N, K, M, xs, ys, gs, nt, mode);                               \
  }                                                                                                                    \
  int fused_width_##B(bool bf16, const ExpertPtrs* ex, int E, int64_t H, const float* x, float* y, int acc, int nt,  \
                      int mode, int gs) {                                                                              \
    return bf16 ? fused_gs<B, true>(ex, E, H, x, y, acc, nt, mode, gs) : fused_gs<B, false>(ex, E, H, x, y, acc, nt, mode, gs); \
  }
#if FMOE_OWNS(0)
FMOE_WIDTH_DEF(2)
#endif
#if FMOE_OWNS(1)
FMOE_WIDTH_DEF(3)
#endif
#if FMOE_OWNS(2)
FMOE_WIDTH_DEF(4)
#endif
#if FMOE_OWNS(3)
FMOE_WIDTH_DEF(5)
#endif
#if FMOE_OWNS(4)
FMOE_WIDTH_DEF(6)
#endif
#if FMOE_OWNS(5)
FMOE_WIDTH_DEF(8)
#endif
}  // namespace fmoe_native

namespace {
#endif

// ---------------------------------------------------------------------------------------------------------------
// Gated DeltaNet decode (one token, float32): the delta rule for one head, and the fused layer step around it.

// One head of the gated delta rule (see fmoe_delta_step): kv, oh [dv] 32-byte aligned scratch; oh ends as o_h.
// stream (AVX2, Oh 32-byte aligned, dv % 8 == 0): the new state leaves by non-temporal stores (the same values).
// The AVX2 form vectorizes over j: each element sees the same float32 multiplies and adds in the same order as the
// scalar loops (no FMA), so the results are the same bits. (The -O2 build left these loops scalar: a cold 64x128x128
// state took 0.85-2.0 ms on 2 Zen cores, 0.40-0.48 ms vectorized; in a 397B-shaped decode token the three DeltaNet
// layers' steps went from 2.9 to 1.35 ms.)
inline void delta_head(const float* qh, const float* kh, const float* vh, float decay, float beta, const float* Sh,
                       float* Oh, float* kv, float* oh, int dk, int dv, bool stream = false) {
  for (int j = 0; j < dv; ++j) { kv[j] = 0.f; oh[j] = 0.f; }
  const int dv8 = FMOE_AVX2 ? dv - dv % 8 : 0;
  for (int i = 0; i < dk; ++i) {                       // kv = (e^g S)^T k
    const float ki = kh[i] * decay;
    const float* row = Sh + static_cast<int64_t>(i) * dv;
#if FMOE_AVX2
    const __m256 vk = _mm256_set1_ps(ki);
    for (int j = 0; j < dv8; j += 8) {
      if constexpr (FMOE_PF > 0)  // about one prefetch per 64-byte line, FMOE_PF bytes ahead (as the mat-vecs)
        if ((j & 15) == 0) _mm_prefetch(reinterpret_cast<const char*>(row + j) + FMOE_PF, _MM_HINT_T0);
      _mm256_store_ps(kv + j, _mm256_add_ps(_mm256_load_ps(kv + j), _mm256_mul_ps(vk, _mm256_loadu_ps(row + j))));
    }
#endif
    for (int j = dv8; j < dv; ++j) kv[j] += ki * row[j];
  }
  for (int j = 0; j < dv; ++j) kv[j] = (vh[j] - kv[j]) * beta;   // delta
  for (int i = 0; i < dk; ++i) {                       // S = e^g S + k delta^T;  o = S^T q
    const float ki = kh[i], qi = qh[i];
    const float* row = Sh + static_cast<int64_t>(i) * dv;
    float* out = Oh + static_cast<int64_t>(i) * dv;
#if FMOE_AVX2
    const __m256 vd = _mm256_set1_ps(decay), vk = _mm256_set1_ps(ki), vq = _mm256_set1_ps(qi);
    for (int j = 0; j < dv8; j += 8) {
      const __m256 sv = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(row + j), vd),
                                      _mm256_mul_ps(vk, _mm256_load_ps(kv + j)));
      if (stream)
        _mm256_stream_ps(out + j, sv);
      else
        _mm256_storeu_ps(out + j, sv);
      _mm256_store_ps(oh + j, _mm256_add_ps(_mm256_load_ps(oh + j), _mm256_mul_ps(vq, sv)));
    }
#endif
    for (int j = dv8; j < dv; ++j) {
      const float sv = row[j] * decay + ki * kv[j];
      out[j] = sv;
      oh[j] += qi * sv;
    }
  }
#if FMOE_AVX2
  if (stream) _mm_sfence();
#endif
}

#if FMOE_AVX2
// e^x for 8 floats: Cephes' expf (x - n ln2 in two parts, degree-5 polynomial, 2^n from the exponent bits), within
// ~2 ulp of expf; inputs clamped to [-87.34, 88.38] so 2^n stays a normal float (no inf, no denormals).
inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3365447f)), _mm256_set1_ps(88.3762626647949f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(x, x), x), _mm256_set1_ps(1.f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

inline __m256 silu8(__m256 x) {
  return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

inline float silu1(float x) { return x / (1.f + std::exp(-x)); }

// Channels [c0, c0 + n) of the depthwise causal conv + SiLU for one token: out[c] = silu(sum_j xin[j][c] * w[j][c])
// over the K taps, xin = the K-1 kept inputs (conv [K-1, C]) then this token's (x [C]); w as taps [K, C]; the taps
// added in order, as GatedDeltaNet._conv. Returns sum(out^2) over the range (the L2 norm of a q / k head).
inline float conv_silu(const float* conv, const float* x, const float* w, int64_t C, int K, int64_t c0, int n,
                       float* out) {
  int j0 = 0;
  float ss = 0.f;
#if FMOE_AVX2
  __m256 vss = _mm256_setzero_ps();
  for (; j0 + 8 <= n; j0 += 8) {
    const int64_t c = c0 + j0;
    __m256 acc = _mm256_mul_ps(_mm256_loadu_ps((K > 1 ? conv : x) + c), _mm256_loadu_ps(w + c));
    for (int t = 1; t < K; ++t)
      acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps((t < K - 1 ? conv + t * C : x) + c),
                                             _mm256_loadu_ps(w + t * C + c)));
    acc = silu8(acc);
    _mm256_storeu_ps(out + j0, acc);
    vss = _mm256_add_ps(vss, _mm256_mul_ps(acc, acc));
  }
  ss = hsum8(vss);
#endif
  for (; j0 < n; ++j0) {
    const int64_t c = c0 + j0;
    float acc = (K > 1 ? conv : x)[c] * w[c];
    for (int t = 1; t < K; ++t) acc = acc + (t < K - 1 ? conv + t * C : x)[c] * w[t * C + c];
    out[j0] = silu1(acc);
    ss += out[j0] * out[j0];
  }
  return ss;
}

// The kept conv inputs advanced by one token for channels [c0, c0 + n): rows 1.. of conv, then x.
inline void conv_shift(const float* conv, const float* x, int64_t C, int K, int64_t c0, int n, float* conv_out) {
  for (int t = 0; t < K - 1; ++t)
    std::memcpy(conv_out + t * C + c0, (t + 1 < K - 1 ? conv + (t + 1) * C : x) + c0, sizeof(float) * n);
}

// rsqrt(mean(v^2) + eps) of n floats (float32 sums, 8 lanes then across them)
inline float rms_scale(const float* v, int64_t n, float eps) {
  int64_t j = 0;
  float ss = 0.f;
#if FMOE_AVX2
  __m256 vss = _mm256_setzero_ps();
  for (; j + 8 <= n; j += 8) {
    const __m256 a = _mm256_loadu_ps(v + j);
    vss = _mm256_add_ps(vss, _mm256_mul_ps(a, a));
  }
  ss = hsum8(vss);
#endif
  for (; j < n; ++j) ss += v[j] * v[j];
  return 1.f / std::sqrt(ss / static_cast<float>(n) + eps);
}

// Gated RMSNorm of one head's output: y = o * rsqrt(mean(o^2) + eps) * w * silu(z).
inline void gated_norm(const float* oh, const float* z, const float* w, float eps, int dv, float* y) {
  const float r = rms_scale(oh, dv, eps);
  int j = 0;
#if FMOE_AVX2
  const __m256 vr = _mm256_set1_ps(r);
  for (; j + 8 <= dv; j += 8) {
    const __m256 n = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(oh + j), vr), _mm256_loadu_ps(w + j));
    _mm256_storeu_ps(y + j, _mm256_mul_ps(n, silu8(_mm256_loadu_ps(z + j))));
  }
#endif
  for (; j < dv; ++j) y[j] = oh[j] * r * w[j] * silu1(z[j]);
}

}  // namespace

#if FMOE_PART == 0
extern "C" {

// Returns 0 on success, <0 on unsupported arguments.  mode: 0 = fast (SIMD, int16 activations), 1 = exact
// (SIMD, float32 activations), 2 = portable scalar (float32).  Without AVX2 every mode runs the scalar code.
int fmoe_qmv(const uint32_t* w, const void* scales, const void* biases, int scales_bf16, const float* x, float* y,
             int64_t N, int64_t K, int M, int64_t x_stride, int64_t y_stride, int bits, int group_size, int nthreads,
             int mode) {
  if (!valid_bits(bits)) return -1;
  if (!(group_size == 32 || group_size == 64 || group_size == 128)) return -2;
  if (K % group_size != 0 || N < 0 || M < 0) return -3;
  if (nthreads < 1) nthreads = 1;
  if (N == 0 || M == 0) return 0;
#if FMOE_AVX2
  if (mode == 0 || mode == 1) {
    return scales_bf16 ? dispatch_bits<true>(w, scales, biases, x, y, N, K, M, x_stride, y_stride, bits, group_size,
                                             nthreads, mode)
                       : dispatch_bits<false>(w, scales, biases, x, y, N, K, M, x_stride, y_stride, bits, group_size,
                                              nthreads, mode);
  }
#endif
  if (scales_bf16)
    qmv_scalar<true>(w, scales, biases, x, y, N, K, M, x_stride, y_stride, bits, group_size, nthreads);
  else
    qmv_scalar<false>(w, scales, biases, x, y, N, K, M, x_stride, y_stride, bits, group_size, nthreads);
  return 0;
}

int fmoe_qmv_has_simd(void) { return FMOE_AVX2; }

// The gated delta rule for one token on the CPU (float32): fmoe/kernels/delta_rule.py's ``recurrent`` for T = 1,
// reading each head's state twice and writing it once instead of the ~8 whole-state passes of the torch ops.  Per
// head h: S_h = e^{g_h} S_h;  S_h += k_h (beta_h (v_h - S_h^T k_h))^T;  o_h = S_h^T q_h.  q, k [Hk, dk] (normalised,
// one row per key head; value head h reads key head h / (H / Hk), as the torch path's repeat_interleave), v, o
// [H, dv], S and S_out [H, dk, dv] row-major (S_out may be S: in place).  Heads run in parallel on the kernel pool.
// Returns 0, or -1 on bad sizes.
int fmoe_delta_step(const float* q, const float* k, const float* v, const float* g, const float* beta,
                    const float* S, float* S_out, float* o, int H, int Hk, int dk, int dv, int nthreads) {
  if (H <= 0 || Hk <= 0 || H % Hk != 0 || dk <= 0 || dv <= 0 || dv > 4096) return -1;
  const int rep = H / Hk;
  parallel_chunks(H, nthreads < 1 ? 1 : nthreads, [&](int64_t h) {
    alignas(32) float kv[4096];
    alignas(32) float oh[4096];
    const int64_t hs = h * static_cast<int64_t>(dk) * dv;
    delta_head(q + (h / rep) * dk, k + (h / rep) * dk, v + h * static_cast<int64_t>(dv), std::exp(g[h]), beta[h],
               S + hs, S_out + hs, kv, oh, dk, dv);
    std::memcpy(o + h * static_cast<int64_t>(dv), oh, sizeof(float) * dv);
  });
  return 0;
}

// One token of a Gated DeltaNet layer (float32, CPU) in one call: GatedDeltaNet.mix for T = 1 after the input
// projections, before out_proj.  Inputs: qkv [C] (C = 2 Hk dk + Hv dv: q, k, v channels), z [Hv dv], b, a [Hv];
// conv [K-1, C] the kept conv inputs (NULL: zeros), conv_w as taps [K, C], S [Hv, dk, dv] (NULL: zeros), neg_A =
// -exp(A_log), dt_bias [Hv], norm_w [dv].  Per value head h (key head h / (Hv / Hk)), heads in parallel on the pool:
//   q, k, v = silu(depthwise causal conv);  q = q / sqrt(|q|^2 + 1e-6) * dk^-1/2;  k = k / sqrt(|k|^2 + 1e-6);
//   g = neg_A softplus(a + dt_bias);  beta = sigmoid(b);  the delta rule (fmoe_delta_step);
//   y_h = rms_norm(o_h) * norm_w * silu(z_h).
// Writes y [Hv dv], conv_out [K-1, C] and S_out (each may alias its input: in place).  A key head's q, k are
// recomputed by each of its value heads (2 dk channels, against dk dv state elements), so one parallel pass with no
// barrier does it all.  exp / log1p / sigmoid / silu are float32 approximations (a few ulp from torch's).  Returns 0,
// or -1 on bad sizes.
int fmoe_gdn_step(const float* qkv, const float* z, const float* b, const float* a, const float* conv,
                  float* conv_out, const float* conv_w, const float* S, float* S_out, const float* neg_A,
                  const float* dt_bias, const float* norm_w, float eps, float* y, int Hk, int Hv, int dk, int dv,
                  int K, int nthreads) {
  if (Hk <= 0 || Hv <= 0 || Hv % Hk != 0 || dk <= 0 || dk > 4096 || dv <= 0 || dv > 4096 || K < 1) return -1;
  const int rep = Hv / Hk;
  const int64_t nq = static_cast<int64_t>(Hk) * dk, C = 2 * nq + static_cast<int64_t>(Hv) * dv;
  const int64_t hs = static_cast<int64_t>(dk) * dv;
  // in place: the heads read the old kept inputs of channels that others shift, so they read a copy
  std::vector<float> conv_copy, zeros;
  if (K > 1 && conv == nullptr) {
    zeros.assign(static_cast<size_t>((K - 1) * C), 0.f);
    conv = zeros.data();
  } else if (K > 1 && conv == conv_out) {
    conv_copy.assign(conv, conv + (K - 1) * C);
    conv = conv_copy.data();
  }
  std::vector<float> S0;
  if (S == nullptr) {
    S0.assign(static_cast<size_t>(Hv * hs), 0.f);
    S = S0.data();
  }
  const float qscale = 1.f / std::sqrt(static_cast<float>(dk));
  // A new state of 1 MiB or more goes to memory with non-temporal stores: nothing reads it before the next token,
  // by which time the expert weights have streamed through the caches, and skipping the read-for-ownership of its
  // lines saved ~10% of the step (2 Zen 3 cores, 64x128x128 state from DRAM: median 0.50 -> 0.43 ms).
  const bool stream = FMOE_AVX2 && S_out != S && dv % 8 == 0 && (reinterpret_cast<uintptr_t>(S_out) & 31) == 0 &&
                      Hv * hs * static_cast<int64_t>(sizeof(float)) >= (int64_t{1} << 20);
  parallel_chunks(Hv, nthreads < 1 ? 1 : nthreads, [&](int64_t h) {
    alignas(32) float qh[4096];
    alignas(32) float kh[4096];
    alignas(32) float vh[4096];
    alignas(32) float kv[4096];
    alignas(32) float oh[4096];
    const int64_t cq = (h / rep) * dk, ck = nq + cq, cv = 2 * nq + h * dv;
    const float sq = conv_silu(conv, qkv, conv_w, C, K, cq, dk, qh);
    const float sk = conv_silu(conv, qkv, conv_w, C, K, ck, dk, kh);
    conv_silu(conv, qkv, conv_w, C, K, cv, dv, vh);
    if (K > 1) {
      if (h % rep == 0) {
        conv_shift(conv, qkv, C, K, cq, dk, conv_out);
        conv_shift(conv, qkv, C, K, ck, dk, conv_out);
      }
      conv_shift(conv, qkv, C, K, cv, dv, conv_out);
    }
    const float rq = std::sqrt(sq + 1e-6f), rk = std::sqrt(sk + 1e-6f);
    for (int i = 0; i < dk; ++i) qh[i] = qh[i] / rq * qscale;
    for (int i = 0; i < dk; ++i) kh[i] = kh[i] / rk;
    const float x = a[h] + dt_bias[h];
    const float sp = x > 20.f ? x : std::log1p(std::exp(x));       // torch softplus (beta 1, threshold 20)
    const float decay = std::exp(neg_A[h] * sp);
    const float bt = 1.f / (1.f + std::exp(-b[h]));
    delta_head(qh, kh, vh, decay, bt, S + h * hs, S_out + h * hs, kv, oh, dk, dv, stream);
    gated_norm(oh, z + h * static_cast<int64_t>(dv), norm_w, eps, dv, y + h * static_cast<int64_t>(dv));
  });
  return 0;
}

// RMSNorm of `rows` rows of n floats (row stride x_stride) into y [rows, n]: y = (x * rsqrt(mean(x^2) + eps)) * w,
// float32 as torch's CPU rms_norm, one thread (decode's few rows: the torch op costs tens of us after the mat-vecs
// have streamed the weights through the caches, this a call's overhead).  Returns 0, or -1 on bad sizes.
int fmoe_rms_norm(const float* x, int64_t x_stride, const float* w, float* y, int64_t rows, int64_t n, float eps) {
  if (rows < 0 || n <= 0 || x_stride < n) return -1;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * x_stride;
    float* yr = y + r * n;
    const float s = rms_scale(xr, n, eps);
    int64_t j = 0;
#if FMOE_AVX2
    const __m256 vs = _mm256_set1_ps(s);
    for (; j + 8 <= n; j += 8)
      _mm256_storeu_ps(yr + j, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + j), vs), _mm256_loadu_ps(w + j)));
#endif
    for (; j < n; ++j) yr[j] = xr[j] * s * w[j];
  }
  return 0;
}

// The mat-vec's read-only peer, for the memory read bandwidth the benchmarks compare against: reads nbytes (a
// multiple of 64) from p with the mat-vec's threads and chunking (64 KB chunks, split ranges, the same software
// prefetch FMOE_PF ahead), XOR-folds every 64-bit word into *out (so the reads cannot be dropped, and a test can
// check them). 0, or -1 for a bad size.
int fmoe_read_bytes(const void* p, int64_t nbytes, int nthreads, uint64_t* out) {
  if (nbytes < 0 || nbytes % 64 != 0) return -1;
  constexpr int64_t kChunk = 65536;
  const uint8_t* base = static_cast<const uint8_t*>(p);
  std::atomic<uint64_t> acc{0};
  parallel_chunks((nbytes + kChunk - 1) / kChunk, nthreads < 1 ? 1 : nthreads, [&](int64_t c) {
    const uint8_t* b = base + c * kChunk;
    const int64_t n = std::min(kChunk, nbytes - c * kChunk);
    uint64_t x = 0;
#if FMOE_AVX2
    __m256i v0 = _mm256_setzero_si256(), v1 = _mm256_setzero_si256();
    for (int64_t i = 0; i < n; i += 64) {
      if constexpr (FMOE_PF > 0) _mm_prefetch(reinterpret_cast<const char*>(b + i) + FMOE_PF, FMOE_PF_HINT);
      v0 = _mm256_xor_si256(v0, _mm256_loadu_si256((const __m256i*)(b + i)));
      v1 = _mm256_xor_si256(v1, _mm256_loadu_si256((const __m256i*)(b + i + 32)));
    }
    alignas(32) uint64_t lanes[4];
    _mm256_store_si256((__m256i*)lanes, _mm256_xor_si256(v0, v1));
    x = lanes[0] ^ lanes[1] ^ lanes[2] ^ lanes[3];
#else
    for (int64_t i = 0; i < n; i += 8) {
      uint64_t v;
      std::memcpy(&v, b + i, 8);
      x ^= v;
    }
#endif
    acc.fetch_xor(x, std::memory_order_relaxed);
  }, /*split=*/true);
  *out = acc.load();
  return 0;
}

// Name of the instruction set this library was compiled for ("avx512vnni", "avx2", "generic", "generic-neon").
const char* fmoe_qmv_isa(void) { return FMOE_ISA_NAME; }

// out[n, k] = scale * q + bias in float32 (the float32 product is rounded, then the sum: same as numpy/mlx float32).
int fmoe_dequant(const uint32_t* w, const void* scales, const void* biases, int scales_bf16, float* out, int64_t N,
                 int64_t K, int bits, int group_size, int nthreads) {
  if (!valid_bits(bits)) return -1;
  if (!(group_size == 32 || group_size == 64 || group_size == 128)) return -2;
  if (K % group_size != 0 || K % 8 != 0) return -3;
  if (nthreads < 1) nthreads = 1;
  const int64_t wpr = K * bits / 32, gpr = K / group_size;
  const uint32_t mask = (1u << bits) - 1u;
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / K);
  parallel_chunks((N + grain - 1) / grain, nthreads, [&](int64_t c) {
  for (int64_t n = c * grain; n < std::min(N, (c + 1) * grain); ++n) {
    const uint8_t* rb = reinterpret_cast<const uint8_t*>(w + n * wpr);
    float* o = out + n * K;
    for (int64_t g = 0; g < gpr; ++g) {
      const float sc = scales_bf16 ? load_scale<true>(scales, n * gpr + g) : load_scale<false>(scales, n * gpr + g);
      const float bi = scales_bf16 ? load_scale<true>(biases, n * gpr + g) : load_scale<false>(biases, n * gpr + g);
      const int64_t k0 = g * group_size;
      // 8 codes at a time: they occupy `bits` consecutive bytes of the LSB-first stream
#if FMOE_AVX2
      if (bits == 5 || bits == 6) {  // 8 codes span 5 / 6 bytes: portable code
        for (int64_t k = k0; k < k0 + group_size; k += 8) {
          uint64_t v = 0;
          std::memcpy(&v, rb + k * bits / 8, static_cast<size_t>(bits));
          for (int e = 0; e < 8; ++e) o[k + e] = sc * static_cast<float>((v >> (bits * e)) & mask) + bi;
        }
        continue;
      }
      const __m256 vs = _mm256_set1_ps(sc), vb = _mm256_set1_ps(bi);
      const __m256i shifts = _mm256_setr_epi32(0, bits, 2 * bits, 3 * bits, 4 * bits, 5 * bits, 6 * bits, 7 * bits);
      const __m256i vm = _mm256_set1_epi32(static_cast<int>(mask));
      for (int64_t k = k0; k < k0 + group_size; k += 8) {
        __m256i c;
        if (bits == 8) {
          c = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(rb + k)));
        } else {
          uint32_t v = 0;
          std::memcpy(&v, rb + k * bits / 8, static_cast<size_t>(bits));
          c = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(v)), shifts), vm);
        }
        _mm256_storeu_ps(o + k, _mm256_add_ps(_mm256_mul_ps(vs, _mm256_cvtepi32_ps(c)), vb));
      }
#else
      for (int64_t k = k0; k < k0 + group_size; k += 8) {
        uint64_t v = 0;
        std::memcpy(&v, rb + k * bits / 8, static_cast<size_t>(bits));
        for (int e = 0; e < 8; ++e)
          o[k + e] = sc * static_cast<float>((v >> (bits * e)) & mask) + bi;  // built with -ffp-contract=off
      }
#endif
    }
  }
  });
  return 0;
}

// A token's routed experts in one call (decode): y = sum_e weights[e] * down_e(silu(gate_e x) * up_e x), or y += that
// when accumulate != 0.  ptrs: 9 pointers per expert (gate w, s, b, up w, s, b, down w, s, b); inter[e]: that
// expert's intermediate size (gate/up: [inter, H], down: [H, inter]); all matrices share bits, group size and the
// scales dtype.  mode: as fmoe_qmv.  Returns 0, or < 0 on unsupported arguments.
int fmoe_moe_fused(const void* const* ptrs, const int64_t* inter, const float* weights, int E, int64_t H,
                   int scales_bf16, int bits, int group_size, const float* x, float* y, int accumulate, int nthreads,
                   int mode) {
  if (!valid_bits(bits)) return -1;
  if (!(group_size == 32 || group_size == 64 || group_size == 128)) return -2;
  if (E < 0 || H <= 0 || H % group_size != 0) return -3;
  std::vector<ExpertPtrs> ex(static_cast<size_t>(E));
  for (int e = 0; e < E; ++e) {
    if (inter[e] <= 0 || inter[e] % group_size != 0) return -3;
    for (int m = 0; m < 3; ++m) {
      ex[e].w[m] = static_cast<const uint32_t*>(ptrs[9 * e + 3 * m]);
      ex[e].s[m] = ptrs[9 * e + 3 * m + 1];
      ex[e].b[m] = ptrs[9 * e + 3 * m + 2];
    }
    ex[e].inter = inter[e];
    ex[e].weight = weights[e];
  }
  if (nthreads < 1) nthreads = 1;
  if (E == 0) {
    if (!accumulate) std::memset(y, 0, sizeof(float) * static_cast<size_t>(H));
    return 0;
  }
#if FMOE_AVX2
  if (mode == 0 || mode == 1)
    return scales_bf16 ? fused_bits<true>(ex.data(), E, H, x, y, accumulate, nthreads, mode, bits, group_size)
                       : fused_bits<false>(ex.data(), E, H, x, y, accumulate, nthreads, mode, bits, group_size);
#endif
  if (scales_bf16)
    moe_fused_run(ScalarOps<true>{bits, group_size}, ex.data(), E, H, x, y, accumulate, nthreads, 2);
  else
    moe_fused_run(ScalarOps<false>{bits, group_size}, ex.data(), E, H, x, y, accumulate, nthreads, 2);
  return 0;
}

}  // extern "C"
#endif  // FMOE_PART == 0
