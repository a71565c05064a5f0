// The v5 kernel's commands: which run on the receive thread and which on
// a vCPU's thread, what each does to guest and session state, and their
// error codes.
#pragma once

#include "kernel-patches/sim/command_replies.hpp"
#include "kernel-patches/sim/model.hpp"

namespace kvmi::sim::detail {

struct shard;
class kernel_v5;

class v5_commands : command_table<kernel_v5> {
public:
  using command_table::command_table;
  void on_command(vm& v, command_msg& cm, msg_id id);

private:
  void exec(vm& v, uint32_t seq, get_version&);
  void exec(vm& v, uint32_t seq, pause_all_vcpus&);
  void exec(vm& v, uint32_t seq, get_map_token&);
  void exec(vm& v, uint32_t seq, get_guest_info& x);
  void exec(vm& v, uint32_t seq, get_registers_cmd& x);
  void exec(vm& v, uint32_t seq, set_registers& x);
  void exec(vm& v, uint32_t seq, get_cpuid& x);
  void exec(vm& v, uint32_t seq, get_page_access_cmd& x);
  void exec(vm& v, uint32_t seq, set_page_access_cmd& x);
  void exec(vm& v, uint32_t seq, inject_exception& x);
  void exec(vm& v, uint32_t seq, read_physical& x);
  void exec(vm& v, uint32_t seq, write_physical_cmd& x);
  void exec(vm& v, uint32_t seq, control_events& x);
  void exec(vm& v, uint32_t seq, control_cr& x);
  void exec(vm& v, uint32_t seq, control_msr& x);
  void exec(vm& v, uint32_t seq, control_vm_events& x);
  void exec(vm& v, uint32_t seq, get_xsave& x);
  void exec(vm& v, uint32_t seq, control_ve_cmd&);
};

} // namespace kvmi::sim::detail
