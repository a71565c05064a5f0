// kvmid's JetStream publisher beside a bench run (server/nats): its link,
// its spool in the run's temp dir, and what it did -- records JetStream
// acknowledged, what the bus dropped before the publisher took it, whether
// the spool filled -- checked at the end against the stream itself.
#pragma once

#include "server/nats/jetstream_publisher.hpp"
#include "server/nats/nats_link.hpp"

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

namespace kvmid {
class core;
}

namespace bench {

struct nats_figures {
  bool on = false;
  uint64_t published = 0;       // acked in the measured window
  double published_per_s = 0;
  uint64_t published_total = 0; // acked over the whole run, drained at its end
  int64_t stream_messages = -1; // what the stream holds then (-1: unreadable)
  uint64_t bus_dropped = 0;     // records the publisher's bus queue could not take
  int64_t spool_peak = 0;       // most records in the spool at a time
  uint64_t spool_full = 0;      // records the full spool dropped
};

class publishing {
public:
  // Throws naming what failed (spool, link, stream).
  publishing(kvmid::core& c, const kvmid::nats_options& o, const std::filesystem::path& spool_dir);
  ~publishing();
  publishing(const publishing&) = delete;
  publishing& operator=(const publishing&) = delete;

  uint64_t published() const;
  void sample(); // notes the spool's fill
  // After the run: waits (up to 60 s) until the acks stop coming and the
  // spool is empty, then reads the stream's message count.
  nats_figures finish(uint64_t window_published, double window_s);

private:
  double metric(const std::string& name) const;

  kvmid::core& core_;
  kvmid::nats_options o_;
  std::unique_ptr<kvmid::nats_link> link_;
  std::unique_ptr<kvmid::jetstream_publisher> publisher_;
  int64_t spool_peak_ = 0;
};

} // namespace bench
