// Pieces of decoding that every KVMI dialect shares: the common errors, a
// checked read of a fixed struct, kvmi_error_code at the head of a reply and
// the GET_REGISTERS reply, whose layout v7 kept from v5.
#pragma once

#include "proto/byte_io.hpp"
#include "proto/codec.hpp"

namespace kvmi::detail {

inline constexpr error truncated{errc::truncated, "message shorter than its header says"};
inline constexpr error bad_size{errc::bad_size, "message size does not match its id and counts"};
inline constexpr error bad_padding{errc::bad_padding, "padding is not zero"};

// Reads a T (the reader has checked there is room) and stores it in dest
// unless a padding field is set.
template <class T, class Dest>
error take_checked(reader& r, Dest& dest) {
  T x{}; // read in full below; zeroed so the compiler need not prove it
  r.get(x);
  if (!padding_zero(x))
    return bad_padding;
  dest = x;
  return no_error;
}

// kvmi_error_code at the head of a reply. A failed reply is the code alone,
// and a code is 0 or negative.
inline error read_error_code(reader& r, int32_t& err) {
  error_code ec;
  if (!r.get(ec))
    return bad_size;
  if (!padding_zero(ec))
    return bad_padding;
  err = ec.err;
  if (ec.err != 0 && r.left() != 0)
    return bad_size;
  if (ec.err > 0)
    return error{errc::bad_value, "error codes are negative"};
  return no_error;
}

// get_registers_reply, then exactly msrs.nmsrs kvm_msr_entry.
template <class Registers>
error read_registers_reply(reader& r, Registers& rr) {
  r.get(rr.fixed);
  if (!padding_zero(rr.fixed))
    return bad_padding;
  if (rr.fixed.msrs.nmsrs * sizeof(kvm_msr_entry) != r.left())
    return bad_size;
  r.get_array(rr.msrs, rr.fixed.msrs.nmsrs);
  return no_error;
}

} // namespace kvmi::detail
