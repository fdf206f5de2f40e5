// session 12 harness: includes qmv.cpp; times fmoe_qmv (1 thread) hot and cold, and single-row kernels from L1
#include QMV_PATH
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>
#include <cstring>
static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
int main(int argc, char** argv) {
  int bits = argc > 1 ? atoi(argv[1]) : 2;
  int64_t N = argc > 2 ? atol(argv[2]) : 1024, K = argc > 3 ? atol(argv[3]) : 4096;
  int gs = argc > 4 ? atoi(argv[4]) : 64;
  int nt = argc > 5 ? atoi(argv[5]) : 1;
  int reps = argc > 6 ? atoi(argv[6]) : 200;
  int64_t wpr = K * bits / 32, G = K / gs;
  size_t mbytes = N * wpr * 4 + 2 * N * G * 4;
  int nmat = std::max<int64_t>(1, (256ll << 20) / mbytes);
  std::mt19937 rng(1);
  std::vector<std::vector<uint32_t>> W(nmat);
  std::vector<std::vector<float>> S(nmat), B(nmat);
  for (int m = 0; m < nmat; ++m) {
    W[m].resize(N * wpr); for (auto& v : W[m]) v = rng();
    S[m].resize(N * G); B[m].resize(N * G);
    for (auto& v : S[m]) v = 0.01f * (1 + (rng() % 100) / 100.f);
    for (auto& v : B[m]) v = -0.02f * (1 + (rng() % 100) / 100.f);
  }
  std::vector<float> x(K), y(N);
  std::normal_distribution<float> nd;
  for (auto& v : x) v = nd(rng);
  // hot
  double best_hot = 1e9;
  for (int r = 0; r < reps; ++r) {
    double t = now();
    fmoe_qmv(W[0].data(), S[0].data(), B[0].data(), 0, x.data(), y.data(), N, K, 1, K, N, bits, gs, nt, 0);
    t = now() - t; if (t < best_hot) best_hot = t;
  }
  // cold: rotate, best per matrix, median-ish: average of per-round times
  double best_cold = 1e9;
  for (int r = 0; r < 5; ++r) {
    double t = now();
    for (int m = 0; m < nmat; ++m)
      fmoe_qmv(W[m].data(), S[m].data(), B[m].data(), 0, x.data(), y.data(), N, K, 1, K, N, bits, gs, nt, 0);
    t = (now() - t) / nmat; if (t < best_cold) best_cold = t;
  }
  double chk = 0; for (auto v : y) chk += v;
  printf("bits %d %ldx%ld gs %d nt %d: hot %.1f us (%.2f GB/s, %.2f cyc/64codes @3.19) cold %.1f us (%.2f GB/s) chk %.6g\n",
         bits, (long)N, (long)K, gs, nt, best_hot * 1e6, mbytes / best_hot / 1e9, best_hot * 3.19e9 * nt / (N * K / 64.0),
         best_cold * 1e6, mbytes / best_cold / 1e9, chk);
}
