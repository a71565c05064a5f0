#include "server/control/process_metrics.hpp"
#include "server/control/prometheus.hpp"
#include "tests/support/exposition.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <fcntl.h>
#include <map>
#include <unistd.h>

using namespace kvmid;
using namespace kvmid::control;

namespace {

double wall_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// The wall clock when this binary's statics were built: after the process
// started, before any test ran.
const double binary_loaded_at = wall_now();

std::map<std::string, double> scrape_process() {
  auto fams = process_metrics();
  return test::exposition_samples(render_prometheus(fams));
}

} // namespace

TEST_SUITE("control") {

TEST_CASE("process metrics: every conventional family with plausible values") {
  auto m = scrape_process();
  for (const char* name :
       {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
        "process_open_fds", "process_max_fds", "process_start_time_seconds"}) {
    CAPTURE(name);
    REQUIRE(m.count(name) == 1);
  }
  CHECK(m["process_cpu_seconds_total"] >= 0);
  CHECK(m["process_resident_memory_bytes"] > 0);
  CHECK(m["process_virtual_memory_bytes"] >= m["process_resident_memory_bytes"]);
  CHECK(m["process_open_fds"] >= 3); // stdin, stdout, stderr at least
  CHECK(m["process_max_fds"] >= m["process_open_fds"]);
  // /proc/stat's boot time has whole seconds: the start is known to within one.
  CHECK(m["process_start_time_seconds"] <= binary_loaded_at + 1);
  CHECK(m["process_start_time_seconds"] >= binary_loaded_at - 60);
  CHECK(m["process_start_time_seconds"] <= wall_now() + 1);
}

TEST_CASE("process metrics: open fds counts an fd the test opens and closes") {
  double before = scrape_process()["process_open_fds"];
  int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  double during = scrape_process()["process_open_fds"];
  ::close(fd);
  double after = scrape_process()["process_open_fds"];
  CHECK(during == before + 1);
  CHECK(after == before);
}

TEST_CASE("process metrics: cpu seconds grow with work") {
  double before = scrape_process()["process_cpu_seconds_total"];
  volatile uint64_t x = 0;
  double after = before;
  // Spins until the kernel's tick accounting shows it (ticks are 10 ms).
  for (uint64_t round = 0; after == before && round < 100000; ++round) {
    for (int i = 0; i < 1000000; ++i)
      x = x + i;
    after = scrape_process()["process_cpu_seconds_total"];
  }
  CHECK(after > before);
}

TEST_CASE("process metrics: stat lines with spaces and parens in the command name") {
  // Fields 3.. of proc(5): state ppid pgrp session tty tpgid flags minflt cminflt majflt
  // cmajflt utime(14) stime(15) cutime cstime priority nice threads itrealvalue
  // starttime(22) vsize(23) rss(24) ...
  std::string tail = " S 1 1 1 0 -1 0 0 0 0 0 250 50 0 0 20 0 4 0 12345 104857600 2560 rest";
  auto s = parse_proc_stat("4242 (a) (b c)" + tail);
  REQUIRE(s);
  CHECK(s->utime_ticks == 250);
  CHECK(s->stime_ticks == 50);
  CHECK(s->start_ticks == 12345);
  CHECK(s->vsize_bytes == 104857600);
  CHECK(s->rss_pages == 2560);
  CHECK_FALSE(parse_proc_stat("4242 (cut) S 1 1"));
  CHECK_FALSE(parse_proc_stat("no parens at all"));
  CHECK_FALSE(parse_proc_stat("1 (x) S 1 1 1 0 -1 0 0 0 0 0 many 50 0 0 20 0 4 0 1 2 3"));
}

TEST_CASE("process metrics: the boot time line of /proc/stat") {
  CHECK(parse_boot_time("cpu  1 2 3\nintr 5\nbtime 1700000000\nprocesses 9\n") == 1700000000.0);
  CHECK(parse_boot_time("btime 42") == 42.0);
  CHECK_FALSE(parse_boot_time("cpu 1 2\n"));
  CHECK_FALSE(parse_boot_time("btime soon\n"));
}

} // TEST_SUITE
