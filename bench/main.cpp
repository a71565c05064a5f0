// kvmid-bench: prints a table and writes bench-results.json (and a latency
// CDF plot when gnuplot is present). Every figure names the floor it is
// compared to, measured in the same run.
#include "bench/floor.hpp"
#include "proto/codec.hpp"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

namespace {

// The most common event on the hot path (a PF violation) and its reply.
const size_t event_bytes = sizeof(kvmi::msg_hdr) + kvmi::event_size(kvmi::event_id::pf);
const size_t reply_bytes = sizeof(kvmi::msg_hdr) + kvmi::event_reply_size(kvmi::event_id::pf);

nlohmann::json to_json(const bench::summary& s) {
  return {{"p50_ns", s.p50}, {"p99_ns", s.p99}, {"p999_ns", s.p999}, {"max_ns", s.max},
          {"mean_ns", s.mean}};
}

void row(const char* name, const bench::summary& s) {
  std::printf("%-34s %9.1f %9.1f %9.1f %9.1f\n", name, s.p50 / 1e3, s.p99 / 1e3, s.p999 / 1e3,
              s.max / 1e3);
}

void write_cdf(const std::string& path, bench::samples s) {
  std::sort(s.begin(), s.end());
  std::ofstream out(path);
  for (size_t i = 0; i < s.size(); i += std::max<size_t>(1, s.size() / 2000))
    out << s[i] / 1e3 << ' ' << double(i) / double(s.size()) << '\n';
}

} // namespace

int main(int argc, char** argv) {
  size_t rounds = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 50000;
  std::string out_dir = argc > 2 ? argv[2] : ".";
  nlohmann::json report;
  report["event_bytes"] = event_bytes;
  report["reply_bytes"] = reply_bytes;
  report["rounds"] = rounds;

  std::printf("round trip of a %zu-byte event and its %zu-byte reply, %zu rounds (us)\n",
              event_bytes, reply_bytes, rounds);
  std::printf("%-34s %9s %9s %9s %9s\n", "", "p50", "p99", "p99.9", "max");
  auto blocking = bench::floor_blocking(rounds, event_bytes, reply_bytes);
  auto uring = bench::floor_uring(rounds, event_bytes, reply_bytes);
  auto fb = bench::summarize(blocking), fu = bench::summarize(uring);
  row("floor: UNIX socket, blocking", fb);
  row("floor: UNIX socket, io_uring", fu);
  report["floor_blocking"] = to_json(fb);
  report["floor_uring"] = to_json(fu);

  write_cdf(out_dir + "/floor_blocking.dat", blocking);
  write_cdf(out_dir + "/floor_uring.dat", uring);
  std::ofstream(out_dir + "/bench-results.json") << report.dump(2) << '\n';
  std::FILE* gp = popen("gnuplot 2>/dev/null", "w");
  if (gp) {
    std::fprintf(gp,
                 "set terminal png size 900,500\nset output '%s/latency-cdf.png'\n"
                 "set logscale x\nset xlabel 'round trip (us)'\nset ylabel 'fraction'\n"
                 "set key bottom right\n"
                 "plot '%s/floor_blocking.dat' w l t 'floor blocking', "
                 "'%s/floor_uring.dat' w l t 'floor io_uring'\n",
                 out_dir.c_str(), out_dir.c_str(), out_dir.c_str());
    pclose(gp);
  }
  std::printf("wrote %s/bench-results.json and %s/latency-cdf.png\n", out_dir.c_str(),
              out_dir.c_str());
}
