#include "bench/publishing.hpp"

#include "actors/core.hpp"
#include "tests/support/metric_sum.hpp"

#include <nats/nats.h>

#include <chrono>
#include <stdexcept>
#include <thread>

namespace bench {

publishing::publishing(kvmid::core& c, const kvmid::nats_options& o,
                       const std::filesystem::path& spool_dir)
  : core_(c), o_(o) {
  auto sp = kvmid::spool::open(spool_dir, o.spool_records);
  if (auto* err = std::get_if<std::string>(&sp))
    throw std::runtime_error("bench: nats spool: " + *err);
  auto l = kvmid::nats_link::connect(o);
  if (auto* err = std::get_if<std::string>(&l))
    throw std::runtime_error("bench: nats: " + *err);
  link_ = std::move(std::get<std::unique_ptr<kvmid::nats_link>>(l));
  publisher_ = std::make_unique<kvmid::jetstream_publisher>(*link_, c.bus(), c.metrics(), o,
                                                            std::move(std::get<kvmid::spool>(sp)));
}

publishing::~publishing() {
  publisher_.reset(); // off the bus before the core goes
  link_.reset();
}

double publishing::metric(const std::string& name) const {
  return kvmid::test::metric_sum(core_.metrics(), name);
}

uint64_t publishing::published() const {
  return uint64_t(metric("kvmid_nats_published_total"));
}

void publishing::sample() {
  spool_peak_ = std::max(spool_peak_, int64_t(metric("kvmid_nats_spool_records")));
}

nats_figures publishing::finish(uint64_t window_published, double window_s) {
  nats_figures f;
  f.on = true;
  f.published = window_published;
  f.published_per_s = window_s > 0 ? double(window_published) / window_s : 0;
  // Drained: no ack for 1 s and nothing spooled.
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  uint64_t last = published();
  auto quiet_since = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    sample();
    uint64_t now = published();
    if (now != last || metric("kvmid_nats_spool_records") > 0) {
      last = now;
      quiet_since = std::chrono::steady_clock::now();
    } else if (std::chrono::steady_clock::now() - quiet_since > std::chrono::seconds(1)) {
      break;
    }
  }
  f.published_total = last;
  f.bus_dropped = uint64_t(metric("kvmid_bus_dropped_total"));
  f.spool_peak = spool_peak_;
  f.spool_full = uint64_t(metric("kvmid_nats_spool_full_total"));
  // The stream's own count: every acked record once (de-duplicated by id).
  jsCtx* js = nullptr;
  jsStreamInfo* si = nullptr;
  if (natsConnection_JetStream(&js, link_->connection(), nullptr) == NATS_OK
      && js_GetStreamInfo(&si, js, o_.stream.c_str(), nullptr, nullptr) == NATS_OK) {
    f.stream_messages = int64_t(si->State.Msgs);
    jsStreamInfo_Destroy(si);
  }
  jsCtx_Destroy(js);
  return f;
}

} // namespace bench
