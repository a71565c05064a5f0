#include "actors/skip_instruction.hpp"

#include "proto/x86_insn.hpp"

#include <memory>

namespace kvmid {

namespace {

constexpr uint64_t frame_mask = 0x000ffffffffff000ull; // bits 12..51 of CR3 and the entries
constexpr uint64_t present = 1, large = 0x80;
constexpr uint64_t efer_lma = 1ull << 10, cr4_la57 = 1ull << 12;
constexpr size_t max_insn = 15;

using regions = std::vector<kvmi::hs::region>;

// READ_PHYSICAL of RAM only: a guest's CR3 or page-table entry may point
// anywhere, MMIO included.
void read_ram(const command_fn& send, const regions& map, uint64_t gpa, uint64_t n,
              std::function<void(std::vector<uint8_t>, std::string)> done) {
  if (auto why = unsafe_reason(map, gpa, n); !why.empty())
    return done({}, why);
  send(kvmi::read_physical{gpa, n}, [n, done = std::move(done)](cmd_result r) {
    if (!r.ok())
      return done({}, r.failure.empty() ? "READ_PHYSICAL: " + std::string(kvmi::kvm_error_name(r.reply.err))
                                        : r.failure);
    auto* d = std::get_if<kvmi::physical_data>(&r.reply.data);
    if (!d || d->data.size() != n)
      return done({}, "READ_PHYSICAL: short reply");
    done(std::move(d->data), {});
  });
}

struct walk {
  command_fn send;
  regions map;
  uint64_t gva = 0, table = 0;
  int level = 0; // of `table`: 5 or 4 down to 1
  std::function<void(uint64_t, std::string)> done;
};

void step(std::shared_ptr<walk> w) {
  int shift = 12 + 9 * (w->level - 1);
  uint64_t entry_at = w->table + ((w->gva >> shift) & 511) * 8;
  read_ram(w->send, w->map, entry_at, 8, [w, shift](std::vector<uint8_t> b, std::string err) {
    if (!err.empty())
      return w->done(0, "page walk: " + err);
    uint64_t e = 0;
    for (int i = 7; i >= 0; --i)
      e = e << 8 | b[size_t(i)];
    if (!(e & present))
      return w->done(0, "page walk: gva not mapped");
    uint64_t frame = e & frame_mask;
    if (w->level == 1 || ((w->level == 2 || w->level == 3) && (e & large))) {
      uint64_t span = uint64_t(1) << shift;
      return w->done((frame & ~(span - 1)) + (w->gva & (span - 1)), {});
    }
    w->table = frame;
    --w->level;
    step(w);
  });
}

} // namespace

void translate_gva(command_fn send, const kvm_sregs& sregs, regions map, uint64_t gva,
                   std::function<void(uint64_t, std::string)> done) {
  if (!(sregs.efer & efer_lma))
    return done(0, "the vCPU is not in long mode");
  auto w = std::make_shared<walk>();
  w->send = std::move(send);
  w->map = std::move(map);
  w->gva = gva;
  w->table = sregs.cr3 & frame_mask;
  w->level = (sregs.cr4 & cr4_la57) ? 5 : 4;
  w->done = std::move(done);
  step(std::move(w));
}

void skip_instruction(command_fn send, skip_request r, std::function<void(std::string)> done) {
  if (!r.sregs.cs.l)
    return done("the vCPU does not run 64-bit code");
  auto req = std::make_shared<skip_request>(std::move(r));
  // The bytes at RIP up to 15, from two pages when the instruction may
  // cross into the next one.
  auto bytes = std::make_shared<std::vector<uint8_t>>();
  auto finish = [send, req, bytes, done]() {
    auto insn = kvmi::decode_x86_64(*bytes);
    if (!insn)
      return done("the instruction at RIP is not one kvmid decodes");
    req->regs.rip += insn->length;
    send(kvmi::set_registers{req->vcpu, {}, req->regs}, [done](cmd_result res) {
      if (!res.ok())
        return done(res.failure.empty()
                      ? "SET_REGISTERS: " + std::string(kvmi::kvm_error_name(res.reply.err))
                      : res.failure);
      done({});
    });
  };
  auto fetch = [send, req, bytes, done, finish](uint64_t gva, auto&& next) -> void {
    translate_gva(send, req->sregs, req->regions, gva,
                  [send, req, bytes, done, finish, gva, next](uint64_t gpa, std::string err) {
      if (!err.empty())
        return done(err);
      uint64_t room = kvmi::page_size - (gpa & (kvmi::page_size - 1));
      uint64_t n = std::min<uint64_t>(max_insn - bytes->size(), room);
      read_ram(send, req->regions, gpa, n,
               [bytes, done, finish, gva, n, next](std::vector<uint8_t> b, std::string e2) {
        if (!e2.empty())
          return done("instruction fetch: " + e2);
        bytes->insert(bytes->end(), b.begin(), b.end());
        if (bytes->size() < max_insn && !kvmi::decode_x86_64(*bytes))
          return next(gva + n, next); // it goes on in the next page
        finish();
      });
    });
  };
  fetch(req->regs.rip, fetch);
}

} // namespace kvmid
