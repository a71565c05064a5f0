// How every dialect's kernel answers a command: an error code alone or
// success with the command's data, and a vCPU command run on its vCPU or
// refused as the kernel refuses it. Each dialect brings its reply message
// and how it sends one; the answers' shape is the same.
#pragma once

#include "kernel-patches/sim/kernel_ops.hpp"
#include "kernel-patches/sim/model.hpp"

#include <cstdint>
#include <utility>

namespace kvmi::sim::detail {

struct shard;

// Kernel: the dialect's kernel, with reply(vm&, const Reply&, bool from_vcpu).
template <class Kernel, class Reply>
class command_replies {
public:
  using id_type = decltype(Reply::id);
  using data_type = decltype(Reply::data);

  void reply_err(vm& v, id_type id, uint32_t seq, int32_t kvm_e, bool from_vcpu) {
    Reply r;
    r.id = id;
    r.seq = seq;
    r.err = -kvm_e;
    static_cast<Kernel&>(*this).reply(v, r, from_vcpu);
  }
  void ok(vm& v, id_type id, uint32_t seq, data_type d, bool from_vcpu) {
    Reply r;
    r.id = id;
    r.seq = seq;
    r.data = std::move(d);
    static_cast<Kernel&>(*this).reply(v, r, from_vcpu);
  }
};

// A dialect's command set: the shard it serves and the kernel that answers.
template <class Kernel>
class command_table {
public:
  command_table(shard& s, Kernel& k) : s_(s), k_(k) {}

protected:

  // Runs f on the addressed vCPU, or answers the error the kernel gives.
  template <class Id, class F>
  void with_vcpu(vm& v, Id id, uint32_t seq, uint16_t idx, F&& f) {
    int32_t e = 0;
    if (auto* c = serving_vcpu(v, idx, e))
      return f(*c);
    k_.reply_err(v, id, seq, e, false);
  }

  shard& s_;
  Kernel& k_;
};

} // namespace kvmi::sim::detail
