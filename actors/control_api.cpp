#include "actors/core_impl.hpp"

namespace kvmid {

std::string_view name(api_errc e) {
  switch (e) {
    case api_errc::not_found: return "not_found";
    case api_errc::conflict: return "conflict";
    case api_errc::unsafe_region: return "unsafe_region";
    case api_errc::invalid: return "invalid";
    case api_errc::timeout: return "timeout";
    case api_errc::kernel: return "kernel";
    case api_errc::internal: return "internal";
  }
  return "internal";
}

int http_status(api_errc e) {
  switch (e) {
    case api_errc::not_found: return 404;
    case api_errc::conflict: return 409;
    case api_errc::unsafe_region: return 422;
    case api_errc::invalid: return 400;
    case api_errc::timeout: return 504;
    case api_errc::kernel: return 502;
    case api_errc::internal: return 500;
  }
  return 500;
}

std::string_view name(vcpu_state s) {
  switch (s) {
    case vcpu_state::running: return "running";
    case vcpu_state::in_event: return "in_event";
    case vcpu_state::paused: return "paused";
    case vcpu_state::disconnected: return "disconnected";
  }
  return "running";
}

namespace {

constexpr auto api_timeout = std::chrono::seconds(15);

// One short-lived actor per request: the caller never waits, the callback
// runs exactly once on an actor thread.
template <class T>
void ask(core& c, std::string vm, api_request req, api_callback<T> cb) {
  auto reg = c.registry();
  auto* sys = &c.system();
  // The unused int: CAF 0.17 binds a null argument tuple for argument-less
  // function actors (UBSan flags it).
  c.system().spawn([=](caf::event_based_actor* self, int) {
    self->request(reg, api_timeout, api_atom::value, vm, req)
      .then(
        [=](api_response& r) {
          if (!r.value)
            return cb(r.error);
          if (auto* v = std::get_if<T>(&*r.value))
            return cb(std::move(*v));
          cb(api_error{api_errc::internal, "unexpected answer type"});
        },
        [=](caf::error& e) {
          if (e == caf::sec::request_timeout)
            cb(api_error{api_errc::timeout, "the VM actor did not answer in time"});
          else
            cb(api_error{api_errc::internal, sys->render(e)});
        });
  }, 0);
}

} // namespace

void control_api::list_vms(api_callback<std::vector<vm_info>> cb) {
  auto reg = core_.registry();
  core_.system().spawn([=](caf::event_based_actor* self, int) {
    self->request(reg, api_timeout, list_atom::value)
      .then([=](std::vector<vm_info>& v) { cb(std::move(v)); },
            [=](caf::error&) { cb(api_error{api_errc::timeout, "registry did not answer"}); });
  }, 0);
}
void control_api::get_vm(std::string vm, api_callback<vm_info> cb) {
  ask<vm_info>(core_, std::move(vm), op::info{}, std::move(cb));
}
void control_api::list_vcpus(std::string vm, api_callback<std::vector<vcpu_info>> cb) {
  ask<std::vector<vcpu_info>>(core_, std::move(vm), op::vcpus{}, std::move(cb));
}
void control_api::pause_vm(std::string vm, api_callback<done> cb) {
  ask<done>(core_, std::move(vm), op::pause{}, std::move(cb));
}
void control_api::resume_vm(std::string vm, api_callback<done> cb) {
  ask<done>(core_, std::move(vm), op::resume{}, std::move(cb));
}
void control_api::get_registers(std::string vm, uint16_t vcpu, std::vector<uint32_t> msrs,
                                api_callback<registers_info> cb) {
  ask<registers_info>(core_, std::move(vm), op::get_registers{vcpu, std::move(msrs)},
                      std::move(cb));
}
void control_api::read_physical(std::string vm, uint64_t gpa, uint64_t size,
                                api_callback<std::vector<uint8_t>> cb) {
  ask<std::vector<uint8_t>>(core_, std::move(vm), op::read_phys{gpa, size}, std::move(cb));
}
void control_api::write_physical(std::string vm, uint64_t gpa, std::vector<uint8_t> data,
                                 api_callback<done> cb) {
  ask<done>(core_, std::move(vm), op::write_phys{gpa, std::move(data)}, std::move(cb));
}
void control_api::get_page_access(std::string vm, api_callback<std::vector<page_access_info>> cb) {
  ask<std::vector<page_access_info>>(core_, std::move(vm), op::get_access{}, std::move(cb));
}
void control_api::set_page_access(std::string vm, uint64_t gpa, uint8_t access,
                                  api_callback<done> cb) {
  ask<done>(core_, std::move(vm), op::set_access{gpa, access}, std::move(cb));
}
void control_api::list_breakpoints(std::string vm, api_callback<std::vector<breakpoint_info>> cb) {
  ask<std::vector<breakpoint_info>>(core_, std::move(vm), op::list_bps{}, std::move(cb));
}
void control_api::add_breakpoint(std::string vm, uint64_t gpa, api_callback<breakpoint_info> cb) {
  ask<breakpoint_info>(core_, std::move(vm), op::add_bp{gpa}, std::move(cb));
}
void control_api::remove_breakpoint(std::string vm, uint64_t gpa, api_callback<done> cb) {
  ask<done>(core_, std::move(vm), op::remove_bp{gpa}, std::move(cb));
}
void control_api::set_vcpu_events(std::string vm, uint16_t vcpu, uint32_t mask,
                                  api_callback<done> cb) {
  ask<done>(core_, std::move(vm), op::set_events{vcpu, mask}, std::move(cb));
}
void control_api::unhook(std::string vm, api_callback<done> cb) {
  // Held off first: the device manager may reconnect the moment the
  // socket closes, before this call is answered.
  core_.hold_off(vm);
  ask<done>(core_, vm, op::unhook{}, [this, vm, cb = std::move(cb)](api_result<done> r) {
    if (!r.ok())
      core_.admit(vm);
    cb(std::move(r));
  });
}
void control_api::forget(std::string vm, api_callback<done> cb) {
  ask<done>(core_, std::move(vm), op::forget{}, std::move(cb));
}
void control_api::admit(std::string vm, api_callback<done> cb) {
  if (!core_.admit(vm))
    return cb(api_error{api_errc::not_found, "vm " + vm + " is not held off by an unhook"});
  cb(done{});
}
void control_api::reload_policies(api_callback<done> cb) {
  auto& o = core_.options();
  if (!o.reload)
    return cb(api_error{api_errc::conflict, "kvmid was started without a config file"});
  std::string err;
  auto ps = o.reload(err);
  if (!ps)
    return cb(api_error{api_errc::invalid, err});
  auto shared = std::make_shared<const policy_set>(std::move(*ps));
  {
    std::lock_guard lk(core_.internals().policy_mu);
    core_.internals().policies = shared;
  }
  caf::anon_send(core_.registry(), reload_atom::value, shared);
  cb(done{});
}

} // namespace kvmid
