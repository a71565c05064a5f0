#include "proto/v7/ids.hpp"

#include <algorithm>

namespace kvmi::v7 {

bool is_known(msg_id id) {
  return std::find(std::begin(all_msg_ids), std::end(all_msg_ids), id) != std::end(all_msg_ids);
}

bool is_supported(msg_id id) {
  switch (id) {
    case msg_id::get_version:
    case msg_id::check_command:
    case msg_id::check_event:
    case msg_id::get_guest_info:
    case msg_id::get_vcpu_info:
    case msg_id::pause_vcpu:
    case msg_id::control_vm_events:
    case msg_id::control_events:
    case msg_id::control_cr:
    case msg_id::control_msr:
    case msg_id::get_registers:
    case msg_id::set_registers:
    case msg_id::get_cpuid:
    case msg_id::get_xsave:
    case msg_id::read_physical:
    case msg_id::write_physical:
    case msg_id::inject_exception:
    case msg_id::get_page_access:
    case msg_id::set_page_access:
    case msg_id::get_map_token:
    case msg_id::control_cmd_response:
    case msg_id::get_max_gfn:
    case msg_id::vcpu_control_singlestep:
      return true;
    default:
      return false;
  }
}

scope scope_of(msg_id id) {
  switch (id) {
    case msg_id::get_version:
    case msg_id::check_command:
    case msg_id::check_event:
    case msg_id::get_guest_info:
    case msg_id::control_vm_events:
    case msg_id::read_physical:
    case msg_id::write_physical:
    case msg_id::get_page_access:
    case msg_id::set_page_access:
    case msg_id::get_map_token:
    case msg_id::control_spp:
    case msg_id::get_page_write_bitmap:
    case msg_id::set_page_write_bitmap:
    case msg_id::control_cmd_response:
    case msg_id::get_max_gfn:
    case msg_id::get_next_available_gfn:
    case msg_id::query_physical:
    case msg_id::create_ept_view:
    case msg_id::destroy_ept_view:
      return scope::vm;
    case msg_id::event_reply:
    case msg_id::get_vcpu_info:
    case msg_id::pause_vcpu:
    case msg_id::control_events:
    case msg_id::control_cr:
    case msg_id::control_msr:
    case msg_id::get_registers:
    case msg_id::set_registers:
    case msg_id::get_cpuid:
    case msg_id::get_xsave:
    case msg_id::inject_exception:
    case msg_id::get_mtrr_type:
    case msg_id::set_ve_info_page:
    case msg_id::switch_ept_view:
    case msg_id::disable_ve:
    case msg_id::get_ept_view:
    case msg_id::vcpu_translate_gva:
    case msg_id::control_ept_view:
    case msg_id::vcpu_get_xcr:
    case msg_id::vcpu_set_xsave:
    case msg_id::vcpu_alloc_gfn:
    case msg_id::vcpu_free_gfn:
    case msg_id::vcpu_change_gfn:
    case msg_id::vcpu_control_singlestep:
      return scope::vcpu;
    case msg_id::event:      // kernel -> tool
    case msg_id::control_ve: // no libkvmi function sends it: layout unknown
      return scope::none;
  }
  return scope::none;
}

std::string_view name(msg_id id) {
  switch (id) {
    case msg_id::event_reply: return "event_reply";
    case msg_id::event: return "event";
    case msg_id::get_version: return "get_version";
    case msg_id::check_command: return "check_command";
    case msg_id::check_event: return "check_event";
    case msg_id::get_guest_info: return "get_guest_info";
    case msg_id::get_vcpu_info: return "get_vcpu_info";
    case msg_id::pause_vcpu: return "pause_vcpu";
    case msg_id::control_vm_events: return "control_vm_events";
    case msg_id::control_events: return "control_events";
    case msg_id::control_cr: return "control_cr";
    case msg_id::control_msr: return "control_msr";
    case msg_id::control_ve: return "control_ve";
    case msg_id::get_registers: return "get_registers";
    case msg_id::set_registers: return "set_registers";
    case msg_id::get_cpuid: return "get_cpuid";
    case msg_id::get_xsave: return "get_xsave";
    case msg_id::read_physical: return "read_physical";
    case msg_id::write_physical: return "write_physical";
    case msg_id::inject_exception: return "inject_exception";
    case msg_id::get_page_access: return "get_page_access";
    case msg_id::set_page_access: return "set_page_access";
    case msg_id::get_map_token: return "get_map_token";
    case msg_id::get_mtrr_type: return "get_mtrr_type";
    case msg_id::control_spp: return "control_spp";
    case msg_id::get_page_write_bitmap: return "get_page_write_bitmap";
    case msg_id::set_page_write_bitmap: return "set_page_write_bitmap";
    case msg_id::control_cmd_response: return "control_cmd_response";
    case msg_id::set_ve_info_page: return "set_ve_info_page";
    case msg_id::get_max_gfn: return "get_max_gfn";
    case msg_id::get_next_available_gfn: return "get_next_available_gfn";
    case msg_id::switch_ept_view: return "switch_ept_view";
    case msg_id::disable_ve: return "disable_ve";
    case msg_id::get_ept_view: return "get_ept_view";
    case msg_id::vcpu_translate_gva: return "vcpu_translate_gva";
    case msg_id::control_ept_view: return "control_ept_view";
    case msg_id::vcpu_get_xcr: return "vcpu_get_xcr";
    case msg_id::vcpu_set_xsave: return "vcpu_set_xsave";
    case msg_id::query_physical: return "query_physical";
    case msg_id::vcpu_alloc_gfn: return "vcpu_alloc_gfn";
    case msg_id::vcpu_free_gfn: return "vcpu_free_gfn";
    case msg_id::create_ept_view: return "create_ept_view";
    case msg_id::destroy_ept_view: return "destroy_ept_view";
    case msg_id::vcpu_change_gfn: return "vcpu_change_gfn";
    case msg_id::vcpu_control_singlestep: return "vcpu_control_singlestep";
  }
  return "unknown";
}

bool is_known(event_id e) {
  return std::find(std::begin(all_event_ids), std::end(all_event_ids), e)
         != std::end(all_event_ids);
}

std::string_view name(event_id e) {
  switch (e) {
    case event_id::singlestep: return "singlestep";
    case event_id::cpuid: return "cpuid";
    default:
      // 0..10 keep their v5 numbers and names.
      if (static_cast<uint8_t>(e) < kvmi::num_events)
        return kvmi::name(static_cast<kvmi::event_id>(e));
      return "unknown";
  }
}

} // namespace kvmi::v7
