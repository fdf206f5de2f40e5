// Apply a token bitmask to a row of float32 logits in place: the grammar's per-step cost on the host.
//
// Layout as llguidance writes it: bit (i & 31) of 32-bit word i >> 5 is set when token i is allowed. Disallowed
// tokens (and tokens past the end of the mask, such as a model's padded vocabulary tail) become -inf. One pass over
// the mask words (31 KB for a 248k vocabulary); a word with every token allowed costs one compare, and the others
// are applied branch-free, 8 logits at a time with AVX2 (a bit loop otherwise). Returns the number of allowed tokens.
#include <cmath>
#include <cstdint>
#ifdef __AVX2__
#include <immintrin.h>
#endif

extern "C" int64_t fmoe_mask_logits_f32(float* logits, int64_t n, const uint32_t* words, int64_t nwords) {
    const float ninf = -INFINITY;
    int64_t full = n / 32 < nwords ? n / 32 : nwords;
    int64_t allowed = 0;
    for (int64_t w = 0; w < full; ++w) {
        const uint32_t m = words[w];
        if (m == 0xFFFFFFFFu) {
            allowed += 32;
            continue;
        }
        float* p = logits + w * 32;
        if (m == 0) {
            for (int j = 0; j < 32; ++j) p[j] = ninf;
            continue;
        }
        allowed += __builtin_popcount(m);
#ifdef __AVX2__
        const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        const __m256 vninf = _mm256_set1_ps(ninf);
        for (int q = 0; q < 4; ++q) {
            const __m256i b = _mm256_set1_epi32((int)((m >> (8 * q)) & 0xFFu));
            const __m256i off = _mm256_cmpeq_epi32(_mm256_and_si256(b, lane_bit), _mm256_setzero_si256());
            const __m256 v = _mm256_loadu_ps(p + 8 * q);
            _mm256_storeu_ps(p + 8 * q, _mm256_blendv_ps(v, vninf, _mm256_castsi256_ps(off)));
        }
#else
        uint32_t z = ~m;
        while (z) {
            p[__builtin_ctz(z)] = ninf;
            z &= z - 1;
        }
#endif
    }
    for (int64_t i = full * 32; i < n; ++i) {
        const int64_t w = i >> 5;
        if (w < nwords && ((words[w] >> (i & 31)) & 1u)) {
            ++allowed;
        } else {
            logits[i] = ninf;
        }
    }
    return allowed;
}

// The few-allowed case without touching every logit: when at most `max_allowed` tokens are allowed, copy their
// logits into `out`, a caller-owned buffer that is -inf everywhere else (the ids written by the previous call,
// `dirty[0..*ndirty)`, are reset to -inf first, and this call's ids replace them). Returns the number of allowed
// tokens, or -1 (nothing written) when there are more than `max_allowed`: the caller then masks in place.
extern "C" int64_t fmoe_mask_select_f32(const float* logits, float* out, int64_t n, const uint32_t* words,
                                        int64_t nwords, int32_t* dirty, int64_t* ndirty, int64_t max_allowed) {
    const int64_t nw = (n + 31) / 32 < nwords ? (n + 31) / 32 : nwords;
    int64_t count = 0;
    for (int64_t w = 0; w < nw; ++w) {
        uint32_t m = words[w];
        if (w == nw - 1 && (w + 1) * 32 > n) m &= (n - w * 32 >= 32) ? 0xFFFFFFFFu : ((1u << (n - w * 32)) - 1u);
        count += __builtin_popcount(m);
    }
    if (count > max_allowed) return -1;
    const float ninf = -INFINITY;
    for (int64_t i = 0; i < *ndirty; ++i) out[dirty[i]] = ninf;
    int64_t k = 0;
    for (int64_t w = 0; w < nw; ++w) {
        uint32_t m = words[w];
        while (m) {
            const int64_t id = w * 32 + __builtin_ctz(m);
            m &= m - 1;
            out[id] = logits[id];  // id < n: the last word was cut to n bits above
            dirty[k++] = (int32_t)id;
        }
    }
    *ndirty = k;
    return count;
}

// Both in one call (one foreign call per step): the few-allowed copy into `out` when at most `max_allowed` tokens
// are allowed (returns -1 - count), else the in-place mask of `logits` (returns count).
extern "C" int64_t fmoe_mask_apply_f32(float* logits, float* out, int64_t n, const uint32_t* words, int64_t nwords,
                                       int32_t* dirty, int64_t* ndirty, int64_t max_allowed) {
    const int64_t got = fmoe_mask_select_f32(logits, out, n, words, nwords, dirty, ndirty, max_allowed);
    if (got >= 0) return -1 - got;
    return fmoe_mask_logits_f32(logits, n, words, nwords);
}
