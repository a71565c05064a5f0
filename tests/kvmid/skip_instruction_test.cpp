// Denying a write: the page walk from CR3, the instruction fetch (across a
// page boundary too) and SET_REGISTERS with RIP past the instruction, over
// a fake kernel that answers READ_PHYSICAL from sparse guest memory.
#include "actors/skip_instruction.hpp"

#include <doctest/doctest.h>

#include <map>

using namespace kvmid;

namespace {

constexpr uint64_t va = 0xffffffff81000ffcull; // 4 bytes before a page ends
constexpr uint64_t p_present_rw = 3, p_large = 0x80;

struct fake_guest {
  std::map<uint64_t, uint8_t> mem; // sparse guest-physical memory
  std::vector<kvmi::hs::region> map{{0, 0x1000000, uint32_t(kvmi::hs::region_type::ram), 0, 0},
                                    {0x1000000, 0x100000, uint32_t(kvmi::hs::region_type::mmio), 0, 0}};
  std::vector<kvmi::command> sent;
  std::optional<kvm_regs> set;

  void put64(uint64_t gpa, uint64_t v) {
    for (int i = 0; i < 8; ++i)
      mem[gpa + i] = uint8_t(v >> (8 * i));
  }
  void put(uint64_t gpa, std::vector<uint8_t> b) {
    for (size_t i = 0; i < b.size(); ++i)
      mem[gpa + i] = b[i];
  }
  // PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000 for the top 2 GiB.
  fake_guest() {
    put64(0x1000 + 511 * 8, 0x2000 | p_present_rw);
    put64(0x2000 + 510 * 8, 0x3000 | p_present_rw);
  }
  // 4 KiB pages: va's page at 0x5000, the next one at 0x9000 (not adjacent).
  void small_pages() {
    put64(0x3000 + 8 * 8, 0x4000 | p_present_rw);
    put64(0x4000 + 0 * 8, 0x5000 | p_present_rw);
    put64(0x4000 + 1 * 8, 0x9000 | p_present_rw);
  }
  command_fn send() {
    return [this](kvmi::command c, std::function<void(cmd_result)> done) {
      sent.push_back(c);
      cmd_result r;
      r.reply.id = kvmi::id_of(c);
      if (auto* rp = std::get_if<kvmi::read_physical>(&c)) {
        kvmi::physical_data d;
        for (uint64_t i = 0; i < rp->size; ++i)
          d.data.push_back(mem.count(rp->gpa + i) ? mem[rp->gpa + i] : 0);
        r.reply.data = std::move(d);
      } else if (auto* sr = std::get_if<kvmi::set_registers>(&c)) {
        set = sr->regs;
      }
      done(std::move(r)); // as the kernel's reply would come, later
    };
  }
  std::string skip(uint64_t rip, uint64_t cr3 = 0x1000) {
    skip_request req;
    req.vcpu = 1;
    req.regs.rip = rip;
    req.regs.rax = 0x1234;
    req.sregs.cr3 = cr3;
    req.sregs.efer = 0x500; // LME | LMA
    req.sregs.cs.l = 1;
    req.regions = map;
    std::optional<std::string> out;
    skip_instruction(send(), req, [&](const std::string& e) { out = e; });
    REQUIRE(out); // the fake answers at once
    return *out;
  }
};

} // namespace

TEST_CASE("a denied write moves RIP past an instruction that crosses into a page mapped elsewhere") {
  fake_guest g;
  g.small_pages();
  // movq $1,(%rdi): 48 c7 07 01 00 00 00, 4 bytes in one page, 3 in the next.
  g.put(0x5ffc, {0x48, 0xc7, 0x07, 0x01});
  g.put(0x9000, {0x00, 0x00, 0x00, 0xc3});
  CHECK(g.skip(va) == "");
  REQUIRE(g.set);
  CHECK(g.set->rip == va + 7);
  CHECK(g.set->rax == 0x1234); // the other registers as the event had them
  auto* last = std::get_if<kvmi::set_registers>(&g.sent.back());
  REQUIRE(last);
  CHECK(last->vcpu == 1);
}

TEST_CASE("a denied write in a 2 MiB page is skipped with the large page's offset") {
  fake_guest g;
  g.put64(0x3000 + 8 * 8, 0x200000 | p_present_rw | p_large);
  g.put(0x200ffc, {0x89, 0x07}); // mov %eax,(%rdi)
  CHECK(g.skip(va) == "");
  REQUIRE(g.set);
  CHECK(g.set->rip == va + 2);
}

TEST_CASE("a write that cannot be skipped leaves the registers alone and says why") {
  SUBCASE("RIP not mapped") {
    fake_guest g;
    CHECK(g.skip(va).find("not mapped") != std::string::npos);
    CHECK_FALSE(g.set);
  }
  SUBCASE("page tables in MMIO are never read") {
    fake_guest g;
    auto why = g.skip(va, 0x1000000);
    CHECK(why.find("MMIO") != std::string::npos);
    CHECK(g.sent.empty());
  }
  SUBCASE("an encoding the decoder does not know") {
    fake_guest g;
    g.small_pages();
    g.put(0x5ffc, {0xc5, 0xf9, 0x7f, 0x07}); // vmovdqa %xmm0,(%rdi)
    CHECK(g.skip(va).find("decode") != std::string::npos);
    CHECK_FALSE(g.set);
  }
  SUBCASE("not in long mode") {
    fake_guest g;
    skip_request req;
    req.sregs.cs.l = 1;
    std::string out = "-";
    skip_instruction(g.send(), req, [&](const std::string& e) { out = e; });
    CHECK(out.find("long mode") != std::string::npos);
    CHECK(g.sent.empty());
  }
}
