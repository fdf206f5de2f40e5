// A check of the native kernel (fmoe/kernels/qmv.cpp) that needs no Python: built for another architecture with a
// cross compiler and run under an emulator (tests/kernels/test_other_arch.py runs it for aarch64 under qemu-user).
// Random packed weights of every width and group size, float32 and bf16 scales, 1 and 3 activation rows, 1 and 2
// threads, all three modes: fmoe_qmv and fmoe_dequant against a double-precision reference that unpacks mlx's
// little-endian bit stream (value j at bit j * bits) on its own; then fmoe_moe_fused (three experts' gate, up, silu,
// down and weighted sum in one call) at every width, group size and scale dtype, 1 and 2 threads, with and without
// accumulating into y. Prints one line per failure and "ok N" at the end.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

extern "C" int fmoe_qmv(const uint32_t* w, const void* scales, const void* biases, int scales_bf16, const float* x,
                        float* y, int64_t N, int64_t K, int M, int64_t x_stride, int64_t y_stride, int bits,
                        int group_size, int nthreads, int mode);
extern "C" int fmoe_moe_fused(const void* const* ptrs, const int64_t* inter, const float* weights, int E, int64_t H,
                              int scales_bf16, int bits, int group_size, const float* x, float* y, int accumulate,
                              int nthreads, int mode);
extern "C" int fmoe_dequant(const uint32_t* w, const void* scales, const void* biases, int scales_bf16, float* out,
                            int64_t N, int64_t K, int bits, int group_size, int nthreads);

static uint32_t code(const std::vector<uint32_t>& w, int64_t row_words, int64_t n, int64_t j, int bits) {
    const uint32_t* r = w.data() + n * row_words;
    int64_t bit = j * bits, word = bit / 32, off = bit % 32;
    uint64_t v = r[word];
    if (off + bits > 32) v |= uint64_t(r[word + 1]) << 32;
    return uint32_t(v >> off) & ((1u << bits) - 1);
}

static float bf16(uint16_t h) { uint32_t u = uint32_t(h) << 16; float f; std::memcpy(&f, &u, 4); return f; }

// One quantized matrix [N, K]: packed words, float32 and bf16 scales and biases, and the dense float64 matrix the
// float32 (or bf16-rounded) ones give.
struct QMat {
    std::vector<uint32_t> w;
    std::vector<float> sf, bf;
    std::vector<uint16_t> sh, bh;
    std::vector<double> dense;
};

static QMat make_qmat(std::mt19937& rng, int64_t N, int64_t K, int bits, int gs, int sbf) {
    std::uniform_int_distribution<uint32_t> any;
    std::normal_distribution<float> normal;
    QMat m;
    const int64_t row_words = K * bits / 32, G = K / gs;
    m.w.resize(N * row_words);
    for (auto& v : m.w) v = any(rng);
    m.sf.resize(N * G), m.bf.resize(N * G), m.sh.resize(N * G), m.bh.resize(N * G);
    for (int64_t i = 0; i < N * G; ++i) {
        float s = 0.01f * (1 + normal(rng) * 0.1f), b = -0.05f * normal(rng);
        uint32_t us, ub;
        std::memcpy(&us, &s, 4);
        std::memcpy(&ub, &b, 4);
        m.sh[i] = uint16_t(us >> 16);
        m.bh[i] = uint16_t(ub >> 16);
        m.sf[i] = sbf ? bf16(m.sh[i]) : s;
        m.bf[i] = sbf ? bf16(m.bh[i]) : b;
    }
    m.dense.resize(N * K);
    for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k)
            m.dense[n * K + k] = double(m.sf[n * G + k / gs]) * code(m.w, row_words, n, k, bits) +
                                 double(m.bf[n * G + k / gs]);
    return m;
}

static std::vector<double> matvec(const QMat& m, int64_t N, int64_t K, const std::vector<double>& x) {
    std::vector<double> y(N, 0.0);
    for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) y[n] += m.dense[n * K + k] * x[k];
    return y;
}

// fmoe_moe_fused (a decode token's routed experts in one call: y (+)= sum_e w_e down_e(silu(gate_e x) * up_e x))
// against the same in float64; returns the failures, counts the checks
static int check_fused(std::mt19937& rng, int& checks) {
    std::normal_distribution<float> normal;
    int failures = 0;
    const int E = 3;
    const int64_t H = 256, I = 128;
    for (int bits : {2, 3, 4, 5, 6, 8})
        for (int gs : {32, 64, 128})
            for (int sbf : {0, 1}) {
                std::vector<QMat> mats;
                for (int e = 0; e < E; ++e) {
                    mats.push_back(make_qmat(rng, I, H, bits, gs, sbf));      // gate
                    mats.push_back(make_qmat(rng, I, H, bits, gs, sbf));      // up
                    mats.push_back(make_qmat(rng, H, I, bits, gs, sbf));      // down
                }
                std::vector<const void*> ptrs;
                for (auto& m : mats) {
                    ptrs.push_back(m.w.data());
                    ptrs.push_back(sbf ? (const void*)m.sh.data() : (const void*)m.sf.data());
                    ptrs.push_back(sbf ? (const void*)m.bh.data() : (const void*)m.bf.data());
                }
                const int64_t inter[E] = {I, I, I};
                const float weights[E] = {0.5f, 0.3f, 0.2f};
                std::vector<float> x(H), y0(H);
                std::vector<double> xd(H);
                for (int64_t k = 0; k < H; ++k) xd[k] = x[k] = normal(rng);
                for (auto& v : y0) v = normal(rng);
                std::vector<double> ref(H, 0.0);
                for (int e = 0; e < E; ++e) {
                    const auto g = matvec(mats[3 * e], I, H, xd), u = matvec(mats[3 * e + 1], I, H, xd);
                    std::vector<double> h(I);
                    for (int64_t i = 0; i < I; ++i) h[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
                    const auto d = matvec(mats[3 * e + 2], H, I, h);
                    for (int64_t k = 0; k < H; ++k) ref[k] += weights[e] * d[k];
                }
                double scale = 0;
                for (double v : ref) scale = std::fmax(scale, std::fabs(v));
                for (int threads : {1, 2})
                    for (int accumulate : {0, 1}) {
                        std::vector<float> y = y0;
                        const int rc = fmoe_moe_fused(ptrs.data(), inter, weights, E, H, sbf, bits, gs, x.data(),
                                                      y.data(), accumulate, threads, 2);
                        double err = 0;
                        for (int64_t k = 0; k < H; ++k) {
                            const double e = std::fabs(y[k] - (ref[k] + (accumulate ? y0[k] : 0.0)));
                            err = std::isnan(e) ? INFINITY : std::fmax(err, e);
                        }
                        ++checks;
                        if (rc != 0 || err > 1e-4 * scale) {
                            ++failures;
                            std::printf("fused bits %d group %d bf16 %d threads %d accumulate %d: rc %d rel err %g\n",
                                        bits, gs, sbf, threads, accumulate, rc, err / scale);
                        }
                    }
            }
    return failures;
}

int main() {
    std::mt19937 rng(7);
    std::uniform_int_distribution<uint32_t> any;
    std::normal_distribution<float> normal;
    int checks = 0, failures = 0;
    const int64_t N = 37, K = 384;
    for (int bits : {2, 3, 4, 5, 6, 8}) {
        for (int gs : {32, 64, 128}) {
            for (int sbf : {0, 1}) {
                const int64_t row_words = K * bits / 32, G = K / gs;
                std::vector<uint32_t> w(N * row_words);
                for (auto& v : w) v = any(rng);
                std::vector<float> sf(N * G), bfv(N * G);
                std::vector<uint16_t> sh(N * G), bh(N * G);
                for (int64_t i = 0; i < N * G; ++i) {
                    float s = 0.01f * (1 + normal(rng) * 0.1f), b = -0.05f * normal(rng);
                    uint32_t us, ub;
                    std::memcpy(&us, &s, 4);
                    std::memcpy(&ub, &b, 4);
                    sh[i] = uint16_t(us >> 16);
                    bh[i] = uint16_t(ub >> 16);
                    sf[i] = sbf ? bf16(sh[i]) : s;
                    bfv[i] = sbf ? bf16(bh[i]) : b;
                }
                const void* sp = sbf ? (const void*)sh.data() : (const void*)sf.data();
                const void* bp = sbf ? (const void*)bh.data() : (const void*)bfv.data();
                std::vector<double> dense(N * K);
                for (int64_t n = 0; n < N; ++n)
                    for (int64_t k = 0; k < K; ++k)
                        dense[n * K + k] = double(sf[n * G + k / gs]) * code(w, row_words, n, k, bits) +
                                           double(bfv[n * G + k / gs]);
                std::vector<float> deq(N * K);
                int rc = fmoe_dequant(w.data(), sp, bp, sbf, deq.data(), N, K, bits, gs, 2);
                double derr = 0;
                for (int64_t i = 0; i < N * K; ++i) derr = std::fmax(derr, std::fabs(deq[i] - dense[i]));
                ++checks;
                if (rc != 0 || derr > 1e-6) {
                    ++failures;
                    std::printf("dequant bits %d group %d bf16 %d: rc %d max err %g\n", bits, gs, sbf, rc, derr);
                }
                for (int M : {1, 3}) {
                    std::vector<float> x(M * K);
                    for (auto& v : x) v = normal(rng);
                    std::vector<double> ref(M * N, 0.0);
                    double scale = 0;
                    for (int m = 0; m < M; ++m)
                        for (int64_t n = 0; n < N; ++n) {
                            double acc = 0;
                            for (int64_t k = 0; k < K; ++k) acc += dense[n * K + k] * x[m * K + k];
                            ref[m * N + n] = acc;
                            scale = std::fmax(scale, std::fabs(acc));
                        }
                    for (int threads : {1, 2}) {
                        for (int mode : {0, 1, 2}) {
                            std::vector<float> y(M * N, NAN);
                            rc = fmoe_qmv(w.data(), sp, bp, sbf, x.data(), y.data(), N, K, M, K, N, bits, gs, threads,
                                          mode);
                            double err = 0;
                            for (int64_t i = 0; i < M * N; ++i) {
                                double e = std::fabs(y[i] - ref[i]);
                                err = std::isnan(e) ? INFINITY : std::fmax(err, e);
                            }
                            const double tol = mode == 0 ? 1e-3 : 1e-5;      // mode 0 may quantize x to int16
                            ++checks;
                            if (rc != 0 || err > tol * scale) {
                                ++failures;
                                std::printf("qmv bits %d group %d bf16 %d rows %d threads %d mode %d: rc %d rel err %g\n",
                                            bits, gs, sbf, M, threads, mode, rc, err / scale);
                            }
                        }
                    }
                }
            }
        }
    }
    failures += check_fused(rng, checks);
    if (failures) {
        std::printf("FAILED %d of %d\n", failures, checks);
        return 1;
    }
    std::printf("ok %d\n", checks);
    return 0;
}
