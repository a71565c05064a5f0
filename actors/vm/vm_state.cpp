// Small helpers every part of the VM actor uses: errors, logging, the
// lifecycle records it publishes.
#include "actors/vm/vm_state.hpp"

namespace kvmid::vm_impl {

// The stats of vCPU i, or null when that vCPU has no actor.
vcpu_stats* stats_of(vm_st& s, size_t i) {
  return i < s.vcpus.size() && s.vcpus[i] ? &s.sh->stats[i] : nullptr;
}

api_response fail(api_errc c, std::string msg) { return api_response{std::nullopt, {c, std::move(msg)}}; }
api_response okv(api_value v) { return api_response{std::move(v), {}}; }

api_errc errc_of(const cmd_result& r) {
  if (!r.failure.empty())
    return r.code;
  if (r.reply.err == -kvmi::kvm_eagain)
    return api_errc::conflict;
  if (r.reply.err == -kvmi::kvm_einval || r.reply.err == -kvmi::kvm_enoent)
    return api_errc::invalid;
  return api_errc::kernel;
}
std::string what(const cmd_result& r) {
  if (!r.failure.empty())
    return r.failure;
  return std::string(kvmi::name(r.reply.id)) + " failed: -KVM_"
         + std::string(kvmi::kvm_error_name(r.reply.err));
}

void log(vm_actor* self, const char* fmt, const std::string& a) {
  if (!log_on(log_warn))
    return;
  std::fprintf(stderr, "kvmid: vm %s (%s): ", self->state.uuid.c_str(),
               self->state.p.guest.name.c_str());
  std::fprintf(stderr, fmt, a.c_str());
  std::fputc('\n', stderr);
}

void publish(vm_actor* self, bus_kind k, std::string name, std::string msg) {
  bus_record r;
  r.kind = k;
  r.name = std::move(name);
  r.vm = self->state.uuid;
  r.vm_name = self->state.p.guest.name;
  r.message = std::move(msg);
  self->state.c->bus().publish(std::move(r));
}

void protocol_error(vm_actor* self, protocol_error_reason reason, const std::string& detail) {
  auto& s = self->state;
  // A command failed because the session closed is no error of the host's.
  if (s.closing || s.closed)
    return;
  s.closing = true;
  s.c->internals().m.protocol_error(reason).inc();
  s.protocol_errors++;
  // The session's close line (kvmi_session) logs the reason.
  publish(self, bus_kind::lifecycle, "protocol-error", detail);
  s.p.link->close(disconnect_reason::protocol_error, detail);
}

} // namespace kvmid::vm_impl
