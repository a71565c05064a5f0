// Kept apart from api.cpp so tests with a fake backend need no running core.
#include "actors/core.hpp"
#include "server/control/api.hpp"

namespace kvmid::control {

// --- core_backend: plain forwarding to the core's control_api ---------------

void core_backend::list_vms(api_callback<std::vector<vm_info>> cb) {
  core_.api().list_vms(std::move(cb));
}
void core_backend::get_vm(std::string vm, api_callback<vm_info> cb) {
  core_.api().get_vm(std::move(vm), std::move(cb));
}
void core_backend::list_vcpus(std::string vm, api_callback<std::vector<vcpu_info>> cb) {
  core_.api().list_vcpus(std::move(vm), std::move(cb));
}
void core_backend::pause_vm(std::string vm, api_callback<done> cb) {
  core_.api().pause_vm(std::move(vm), std::move(cb));
}
void core_backend::resume_vm(std::string vm, api_callback<done> cb) {
  core_.api().resume_vm(std::move(vm), std::move(cb));
}
void core_backend::get_registers(std::string vm, uint16_t vcpu, std::vector<uint32_t> msrs,
                                 api_callback<registers_info> cb) {
  core_.api().get_registers(std::move(vm), vcpu, std::move(msrs), std::move(cb));
}
void core_backend::read_physical(std::string vm, uint64_t gpa, uint64_t size,
                                 api_callback<std::vector<uint8_t>> cb) {
  core_.api().read_physical(std::move(vm), gpa, size, std::move(cb));
}
void core_backend::write_physical(std::string vm, uint64_t gpa, std::vector<uint8_t> data,
                                  api_callback<done> cb) {
  core_.api().write_physical(std::move(vm), gpa, std::move(data), std::move(cb));
}
void core_backend::get_page_access(std::string vm,
                                   api_callback<std::vector<page_access_info>> cb) {
  core_.api().get_page_access(std::move(vm), std::move(cb));
}
void core_backend::set_page_access(std::string vm, uint64_t gpa, uint8_t access,
                                   api_callback<done> cb) {
  core_.api().set_page_access(std::move(vm), gpa, access, std::move(cb));
}
void core_backend::list_breakpoints(std::string vm,
                                    api_callback<std::vector<breakpoint_info>> cb) {
  core_.api().list_breakpoints(std::move(vm), std::move(cb));
}
void core_backend::add_breakpoint(std::string vm, uint64_t gpa,
                                  api_callback<breakpoint_info> cb) {
  core_.api().add_breakpoint(std::move(vm), gpa, std::move(cb));
}
void core_backend::remove_breakpoint(std::string vm, uint64_t gpa, api_callback<done> cb) {
  core_.api().remove_breakpoint(std::move(vm), gpa, std::move(cb));
}
void core_backend::set_vcpu_events(std::string vm, uint16_t vcpu, uint32_t mask,
                                   api_callback<done> cb) {
  core_.api().set_vcpu_events(std::move(vm), vcpu, mask, std::move(cb));
}
void core_backend::unhook(std::string vm, api_callback<done> cb) {
  core_.api().unhook(std::move(vm), std::move(cb));
}
void core_backend::admit(std::string vm, api_callback<done> cb) {
  core_.api().admit(std::move(vm), std::move(cb));
}
void core_backend::forget(std::string vm, api_callback<done> cb) {
  core_.api().forget(std::move(vm), std::move(cb));
}
void core_backend::reload_policies(api_callback<done> cb) {
  core_.api().reload_policies(std::move(cb));
}
std::shared_ptr<subscription> core_backend::subscribe(bus_filter f, size_t capacity,
                                                     std::optional<bus_cursor> from) {
  return core_.bus().subscribe(std::move(f), capacity, std::move(from));
}
std::string core_backend::bus_boot() {
  return core_.bus().boot();
}
void core_backend::publish(bus_record r) { core_.bus().publish(std::move(r)); }
metrics_registry& core_backend::metrics() { return core_.metrics(); }

} // namespace kvmid::control
