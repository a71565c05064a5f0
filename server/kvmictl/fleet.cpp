#include "server/kvmictl/fleet.hpp"

#include "actors/bounded_json.hpp"
#include "server/kvmictl/format.hpp"

#include <nats/nats.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <iostream>
#include <memory>
#include <sstream>

namespace kvmictl {

using nlohmann::json;

namespace {

struct nats_conn {
  natsConnection* nc = nullptr;
  ~nats_conn() { natsConnection_Destroy(nc); }
};

std::string connect(const fleet_options& o, nats_conn& c) {
  natsOptions* no = nullptr;
  if (natsOptions_Create(&no) != NATS_OK)
    return "cannot create NATS options";
  std::vector<std::string> urls;
  std::stringstream in(o.url);
  for (std::string u; std::getline(in, u, ',');)
    if (!u.empty())
      urls.push_back(u);
  std::vector<const char*> ptrs;
  for (auto& u : urls)
    ptrs.push_back(u.c_str());
  natsStatus s = natsOptions_SetServers(no, ptrs.data(), int(ptrs.size()));
  if (s == NATS_OK)
    s = natsOptions_SetTimeout(no, 5000);
  if (s != NATS_OK) {
    natsOptions_Destroy(no);
    return "--nats " + o.url + ": " + natsStatus_GetText(s);
  }
  auto err = kvmid::apply_nats_auth(no, o.auth,
                             {"--nats-user", "--nats-password-file", "nkey seed file",
                              "--nats-creds", "--nats-ca", "--nats-cert"});
  if (err.empty())
    s = natsConnection_Connect(&c.nc, no);
  natsOptions_Destroy(no);
  if (!err.empty())
    return err;
  if (s != NATS_OK)
    return "cannot reach NATS at " + o.url + ": " + kvmid::nats_error_text(s);
  return {};
}

json api_request(const std::string& method, const std::string& path, const json& body = nullptr) {
  json r = {{"method", method}, {"path", path}};
  if (!body.is_null())
    r["body"] = body;
  return r;
}

// Every reply to a request on `subject` that comes within gather_ms.
std::vector<json> gather(const fleet_options& o, nats_conn& c, const std::string& subject,
                         const json& req) {
  std::vector<json> out;
  natsInbox* inbox = nullptr;
  natsSubscription* sub = nullptr;
  natsInbox_Create(&inbox);
  std::string text = req.dump();
  if (natsConnection_SubscribeSync(&sub, c.nc, inbox) == NATS_OK
      && natsConnection_PublishRequest(c.nc, subject.c_str(), inbox, text.data(), int(text.size()))
           == NATS_OK) {
    auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(o.gather_ms);
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
      if (left.count() <= 0)
        break;
      natsMsg* m = nullptr;
      if (natsSubscription_NextMsg(&m, sub, left.count()) != NATS_OK)
        break;
      std::string err;
      json j = kvmid::parse_bounded_json(std::string_view(natsMsg_GetData(m), size_t(natsMsg_GetDataLength(m))), err);
      natsMsg_Destroy(m);
      if (j.is_object() && j.contains("host") && j.contains("status"))
        out.push_back(std::move(j));
    }
  }
  natsSubscription_Destroy(sub);
  natsInbox_Destroy(inbox);
  return out;
}

int fleet_vms(const fleet_options& o, nats_conn& c) {
  auto replies = gather(o, c, o.prefix + ".api.all", api_request("GET", "/v1/vms"));
  if (replies.empty()) {
    std::cerr << "kvmictl: no kvmid answered on " << o.prefix << ".api.all within " << o.gather_ms
              << " ms (--gather-ms)\n";
    return 3;
  }
  std::sort(replies.begin(), replies.end(),
            [](const json& a, const json& b) { return a["host"].dump() < b["host"].dump(); });
  int rc = 0;
  json all = json::array();
  for (auto& r : replies) {
    std::string host = r["host"].is_string() ? r["host"].get<std::string>() : r["host"].dump();
    if (r["status"] != 200) {
      std::cerr << "kvmictl: " << host << ": "
                << format_error(r["status"].get<long>(), r["body"].dump()) << "\n";
      rc = 1;
      continue;
    }
    if (o.json_out)
      all.push_back({{"host", host}, {"vms", r["body"].value("vms", json::array())}});
    else
      std::cout << "host " << host << ":\n" << format_vms(r["body"]);
  }
  if (o.json_out)
    std::cout << json{{"hosts", all}}.dump() << "\n";
  return rc;
}

int fleet_vm_command(const fleet_options& o, nats_conn& c, const std::string& cmd,
                     const std::string& vm) {
  auto replies = gather(o, c, o.prefix + ".api.all", api_request("GET", "/v1/vms/" + vm));
  std::vector<std::string> hosts;
  for (auto& r : replies)
    if (r["status"] == 200 && r["host"].is_string())
      hosts.push_back(r["host"].get<std::string>());
  if (hosts.empty()) {
    std::cerr << "kvmictl: no host of the fleet knows VM " << vm << " (" << replies.size()
              << " answered within " << o.gather_ms << " ms)\n";
    return 1;
  }
  if (hosts.size() > 1) {
    std::cerr << "kvmictl: VM " << vm << " is known on several hosts:";
    for (auto& h : hosts)
      std::cerr << " " << h;
    std::cerr << "; refusing to guess\n";
    return 1;
  }
  std::string text = api_request("POST", "/v1/vms/" + vm + "/" + cmd, json::object()).dump();
  std::string subject = o.prefix + ".api." + hosts[0];
  natsMsg* m = nullptr;
  natsStatus s = natsConnection_Request(&m, c.nc, subject.c_str(), text.data(), int(text.size()),
                                        o.timeout_s * 1000);
  if (s != NATS_OK) {
    std::cerr << "kvmictl: no answer from " << subject << ": " << natsStatus_GetText(s) << "\n";
    return 3;
  }
  std::string err;
  json r = kvmid::parse_bounded_json(std::string_view(natsMsg_GetData(m), size_t(natsMsg_GetDataLength(m))), err);
  natsMsg_Destroy(m);
  if (!r.is_object() || !r.contains("status") || !r["status"].is_number_integer()) {
    std::cerr << "kvmictl: the answer on " << subject << " is not a kvmid reply\n";
    return 3;
  }
  if (o.json_out)
    std::cout << r.dump() << "\n";
  if (r["status"] != 200) {
    std::cerr << "kvmictl: " << hosts[0] << ": "
              << format_error(r["status"].get<long>(), r["body"].dump()) << "\n";
    return 1;
  }
  if (!o.json_out)
    std::cout << hosts[0] << ": " << vm << ": " << r["body"].value("result", cmd) << "\n";
  return 0;
}

int fleet_watch(const fleet_options& o, nats_conn& c) {
  jsCtx* js = nullptr;
  if (natsConnection_JetStream(&js, c.nc, nullptr) != NATS_OK) {
    std::cerr << "kvmictl: no JetStream context\n";
    return 3;
  }
  std::unique_ptr<jsCtx, void (*)(jsCtx*)> js_guard(js, jsCtx_Destroy);
  std::string subject = o.prefix + ".bus.*." + o.kind + ".>";
  jsSubOptions so;
  jsSubOptions_Init(&so);
  so.Config.DeliverPolicy = js_DeliverNew;
  so.Config.AckPolicy = js_AckNone;
  natsSubscription* sub = nullptr;
  jsErrCode jerr{};
  natsStatus s = js_SubscribeSync(&sub, js, subject.c_str(), nullptr, &so, &jerr);
  if (s != NATS_OK) {
    std::cerr << "kvmictl: cannot follow " << subject << ": " << natsStatus_GetText(s)
              << " (is the kvmids' stream there?)\n";
    return 3;
  }
  long left = o.count;
  int rc = 0;
  while (left != 0) {
    natsMsg* m = nullptr;
    s = natsSubscription_NextMsg(&m, sub, 1000);
    if (s == NATS_TIMEOUT)
      continue;
    if (s != NATS_OK) {
      std::cerr << "kvmictl: stream lost: " << natsStatus_GetText(s) << "\n";
      rc = 3;
      break;
    }
    std::string subj = natsMsg_GetSubject(m);
    std::string err;
    json j = kvmid::parse_bounded_json(std::string_view(natsMsg_GetData(m), size_t(natsMsg_GetDataLength(m))), err);
    natsMsg_Destroy(m);
    // kvmi.bus.<host>.<kind>.<name>
    std::string rest = subj.substr(std::min(subj.size(), o.prefix.size() + 5));
    std::string host = rest.substr(0, rest.find('.'));
    if (o.json_out)
      std::cout << json{{"host", host}, {"data", j.is_discarded() ? json(err) : j}}.dump() << "\n";
    else
      std::cout << host << " " << format_event(j.value("name", o.kind), j) << "\n";
    std::cout.flush();
    if (left > 0)
      --left;
  }
  natsSubscription_Unsubscribe(sub);
  natsSubscription_Destroy(sub);
  return rc;
}

} // namespace

std::string complete_fleet_auth(fleet_options& o, const std::string& password_file,
                                const char* env_password) {
  auto& a = o.auth;
  if (a.user.empty() && !password_file.empty())
    return "--nats-password-file needs --nats-user";
  if (!password_file.empty()) {
    auto pw = kvmid::read_nats_password(password_file);
    if (!pw.error.empty())
      return "--nats-password-file: " + pw.error;
    a.password = pw.text;
  } else if (env_password) {
    a.password = env_password;
  }
  if (!a.user.empty() && a.password.empty())
    return "--nats-user needs a password: --nats-password-file FILE or KVMID_NATS_PASSWORD";
  if (!a.user.empty() && !a.creds_file.empty())
    return "give --nats-user or --nats-creds, not both";
  auto& f = a.tls_files;
  if (f.cert_file.empty() != f.key_file.empty())
    return "--nats-cert and --nats-key go together";
  a.tls = a.tls || o.url.find("tls://") != std::string::npos || !f.ca_file.empty()
          || !f.cert_file.empty();
  return {};
}

bool fleet_command(const std::string& cmd) {
  return cmd == "vms" || cmd == "watch" || cmd == "pause" || cmd == "resume" || cmd == "unhook";
}

int run_fleet(const fleet_options& o, const std::vector<std::string>& args) {
  nats_conn c;
  if (auto err = connect(o, c); !err.empty()) {
    std::cerr << "kvmictl: " << err << "\n";
    return 3;
  }
  const std::string& cmd = args[0];
  int rc = 2;
  if (cmd == "vms")
    rc = fleet_vms(o, c);
  else if (cmd == "watch")
    rc = fleet_watch(o, c);
  else
    rc = fleet_vm_command(o, c, cmd, args[1]);
  natsConnection_Close(c.nc);
  return rc;
}

} // namespace kvmictl
