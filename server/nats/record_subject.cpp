#include "server/nats/record_subject.hpp"

namespace kvmid {

namespace {
// Record names are [a-z0-9-] today; anything else must not add a token or a
// wildcard to the subject.
void append_token(std::string& out, std::string_view t) {
  if (t.empty()) {
    out += '_';
    return;
  }
  for (char c : t) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
              || c == '-' || c == '_';
    out += ok ? c : '_';
  }
}
} // namespace

std::string record_subject(std::string_view root, std::string_view host, const bus_record& r) {
  std::string s(root);
  s += '.';
  s += host;
  s += '.';
  s += name(r.kind);
  s += '.';
  append_token(s, r.name);
  return s;
}

std::string record_msg_id(std::string_view host, std::string_view boot, uint64_t seq) {
  std::string s(host);
  s += '.';
  s += boot;
  s += '.';
  s += std::to_string(seq);
  return s;
}

} // namespace kvmid
