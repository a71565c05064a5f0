#include "server/nats/jetstream_publisher.hpp"

#include "actors/log.hpp"
#include "server/control/sse.hpp"
#include "server/nats/record_subject.hpp"

#include <pthread.h>

#include <cstdio>

namespace kvmid {

namespace {
constexpr auto retry_pause = std::chrono::milliseconds(500);
constexpr auto idle_tick = std::chrono::milliseconds(200);

bus_filter only(std::vector<bus_kind> kinds) {
  bus_filter f;
  f.kinds = std::move(kinds);
  return f;
}
} // namespace

jetstream_publisher::jetstream_publisher(nats_link& link, event_bus& bus, metrics_registry& m,
                                         nats_options o, spool s, queues q)
  : link_(link), bus_(bus), o_(std::move(o)), spool_(std::move(s)),
    connected_(m.get_gauge("kvmid_nats_connected", "1 while kvmid is connected to a NATS server")),
    spool_records_(m.get_gauge("kvmid_nats_spool_records",
                               "Records in the on-disk spool, waiting for NATS to ack them")),
    spool_full_(m.get_counter("kvmid_nats_spool_full_total",
                              "Records dropped because the NATS spool was full")),
    published_(m.get_counter("kvmid_nats_published_total",
                             "Records JetStream acknowledged (each once)")),
    spool_errors_(m.get_counter("kvmid_nats_spool_errors_total",
                                "Records lost because the spool could not be written or read")),
    events_dropped_(m.get_counter("kvmid_nats_events_dropped_total",
                                  "Raw KVMI events dropped because publishing fell behind them")) {
  m.get_gauge("kvmid_nats_spool_capacity_records", "The NATS spool's bound, in records")
    .set(int64_t(spool_.capacity()));
  spool_records_.set(int64_t(spool_.size()));
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.PublishAsync.AckHandler = &jetstream_publisher::on_ack;
  jo.PublishAsync.AckHandlerClosure = this;
  jo.PublishAsync.MaxPending = int64_t(batch) * 4;
  if (natsConnection_JetStream(&js_, link_.connection(), &jo) != NATS_OK)
    throw std::runtime_error(std::string("nats: no JetStream context: ") + nats_GetLastError(nullptr));
  auto wake = [this] {
    std::lock_guard lk(mu_);
    woken_ = true;
    cv_.notify_one();
  };
  records_ = bus_.subscribe(only({bus_kind::lifecycle, bus_kind::alert, bus_kind::report}),
                            q.records);
  records_->set_notify(wake);
  if (o_.raw_events) {
    events_ = bus_.subscribe(only({bus_kind::event}), q.events);
    events_->set_notify(wake);
  }
  if (!spool_.empty() && log_on(log_info))
    std::fprintf(stderr, "kvmid: nats: %zu spooled records from an earlier run wait for NATS\n",
                 spool_.size());
  thread_ = std::thread([this] { run(); });
}

jetstream_publisher::~jetstream_publisher() {
  stop();
  records_.reset();
  events_.reset();
  jsCtx_Destroy(js_);
}

void jetstream_publisher::stop() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
    cv_.notify_one();
  }
  if (thread_.joinable())
    thread_.join();
}

void jetstream_publisher::on_ack(jsCtx*, natsMsg* m, jsPubAck* pa, jsPubAckErr* pae, void* self) {
  auto* p = static_cast<jetstream_publisher*>(self);
  const char* id = nullptr;
  if (pa && natsMsgHeader_Get(m, "Nats-Msg-Id", &id) == NATS_OK && id) {
    std::lock_guard lk(p->ack_mu_);
    p->acked_.insert(id);
  } else if (pae && log_on(log_debug)) {
    std::fprintf(stderr, "kvmid: nats: publish to %s refused: %s\n", natsMsg_GetSubject(m),
                 natsStatus_GetText(pae->Err));
  }
  natsMsg_Destroy(m);
}

jetstream_message jetstream_publisher::to_message(const bus_record& r) const {
  return {record_subject(o_.record_subject_root(), o_.host, r),
          record_msg_id(o_.host, bus_.boot(), r.seq), control::format_record_json(r)};
}

bool jetstream_publisher::deliverable() const {
  return link_.connected() && std::chrono::steady_clock::now() >= retry_at_;
}

bool jetstream_publisher::ensure_stream() {
  if (stream_ok_ || !o_.create_stream)
    return true;
  jsStreamInfo* si = nullptr;
  jsErrCode jerr{};
  natsStatus s = js_GetStreamInfo(&si, js_, o_.stream.c_str(), nullptr, &jerr);
  if (s == NATS_NOT_FOUND) {
    std::string subjects = o_.record_subject_root() + ".>";
    const char* subs[] = {subjects.c_str()};
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    cfg.Name = o_.stream.c_str();
    cfg.Subjects = subs;
    cfg.SubjectsLen = 1;
    cfg.Storage = js_FileStorage;
    cfg.Replicas = int64_t(o_.stream_replicas);
    cfg.Duplicates = std::chrono::duration_cast<std::chrono::nanoseconds>(o_.duplicate_window).count();
    s = js_AddStream(&si, js_, &cfg, nullptr, &jerr);
    if (s == NATS_OK && log_on(log_info))
      std::fprintf(stderr, "kvmid: nats: created stream %s for %s\n", o_.stream.c_str(),
                   subjects.c_str());
  }
  jsStreamInfo_Destroy(si);
  if (s != NATS_OK) {
    // One line per streak of failures, not one per retry.
    if (!stream_warned_ && log_on(log_warn))
      std::fprintf(stderr, "kvmid: nats: stream %s unavailable: %s (JetStream error %d)\n",
                   o_.stream.c_str(), natsStatus_GetText(s), int(jerr));
    stream_warned_ = true;
    retry_at_ = std::chrono::steady_clock::now() + retry_pause;
    return false;
  }
  stream_ok_ = true;
  stream_warned_ = false;
  return true;
}

std::vector<bool> jetstream_publisher::publish(const std::vector<keyed>& msgs) {
  {
    std::lock_guard lk(ack_mu_);
    acked_.clear();
  }
  for (auto& [key, m] : msgs) {
    natsMsg* nm = nullptr;
    natsStatus s = natsMsg_Create(&nm, m.subject.c_str(), nullptr, m.body.data(), int(m.body.size()));
    if (s == NATS_OK)
      s = natsMsgHeader_Set(nm, "Nats-Msg-Id", m.msg_id.c_str());
    if (s == NATS_OK)
      s = js_PublishMsgAsync(js_, &nm, nullptr);
    natsMsg_Destroy(nm);
    if (s != NATS_OK)
      break; // the rest stays unacknowledged
  }
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MaxWait = o_.ack_timeout.count();
  js_PublishAsyncComplete(js_, &po);
  // Take back what is still unacknowledged: it is spooled and resent with
  // the same id, so a late copy in the stream does not count twice.
  natsMsgList pending{};
  if (js_PublishAsyncGetPendingList(&pending, js_) == NATS_OK)
    natsMsgList_Destroy(&pending);
  std::vector<bool> ok(msgs.size());
  std::lock_guard lk(ack_mu_);
  for (size_t i = 0; i < msgs.size(); ++i)
    ok[i] = acked_.count(msgs[i].second.msg_id) > 0;
  acked_.clear();
  return ok;
}

void jetstream_publisher::to_spool(const jetstream_message& m) {
  std::string err;
  switch (spool_.append(m, &err)) {
    case spool::append_result::stored:
      full_streak_ = 0;
      return;
    case spool::append_result::full:
      spool_full_.inc();
      // One line when the spool fills, not one per dropped record.
      if (full_streak_++ == 0 && log_on(log_error))
        std::fprintf(stderr,
                     "kvmid: nats: spool full (%zu records in %s); dropping records until NATS "
                     "acks again (kvmid_nats_spool_full_total)\n",
                     spool_.capacity(), spool_.dir().c_str());
      return;
    case spool::append_result::io_error:
      spool_errors_.inc();
      if (log_on(log_error))
        std::fprintf(stderr, "kvmid: nats: spool write failed, record %s lost: %s\n",
                     m.msg_id.c_str(), err.c_str());
      return;
  }
}

void jetstream_publisher::run() {
  pthread_setname_np(pthread_self(), "kvmid-nats");
  run_below_event_path(); // and the ack threads the library starts from here
  std::vector<bus_record> got;
  bool busy = false;
  while (true) {
    bool stopping;
    {
      std::unique_lock lk(mu_);
      if (!busy)
        cv_.wait_for(lk, idle_tick, [&] { return woken_ || stop_; });
      woken_ = false;
      stopping = stop_;
    }
    busy = false;
    bool up = link_.connected();
    connected_.set(up ? 1 : 0);
    if (!up)
      stream_ok_ = false; // a restarted server may have lost it
    got.clear();
    size_t want = stopping ? SIZE_MAX : batch;
    records_->poll(got, want);
    if (events_) {
      if (got.size() < want)
        events_->poll(got, want - got.size());
      uint64_t d = events_->dropped();
      events_dropped_.inc(d - events_dropped_seen_);
      events_dropped_seen_ = d;
    }
    busy = got.size() == batch;
    std::vector<keyed> fresh;
    fresh.reserve(got.size());
    for (auto& r : got)
      fresh.emplace_back(0, to_message(r));
    bool direct = !stopping && spool_.empty() && deliverable() && ensure_stream();
    if (direct && !fresh.empty()) {
      auto ok = publish(fresh);
      bool all = true;
      for (size_t i = 0; i < fresh.size(); ++i) {
        if (ok[i]) {
          published_.inc();
        } else {
          all = false;
          to_spool(fresh[i].second);
        }
      }
      if (!all) {
        stream_ok_ = false;
        retry_at_ = std::chrono::steady_clock::now() + retry_pause;
      }
    } else {
      for (auto& [key, m] : fresh)
        to_spool(m);
    }
    if (!stopping && !spool_.empty() && deliverable() && ensure_stream()) {
      std::vector<std::string> lost;
      auto old = spool_.oldest(batch, &lost);
      for (auto& l : lost) {
        spool_errors_.inc();
        if (log_on(log_error))
          std::fprintf(stderr, "kvmid: nats: unreadable spool file %s removed\n", l.c_str());
      }
      auto ok = publish(old);
      size_t acked = 0;
      for (size_t i = 0; i < old.size(); ++i)
        if (ok[i]) {
          ++acked;
          published_.inc();
          spool_.remove(old[i].first);
        }
      if (acked < old.size()) {
        stream_ok_ = false;
        retry_at_ = std::chrono::steady_clock::now() + retry_pause;
      } else if (spool_.empty()) {
        full_streak_ = 0;
        if (log_on(log_info))
          std::fprintf(stderr, "kvmid: nats: spool drained\n");
      }
      busy = busy || (acked > 0 && !spool_.empty());
    }
    spool_records_.set(int64_t(spool_.size()));
    if (stopping)
      break;
  }
}

} // namespace kvmid
