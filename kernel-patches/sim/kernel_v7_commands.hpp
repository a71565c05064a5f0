// The kvmi-v7 kernel branch's commands: which run on the receive thread
// and which on a vCPU's thread, what each does (kernel_ops.hpp, shared with
// v5) and their error codes. SET_PAGE_ACCESS is a VM command here; EPT
// views other than 0, #VE, SPP and GFN allocation are features this host
// reports absent.
#pragma once

#include "kernel-patches/sim/command_replies.hpp"
#include "kernel-patches/sim/model.hpp"
#include "proto/v7/codec.hpp"

namespace kvmi::sim::detail {

struct shard;
class kernel_v7;

class v7_commands : command_table<kernel_v7> {
public:
  static constexpr uint32_t version = 1; // KVMI_VERSION of the branch and libkvmi
  static constexpr uint64_t tsc_speed = 2'500'000'000; // Hz

  using command_table::command_table;
  void on_command(vm& v, v7::command_msg& cm);

private:
  bool event_allowed(uint16_t id) const;

  void exec(vm& v, const v7::command_msg& m, const v7::get_version&);
  void exec(vm& v, const v7::command_msg& m, const v7::check_command& x);
  void exec(vm& v, const v7::command_msg& m, const v7::check_event& x);
  void exec(vm& v, const v7::command_msg& m, const v7::get_guest_info&);
  void exec(vm& v, const v7::command_msg& m, const v7::get_vcpu_info&);
  void exec(vm& v, const v7::command_msg& m, const v7::pause_vcpu&);
  void exec(vm& v, const v7::command_msg& m, const v7::control_vm_events& x);
  void exec(vm& v, const v7::command_msg& m, const v7::control_events& x);
  void exec(vm& v, const v7::command_msg& m, const v7::control_cr& x);
  void exec(vm& v, const v7::command_msg& m, const v7::control_msr& x);
  void exec(vm& v, const v7::command_msg& m, const v7::get_registers_cmd& x);
  void exec(vm& v, const v7::command_msg& m, const v7::set_registers& x);
  void exec(vm& v, const v7::command_msg& m, const v7::get_cpuid& x);
  void exec(vm& v, const v7::command_msg& m, const v7::get_xsave&);
  void exec(vm& v, const v7::command_msg& m, const v7::read_physical& x);
  void exec(vm& v, const v7::command_msg& m, const v7::write_physical_cmd& x);
  void exec(vm& v, const v7::command_msg& m, const v7::inject_exception& x);
  void exec(vm& v, const v7::command_msg& m, const v7::get_page_access_cmd& x);
  void exec(vm& v, const v7::command_msg& m, const v7::set_page_access_cmd& x);
  void exec(vm& v, const v7::command_msg& m, const v7::get_map_token&);
  void exec(vm& v, const v7::command_msg& m, const v7::control_cmd_response& x);
  void exec(vm& v, const v7::command_msg& m, const v7::get_max_gfn&);
  void exec(vm& v, const v7::command_msg& m, const v7::vcpu_control_singlestep& x);
};

} // namespace kvmi::sim::detail
