#include "server/control/process_metrics.hpp"

#include <charconv>
#include <fstream>
#include <sstream>
#include <string>

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

namespace kvmid::control {

namespace {

std::optional<std::string> slurp(const char* path) {
  std::ifstream in(path);
  if (!in)
    return std::nullopt;
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::optional<double> number(std::string_view s) {
  double v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || p != s.data() + s.size())
    return std::nullopt;
  return v;
}

// Entries of /proc/self/fd but the directory's own.
std::optional<double> open_fds() {
  DIR* d = ::opendir("/proc/self/fd");
  if (!d)
    return std::nullopt;
  std::string own = std::to_string(::dirfd(d));
  double n = 0;
  while (auto* e = ::readdir(d)) {
    std::string_view name = e->d_name;
    if (name != "." && name != ".." && name != own)
      ++n;
  }
  ::closedir(d);
  return n;
}

metric_family process_family(std::string name, std::string help, double v,
                     metric_type t = metric_type::gauge) {
  metric_sample s;
  s.value = v;
  return {std::move(name), std::move(help), t, {std::move(s)}};
}

} // namespace

std::optional<proc_stat> parse_proc_stat(std::string_view line) {
  // "pid (comm) state ppid ...": fields are counted after comm's last ')'.
  auto close = line.rfind(')');
  if (close == std::string_view::npos)
    return std::nullopt;
  std::vector<std::string_view> f; // f[0] is field 3 (state)
  size_t i = close + 1;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\n'))
      ++i;
    size_t j = i;
    while (j < line.size() && line[j] != ' ' && line[j] != '\n')
      ++j;
    if (j > i)
      f.emplace_back(line.substr(i, j - i));
    i = j;
  }
  // utime 14, stime 15, starttime 22, vsize 23, rss 24 (1-based, proc(5)).
  auto field = [&](size_t n) { return n - 3 < f.size() ? number(f[n - 3]) : std::nullopt; };
  auto ut = field(14), st = field(15), start = field(22), vsize = field(23), rss = field(24);
  if (!ut || !st || !start || !vsize || !rss)
    return std::nullopt;
  return proc_stat{*ut, *st, *start, *vsize, *rss};
}

std::optional<double> parse_boot_time(std::string_view file) {
  for (size_t i = 0; i < file.size();) {
    auto eol = file.find('\n', i);
    auto line = file.substr(i, eol == std::string_view::npos ? std::string_view::npos : eol - i);
    if (line.starts_with("btime "))
      return number(line.substr(6));
    if (eol == std::string_view::npos)
      break;
    i = eol + 1;
  }
  return std::nullopt;
}

std::vector<metric_family> process_metrics() {
  std::vector<metric_family> out;
  double ticks = double(::sysconf(_SC_CLK_TCK));
  auto stat_line = slurp("/proc/self/stat");
  auto st = stat_line ? parse_proc_stat(*stat_line) : std::nullopt;
  if (st && ticks > 0) {
    out.push_back(process_family("process_cpu_seconds_total",
                         "Total user and system CPU time spent in seconds.",
                         (st->utime_ticks + st->stime_ticks) / ticks, metric_type::counter));
  }
  auto fds = open_fds();
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0)
    out.push_back(process_family("process_max_fds", "Maximum number of open file descriptors.",
                               double(rl.rlim_cur)));
  if (fds)
    out.push_back(process_family("process_open_fds", "Number of open file descriptors.", *fds));
  if (st)
    out.push_back(process_family("process_resident_memory_bytes", "Resident memory size in bytes.",
                               st->rss_pages * double(::sysconf(_SC_PAGESIZE))));
  auto boot = slurp("/proc/stat");
  auto btime = boot ? parse_boot_time(*boot) : std::nullopt;
  if (st && btime && ticks > 0)
    out.push_back(process_family("process_start_time_seconds",
                               "Start time of the process since unix epoch in seconds.",
                               *btime + st->start_ticks / ticks));
  if (st)
    out.push_back(process_family("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                               st->vsize_bytes));
  return out;
}

} // namespace kvmid::control
