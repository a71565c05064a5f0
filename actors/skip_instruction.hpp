// Denying a write a PF event reports, before it lands: SET_REGISTERS with
// RIP past the faulting instruction, then RETRY. v5 re-enters the guest at
// RIP on RETRY; left there, the instruction would fault again for as long
// as the page stays protected. The instruction's bytes come through
// READ_PHYSICAL after a walk of the guest's page tables from CR3; its
// length from proto/x86_insn.
#pragma once

#include "actors/messages.hpp"

#include <functional>
#include <string>
#include <vector>

namespace kvmid {

// Sends one command to the VM's kernel and hands its result on.
using command_fn = std::function<void(kvmi::command, std::function<void(cmd_result)>)>;

struct skip_request {
  uint16_t vcpu = 0;
  kvm_regs regs{};   // the event's registers
  kvm_sregs sregs{}; // CR3, CR4, EFER, CS of the event
  std::vector<kvmi::hs::region> regions; // the VM's memory map: what may be read
};

// done(""): RIP moved; otherwise why not (the registers are unchanged).
void skip_instruction(command_fn send, skip_request r, std::function<void(std::string)> done);

// The guest-physical address of `gva` under the 4- or 5-level page tables
// of `sregs`, read through `send`; done(gpa, "") or done(0, why not).
void translate_gva(command_fn send, const kvm_sregs& sregs, std::vector<kvmi::hs::region> regions,
                   uint64_t gva, std::function<void(uint64_t, std::string)> done);

} // namespace kvmid
