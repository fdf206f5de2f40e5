#include QMV_PATH
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>
static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
template <int BITS, int NW>
__attribute__((noinline)) void rowk(const uint32_t* const* rows, const float* sc, const float* bi, const int64_t* gb,
                                     const int16_t* xq, const float* xsc, const float* xsum, int64_t K, float* out) {
  row_defer<BITS, 64, false, 1, NW>(rows, sc, bi, gb, &xq, &xsc, &xsum, K, out);
}
template <int BITS, int NW>
void run(int64_t K, int reps) {
  int64_t wpr = K * BITS / 32, G = K / 64;
  std::mt19937 rng(1);
  std::vector<uint32_t> w(wpr * NW); for (auto& v : w) v = rng();
  std::vector<float> s(G * NW + 8, 0.01f), b(G * NW + 8, -0.02f), x(K);
  std::normal_distribution<float> nd; for (auto& v : x) v = nd(rng);
  std::vector<int16_t> xq(K + 16); std::vector<float> xsc(G + 8), xsum(G + 8);
  prepare_xq<BITS>(x.data(), xq.data(), xsc.data(), xsum.data(), K, 64);
  const uint32_t* rows[NW]; int64_t gb[NW];
  for (int i = 0; i < NW; ++i) { rows[i] = w.data() + i * wpr; gb[i] = i * G; }
  float out[NW]; double best = 1e9; float chk = 0;
  for (int r = 0; r < reps; ++r) {
    double t = now();
    for (int i = 0; i < 100; ++i) { rowk<BITS, NW>(rows, s.data(), b.data(), gb, xq.data(), xsc.data(), xsum.data(), K, out); chk += out[0]; }
    t = (now() - t) / 100; if (t < best) best = t;
  }
  printf("row bits %d NW %d K %ld: %.1f ns/row-pass, %.2f cyc per 64 codes @3.19 (chk %g)\n", BITS, NW, (long)K, best * 1e9,
         best * 3.19e9 / (K * NW / 64.0), chk);
}
int main(int argc, char** argv) {
  int64_t K = argc > 1 ? atol(argv[1]) : 4096;
  for (int i = 0; i < 2; ++i) { run<2, 1>(K, 2000); run<2, 2>(K, 2000); run<2, 4>(K, 2000); run<3, 1>(K, 2000); run<3, 2>(K, 2000); run<3, 4>(K, 2000); }
}
