// What a JetStream stream holds, read back with the NATS C client: every
// message's subject, Nats-Msg-Id and body, from an ephemeral ordered pull.
#pragma once

#include <doctest/doctest.h>
#include <nats/nats.h>

#include <string>
#include <vector>

namespace kvmid::test {

struct stream_message {
  std::string subject, msg_id, body;
};

class jetstream_reader {
public:
  explicit jetstream_reader(const std::string& url) {
    REQUIRE(natsConnection_ConnectTo(&nc_, url.c_str()) == NATS_OK);
    REQUIRE(natsConnection_JetStream(&js_, nc_, nullptr) == NATS_OK);
  }
  ~jetstream_reader() {
    jsCtx_Destroy(js_);
    natsConnection_Destroy(nc_);
  }
  jetstream_reader(const jetstream_reader&) = delete;
  jetstream_reader& operator=(const jetstream_reader&) = delete;

  // Messages in the stream; -1 if it does not exist (yet).
  int64_t count(const std::string& stream) {
    jsStreamInfo* si = nullptr;
    if (js_GetStreamInfo(&si, js_, stream.c_str(), nullptr, nullptr) != NATS_OK)
      return -1;
    int64_t n = int64_t(si->State.Msgs);
    jsStreamInfo_Destroy(si);
    return n;
  }

  // Consumers of the stream (a follower has subscribed); -1 without it.
  int64_t consumers(const std::string& stream) {
    jsStreamInfo* si = nullptr;
    if (js_GetStreamInfo(&si, js_, stream.c_str(), nullptr, nullptr) != NATS_OK)
      return -1;
    int64_t n = int64_t(si->State.Consumers);
    jsStreamInfo_Destroy(si);
    return n;
  }

  // Every message of the stream, in order.
  std::vector<stream_message> all(const std::string& stream) {
    std::vector<stream_message> out;
    int64_t n = count(stream);
    for (uint64_t seq = 1; n > 0 && int64_t(out.size()) < n; ++seq) {
      natsMsg* m = nullptr;
      if (js_GetMsg(&m, js_, stream.c_str(), seq, nullptr, nullptr) != NATS_OK)
        break;
      const char* id = nullptr;
      natsMsgHeader_Get(m, "Nats-Msg-Id", &id);
      out.push_back({natsMsg_GetSubject(m), id ? id : "",
                     std::string(natsMsg_GetData(m), size_t(natsMsg_GetDataLength(m)))});
      natsMsg_Destroy(m);
    }
    return out;
  }

  natsConnection* connection() { return nc_; }

private:
  natsConnection* nc_ = nullptr;
  jsCtx* js_ = nullptr;
};

} // namespace kvmid::test
