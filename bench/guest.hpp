// kvmid against a real Linux guest (kvmi-qemu, QEMU TCG, v7), each figure
// beside the same gdbstub work with no introspector, measured in the same
// run: how long the guest is held from the stop to its resume for
//   a breakpoint hit: gdbstub alone steps over its breakpoint and puts it
//     back; through kvmid the hit is a BREAKPOINT event, kvmid restores the
//     byte and single-steps the vCPU, the SINGLESTEP event plants it again;
//   a write-watchpoint denial: gdbstub alone puts the page's bytes back;
//     through kvmid the write is a PF event, kvmid skips the writing
//     instruction (page walk, decode, SET_REGISTERS) and kvmi-qemu puts the
//     bytes back.
#pragma once

#include "bench/floor.hpp"

#include <string>

namespace bench {

struct guest_run {
  bool ok = false;
  std::string error; // why not, when !ok (also: no kernel, not x86-64)
  samples bare_bp, bare_pf, kvmid_bp, kvmid_pf; // ns, one per hit
};

// At least `hits` of each, or what a minute gives.
guest_run measure_guest(const std::string& kvmid_bin, const std::string& kvmi_qemu_bin,
                        size_t hits);

} // namespace bench
