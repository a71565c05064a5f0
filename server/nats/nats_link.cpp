#include "server/nats/nats_link.hpp"

#include "actors/log.hpp"
#include "server/nats/nats_client_auth.hpp"

#include <nats/nats.h>

#include <sys/resource.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <thread>
#include <vector>

namespace kvmid {

namespace {

void on_disconnected(natsConnection* nc, void*) {
  if (!natsConnection_IsClosed(nc) && log_on(log_warn)) // not kvmid closing it
    std::fprintf(stderr, "kvmid: nats: disconnected; records go to the spool until it is back\n");
}
void on_reconnected(natsConnection* nc, void*) {
  char url[256] = {};
  natsConnection_GetConnectedUrl(nc, url, sizeof url);
  if (log_on(log_info))
    std::fprintf(stderr, "kvmid: nats: connected to %s\n", url);
}
void on_error(natsConnection*, natsSubscription*, natsStatus s, void*) {
  if (log_on(log_warn))
    std::fprintf(stderr, "kvmid: nats: error: %s\n", natsStatus_GetText(s));
}

struct options_guard {
  natsOptions* o = nullptr;
  ~options_guard() { natsOptions_Destroy(o); }
};

std::string failed(const char* what, natsStatus s) {
  return std::string(what) + ": " + nats_error_text(s);
}

} // namespace

void run_below_event_path() {
  errno = 0;
  int now = getpriority(PRIO_PROCESS, 0); // Linux: this thread
  if (now == -1 && errno != 0)
    return;
  setpriority(PRIO_PROCESS, 0, std::min(19, now + publishing_nice));
}

std::variant<std::unique_ptr<nats_link>, std::string> nats_link::connect(const nats_options& o) {
  // The library starts its threads (its global ones too, on first use) from
  // the thread that calls it: that thread runs below the event path, the
  // caller not.
  std::variant<std::unique_ptr<nats_link>, std::string> out;
  std::thread([&] {
    run_below_event_path();
    out = connect_here(o);
  }).join();
  return out;
}

std::variant<std::unique_ptr<nats_link>, std::string> nats_link::connect_here(const nats_options& o) {
  std::unique_ptr<nats_link> l(new nats_link());
  options_guard g;
  if (natsOptions_Create(&g.o) != NATS_OK)
    return std::string("cannot create NATS options");
  std::vector<const char*> urls;
  for (auto& u : o.urls)
    urls.push_back(u.c_str());
  natsStatus s = natsOptions_SetServers(g.o, urls.data(), int(urls.size()));
  if (s != NATS_OK)
    return "/nats/urls: " + failed("not usable", s);
  std::string name = "kvmid " + o.host;
  natsOptions_SetName(g.o, name.c_str());
  natsOptions_SetMaxReconnect(g.o, -1);
  natsOptions_SetReconnectWait(g.o, 250);
  natsOptions_SetReconnectJitter(g.o, 100, 500);
  natsOptions_SetTimeout(g.o, 2000);
  natsOptions_SetPingInterval(g.o, 5000);
  natsOptions_SetMaxPingsOut(g.o, 2);
  natsOptions_SetDisconnectedCB(g.o, on_disconnected, nullptr);
  natsOptions_SetReconnectedCB(g.o, on_reconnected, nullptr);
  natsOptions_SetErrorHandler(g.o, on_error, nullptr);
  // Retry in the background when no server answers now: kvmid serves its
  // VMs whether or not NATS is up.
  natsOptions_SetRetryOnFailedConnect(g.o, true, on_reconnected, nullptr);
  nats_client_auth a{o.user, {}, o.nkey_seed_file, o.creds_file, o.tls, o.tls_files};
  if (!o.user.empty()) {
    auto pw = read_nats_password(o.password_file);
    if (!pw.error.empty())
      return "/nats/password_file: " + pw.error;
    a.password = pw.text;
  }
  if (auto err = apply_nats_auth(g.o, a,
                                 {"/nats/user", "/nats/password_file", "/nats/nkey_seed_file",
                                  "/nats/creds_file", "/nats/tls/ca_file", "/nats/tls/cert_file"});
      !err.empty())
    return err;
  s = natsConnection_Connect(&l->nc_, g.o);
  if (s != NATS_OK && s != NATS_NOT_YET_CONNECTED)
    return failed("cannot connect to NATS", s);
  if (s == NATS_NOT_YET_CONNECTED && log_on(log_warn))
    std::fprintf(stderr, "kvmid: nats: no server answers yet; retrying in the background\n");
  return l;
}

bool nats_link::connected() const {
  return nc_ && natsConnection_Status(nc_) == NATS_CONN_STATUS_CONNECTED;
}

nats_link::~nats_link() {
  if (nc_) {
    natsConnection_Close(nc_);
    natsConnection_Destroy(nc_);
  }
}

} // namespace kvmid
