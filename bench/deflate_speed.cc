// Single-core throughput and ratio of kiln's gzip level-1 encoder (layers/fast_deflate) against
// libdeflate level 1, on a file cut into 1 MiB pieces as kiln's GzipEncoder cuts a layer, and on
// random bytes of the same size. Every piece is checked by decompressing it (outside the timing).
//
//   deflate_speed FILE [RUNS=3] [fast-text|libdeflate-text]   (one codec on FILE only, for perf)
//
// Prints per codec: the median of RUNS timings (thread CPU time) in MB/s (10^6 bytes per second of input), the
// ratio, and the compressed size. Built with the tests (tests/CMakeLists.txt).
#include <libdeflate.h>

#include <algorithm>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "layers/fast_deflate.h"

namespace {

constexpr std::size_t kPiece = std::size_t{1} << 20;

using Codec = std::function<std::size_t(const std::uint8_t*, std::size_t, std::uint8_t*, std::size_t, bool)>;

// This thread's CPU time: other processes on a shared machine do not count (wall time would).
double cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

struct Result {
  double mbps, best;
  std::size_t out;
};

Result run(const std::vector<std::uint8_t>& data, const Codec& c, int runs) {
  std::vector<std::uint8_t> out(kiln::layers::fast_deflate_bound(kPiece) + 1024);
  std::vector<double> secs;
  std::size_t total = 0;
  for (int r = 0; r < runs; ++r) {
    total = 0;
    const double t0 = cpu_seconds();
    for (std::size_t i = 0; i < data.size(); i += kPiece) {
      std::size_t m = std::min(kPiece, data.size() - i);
      std::size_t n = c(data.data() + i, m, out.data(), out.size(), i + m == data.size());
      if (n == 0) throw std::runtime_error("compression failed");
      total += n;
    }
    secs.push_back(cpu_seconds() - t0);
  }
  std::sort(secs.begin(), secs.end());
  const double mb = static_cast<double>(data.size()) / 1e6;
  return {mb / secs[secs.size() / 2], mb / secs.front(), total};
}

void verify(const std::vector<std::uint8_t>& data, const Codec& c) {
  std::vector<std::uint8_t> out(kiln::layers::fast_deflate_bound(kPiece) + 1024), back(kPiece);
  libdeflate_decompressor* d = libdeflate_alloc_decompressor();
  for (std::size_t i = 0; i < data.size(); i += kPiece) {
    std::size_t m = std::min(kPiece, data.size() - i);
    std::size_t n = c(data.data() + i, m, out.data(), out.size(), true);
    std::size_t got = 0;
    if (libdeflate_deflate_decompress(d, out.data(), n, back.data(), back.size(), &got) != LIBDEFLATE_SUCCESS ||
        got != m || std::memcmp(back.data(), data.data() + i, m) != 0)
      throw std::runtime_error("round trip failed at piece " + std::to_string(i / kPiece));
  }
  libdeflate_free_decompressor(d);
}

void report(const char* what, const char* codec, std::size_t in, const Result& r) {
  std::printf("%-8s %-14s %8.1f MB/s (best %.1f)  ratio %.3f  (%zu -> %zu)\n", what, codec, r.mbps, r.best,
              static_cast<double>(in) / static_cast<double>(r.out), in, r.out);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: deflate_speed FILE [RUNS]\n");
    return 2;
  }
  int runs = argc > 2 ? std::atoi(argv[2]) : 3;
  std::ifstream f(argv[1], std::ios::binary | std::ios::ate);
  std::vector<std::uint8_t> text(static_cast<std::size_t>(std::max<std::streamoff>(0, f.tellg())));
  f.seekg(0);
  f.read(reinterpret_cast<char*>(text.data()), static_cast<std::streamsize>(text.size()));
  if (text.empty()) {
    std::fprintf(stderr, "cannot read %s\n", argv[1]);
    return 2;
  }
  kiln::layers::FastDeflate fd;
  Codec fast = [&](const std::uint8_t* in, std::size_t n, std::uint8_t* out, std::size_t cap, bool final) {
    return fd.compress(in, n, out, cap, final);
  };
  libdeflate_compressor* lc = libdeflate_alloc_compressor(1);
  Codec libd = [&](const std::uint8_t* in, std::size_t n, std::uint8_t* out, std::size_t cap, bool) {
    return libdeflate_deflate_compress(lc, in, n, out, cap);
  };
  if (argc > 3) {  // for profiling (perf stat / record): one codec on the file only
    const bool f = std::string(argv[3]) == "fast-text";
    report("text", f ? "fast_deflate" : "libdeflate-1", text.size(), run(text, f ? fast : libd, runs));
    return 0;
  }
  std::vector<std::uint8_t> rnd(text.size());
  std::mt19937_64 g(42);
  for (std::size_t i = 0; i + 8 <= rnd.size(); i += 8) {
    std::uint64_t v = g();
    std::memcpy(&rnd[i], &v, 8);
  }

  verify(text, fast);
  verify(rnd, fast);
  std::printf("median of %d runs, 1 MiB pieces, one core\n", runs);
  Result ft = run(text, fast, runs), lt = run(text, libd, runs);
  report("text", "fast_deflate", text.size(), ft);
  report("text", "libdeflate-1", text.size(), lt);
  std::printf("text     speedup %.2fx\n", ft.mbps / lt.mbps);
  Result fr = run(rnd, fast, runs), lr = run(rnd, libd, runs);
  report("random", "fast_deflate", rnd.size(), fr);
  report("random", "libdeflate-1", rnd.size(), lr);
  libdeflate_free_compressor(lc);
  return 0;
}
