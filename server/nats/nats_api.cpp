#include "server/nats/nats_api.hpp"

#include "actors/bounded_json.hpp"
#include "actors/log.hpp"

#include <nats/nats.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <condition_variable>
#include <mutex>
#include <vector>

namespace kvmid {

using nlohmann::json;

struct nats_api::state {
  control::http_api& api;
  std::string host;
  control::role who;
  std::mutex mu;
  std::condition_variable closed;
  natsConnection* nc = nullptr; // null once stopped: late replies are dropped
  std::vector<natsSubscription*> subs;
  size_t handlers_open = 0;     // subscriptions whose message handler may still run

  state(control::http_api& a, std::string h, control::role w)
    : api(a), host(std::move(h)), who(w) {}

  void respond(const std::string& reply_to, const std::string& text) {
    std::lock_guard lk(mu);
    if (!nc)
      return;
    // An answer over the server's max_payload would never arrive: say so.
    if (int64_t(text.size()) > natsConnection_GetMaxPayload(nc)) {
      auto e = reply_json(control::error_response({413, "too_large",
                                                   "the answer (" + std::to_string(text.size())
                                                     + " bytes) exceeds NATS max_payload; ask "
                                                       "for less or use the HTTP API"}),
                          host);
      natsConnection_Publish(nc, reply_to.c_str(), e.data(), int(e.size()));
      return;
    }
    natsConnection_Publish(nc, reply_to.c_str(), text.data(), int(text.size()));
  }
};

std::variant<control::request, control::http_error> request_from_json(std::string_view text) {
  std::string err;
  json j = parse_bounded_json(text, err);
  if (j.is_discarded())
    return control::bad_request("request is not valid JSON: " + err);
  if (!j.is_object())
    return control::bad_request("request must be a JSON object {\"method\", \"path\", \"body\"}");
  for (auto& [k, v] : j.items())
    if (k != "method" && k != "path" && k != "body")
      return control::bad_request("unknown request field '" + k.substr(0, 64) + "'");
  if (!j.contains("method") || !j["method"].is_string() || !j.contains("path")
      || !j["path"].is_string())
    return control::bad_request("request needs \"method\" and \"path\" strings");
  control::request r;
  r.method = j["method"].get<std::string>();
  r.target = j["path"].get<std::string>();
  if (r.target.empty() || r.target.front() != '/')
    return control::bad_request("path must be an absolute path");
  auto q = r.target.find('?');
  r.path = control::percent_decode(std::string_view(r.target).substr(0, q), false);
  r.query = q == std::string::npos ? std::string{} : r.target.substr(q + 1);
  if (j.contains("body") && !j["body"].is_null()) {
    r.body = j["body"].is_string() ? j["body"].get<std::string>() : j["body"].dump();
    r.headers.emplace_back("content-type", "application/json");
  }
  return r;
}

std::string reply_json(const control::response& r, std::string_view host) {
  json out = {{"host", host}, {"status", r.status}};
  json body;
  if (r.content_type.rfind("application/json", 0) == 0) {
    std::string err;
    body = parse_bounded_json(r.body, err);
    if (body.is_discarded())
      body = r.body;
  } else {
    body = r.body;
  }
  out["body"] = std::move(body);
  if (!r.headers.empty()) {
    json h = json::object();
    for (auto& [k, v] : r.headers)
      h[k] = v;
    out["headers"] = std::move(h);
  }
  return out.dump(-1, ' ', false, json::error_handler_t::replace);
}

namespace {

void on_request(natsConnection*, natsSubscription*, natsMsg* msg, void* closure) {
  auto* st = static_cast<nats_api::state*>(closure);
  const char* reply = natsMsg_GetReply(msg);
  if (!reply || !*reply) { // a publish, not a request: nobody to answer
    natsMsg_Destroy(msg);
    return;
  }
  std::string reply_to(reply);
  std::string peer = std::string("nats:") + natsMsg_GetSubject(msg);
  auto req = request_from_json(std::string_view(natsMsg_GetData(msg), size_t(natsMsg_GetDataLength(msg))));
  natsMsg_Destroy(msg);
  if (auto* e = std::get_if<control::http_error>(&req)) {
    st->respond(reply_to, reply_json(control::error_response(*e), st->host));
    return;
  }
  // The handlers run on actor threads; the state lives as long as a reply
  // may come (the subscription holds a raw pointer, the answer a share).
  st->api.serve(std::get<control::request>(req), {st->who, peer},
                [st, reply_to](control::response r) {
                  st->respond(reply_to, reply_json(r, st->host));
                });
}

// After the last message handler of a subscription has returned.
void on_closed(void* closure) {
  auto* st = static_cast<nats_api::state*>(closure);
  std::lock_guard lk(st->mu);
  --st->handlers_open;
  st->closed.notify_all();
}

} // namespace

std::variant<std::unique_ptr<nats_api>, std::string>
nats_api::start(nats_link& link, control::http_api& api, const nats_options& o) {
  std::unique_ptr<nats_api> a(new nats_api());
  auto who = o.api_role == "full" ? control::role::full : control::role::read;
  a->st_ = std::make_shared<state>(api, o.host, who);
  a->st_->nc = link.connection();
  for (auto subject : {o.api_subject(), o.api_all_subject()}) {
    natsSubscription* sub = nullptr;
    // The state outlives every handler: ~nats_api waits for on_closed.
    natsStatus s = natsConnection_Subscribe(&sub, link.connection(), subject.c_str(), on_request,
                                            a->st_.get());
    if (s == NATS_OK)
      s = natsSubscription_SetOnCompleteCB(sub, on_closed, a->st_.get());
    if (s != NATS_OK) {
      natsSubscription_Destroy(sub);
      return "cannot subscribe to " + subject + ": " + natsStatus_GetText(s);
    }
    std::lock_guard lk(a->st_->mu);
    a->st_->subs.push_back(sub);
    ++a->st_->handlers_open;
  }
  // The server has the subscriptions before kvmid says it is ready: a
  // request sent right after start-up finds its responder instead of NATS's
  // "no responders". Not connected yet: they go with the connect.
  if (link.connected())
    natsConnection_FlushTimeout(link.connection(), 2000);
  if (log_on(log_info))
    std::fprintf(stderr, "kvmid: nats: API on %s and %s (role %s)\n", o.api_subject().c_str(),
                 o.api_all_subject().c_str(), o.api_role.c_str());
  return a;
}

nats_api::~nats_api() {
  if (!st_)
    return;
  for (auto* sub : st_->subs)
    natsSubscription_Unsubscribe(sub);
  std::unique_lock lk(st_->mu);
  // A handler under way may still call into the API: it must return first.
  st_->closed.wait_for(lk, std::chrono::seconds(5), [&] { return st_->handlers_open == 0; });
  st_->nc = nullptr;
  lk.unlock();
  for (auto* sub : st_->subs)
    natsSubscription_Destroy(sub);
}

} // namespace kvmid
