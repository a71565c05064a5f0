// Sends every bus record to the JetStream stream, on a thread of its own:
// lifecycle records, alerts and reports always, raw KVMI events when
// "raw_events" asks. The vCPU's path never waits for NATS: the bus hands
// records over through bounded queues and this thread alone talks to the
// server. Raw events have a queue of their own, so a fleet's flood of them
// that outruns NATS drops events (kvmid_nats_events_dropped_total), never
// an alert; each batch takes the other records first. Across the two
// queues the stream's order may differ from the bus's: `seq` keeps it.
//
// Records are published asynchronously in batches, each with its
// Nats-Msg-Id (record_subject.hpp), and the batch waits up to
// "ack_timeout_ms" for its acks. Whatever is not acknowledged -- NATS down,
// no stream, acks lost -- goes to the spool (spool.hpp); while the spool
// holds records, new ones queue behind them, so the stream gets them in
// order. The spool drains once the server acks again; a resent record the
// stream already holds is dropped there by its id. A record is counted in
// kvmid_nats_published_total when its ack arrives, once.
#pragma once

#include "actors/event_bus.hpp"
#include "actors/metrics.hpp"
#include "server/nats/nats_link.hpp"
#include "server/nats/nats_options.hpp"
#include "server/nats/spool.hpp"

#include <nats/nats.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace kvmid {

// The bounds of the publisher's two bus queues, in records.
struct publisher_queues {
  size_t records = 65536; // lifecycle records, alerts, reports
  size_t events = 65536;  // raw KVMI events
};

class jetstream_publisher {
public:
  static constexpr size_t batch = 256;
  using queues = publisher_queues;

  jetstream_publisher(nats_link& link, event_bus& bus, metrics_registry& m, nats_options o,
                      spool s, queues q = {});
  // stop()s.
  ~jetstream_publisher();
  jetstream_publisher(const jetstream_publisher&) = delete;
  jetstream_publisher& operator=(const jetstream_publisher&) = delete;

  // Delivers nothing more: what the bus queued and no ack confirmed goes to
  // the spool for the next run. Idempotent.
  void stop();

private:
  using keyed = std::pair<uint64_t, jetstream_message>; // spool key (0: not spooled)
  void run();
  jetstream_message to_message(const bus_record& r) const;
  bool ensure_stream();
  std::vector<bool> publish(const std::vector<keyed>& msgs);
  void to_spool(const jetstream_message& m);
  bool deliverable() const;
  static void on_ack(jsCtx*, natsMsg* m, jsPubAck* pa, jsPubAckErr* pae, void* self);

  nats_link& link_;
  event_bus& bus_;
  nats_options o_;
  spool spool_;
  std::shared_ptr<subscription> records_;
  std::shared_ptr<subscription> events_; // only with raw_events
  uint64_t events_dropped_seen_ = 0;
  jsCtx* js_ = nullptr;
  gauge& connected_;
  gauge& spool_records_;
  counter& spool_full_;
  counter& published_;
  counter& spool_errors_;
  counter& events_dropped_;

  bool stream_ok_ = false;
  bool stream_warned_ = false;
  std::chrono::steady_clock::time_point retry_at_{};
  uint64_t full_streak_ = 0;

  std::mutex ack_mu_;
  std::set<std::string> acked_; // msg ids acked in the batch under way

  std::mutex mu_;
  std::condition_variable cv_;
  bool woken_ = false;
  bool stop_ = false;
  std::thread thread_;
};

} // namespace kvmid
