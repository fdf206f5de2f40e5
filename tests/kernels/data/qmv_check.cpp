// A check of the native kernel (fmoe/kernels/qmv.cpp) that needs no Python: built for another architecture with a
// cross compiler and run under an emulator (tests/kernels/test_other_arch.py runs it for aarch64 under qemu-user).
// Random packed weights of every width and group size, float32 and bf16 scales, 1 and 3 activation rows, 1 and 2
// threads, all three modes: fmoe_qmv and fmoe_dequant against a double-precision reference that unpacks mlx's
// little-endian bit stream (value j at bit j * bits) on its own. Prints one line per failure and "ok N" at the end.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

extern "C" int fmoe_qmv(const uint32_t* w, const void* scales, const void* biases, int scales_bf16, const float* x,
                        float* y, int64_t N, int64_t K, int M, int64_t x_stride, int64_t y_stride, int bits,
                        int group_size, int nthreads, int mode);
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
    if (failures) {
        std::printf("FAILED %d of %d\n", failures, checks);
        return 1;
    }
    std::printf("ok %d\n", checks);
    return 0;
}
