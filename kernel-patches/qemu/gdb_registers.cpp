#include "kernel-patches/qemu/gdb_registers.hpp"

#include <cstring>

namespace kvmi::qemu {

namespace {

// The value of attribute `name` in the tag text, or empty.
std::string attribute(const std::string& tag, const std::string& name) {
  auto at = tag.find(" " + name + "=\"");
  if (at == std::string::npos)
    return {};
  at += name.size() + 3;
  auto end = tag.find('"', at);
  return end == std::string::npos ? std::string() : tag.substr(at, end - at);
}

constexpr uint32_t msr_efer = 0xc0000080;
constexpr uint32_t msr_fs_base = 0xc0000100;
constexpr uint32_t msr_gs_base = 0xc0000101;
constexpr uint32_t msr_kernel_gs_base = 0xc0000102;

} // namespace

void register_layout::add_feature(const std::string& text) {
  // QEMU's i386-64bit.xml comments out registers it does not send.
  std::string xml;
  for (size_t at = 0; at < text.size();) {
    auto open = text.find("<!--", at);
    xml.append(text, at, open == std::string::npos ? std::string::npos : open - at);
    if (open == std::string::npos)
      break;
    auto close = text.find("-->", open + 4);
    at = close == std::string::npos ? text.size() : close + 3;
  }
  for (size_t at = xml.find("<reg "); at != std::string::npos; at = xml.find("<reg ", at + 1)) {
    auto end = xml.find('>', at);
    if (end == std::string::npos)
      return;
    std::string tag = xml.substr(at, end - at);
    auto name = attribute(tag, "name");
    auto bits = std::strtoul(attribute(tag, "bitsize").c_str(), nullptr, 10);
    if (auto n = attribute(tag, "regnum"); !n.empty())
      next_regnum_ = unsigned(std::strtoul(n.c_str(), nullptr, 10));
    gdb_reg r{next_regnum_++, next_offset_, bits / 8};
    next_offset_ += r.size;
    by_name_[name] = r;
  }
}

std::optional<gdb_reg> register_layout::find(const std::string& name) const {
  auto it = by_name_.find(name);
  if (it == by_name_.end())
    return std::nullopt;
  return it->second;
}

std::vector<std::string> included_features(const std::string& xml) {
  std::vector<std::string> out;
  for (size_t at = xml.find("<xi:include "); at != std::string::npos;
       at = xml.find("<xi:include ", at + 1)) {
    auto end = xml.find('>', at);
    if (auto h = attribute(xml.substr(at, end - at), "href"); !h.empty())
      out.push_back(h);
  }
  return out;
}

x86_state decode_registers(const register_layout& l, std::span<const uint8_t> g) {
  x86_state s;
  auto get = [&](const char* name) -> uint64_t {
    auto r = l.find(name);
    if (!r || r->offset + r->size > g.size() || r->size > 8)
      return 0;
    uint64_t v = 0;
    std::memcpy(&v, g.data() + r->offset, r->size); // the gdbstub sends x86 little-endian
    return v;
  };
  auto& x = s.regs;
  x.rax = get("rax"), x.rbx = get("rbx"), x.rcx = get("rcx"), x.rdx = get("rdx");
  x.rsi = get("rsi"), x.rdi = get("rdi"), x.rsp = get("rsp"), x.rbp = get("rbp");
  x.r8 = get("r8"), x.r9 = get("r9"), x.r10 = get("r10"), x.r11 = get("r11");
  x.r12 = get("r12"), x.r13 = get("r13"), x.r14 = get("r14"), x.r15 = get("r15");
  x.rip = get("rip"), x.rflags = get("eflags");
  auto& sr = s.sregs;
  sr.cr0 = get("cr0"), sr.cr2 = get("cr2"), sr.cr3 = get("cr3"), sr.cr4 = get("cr4");
  sr.cr8 = get("cr8"), sr.efer = get("efer");
  bool long_mode = (sr.efer & (1u << 10)) != 0; // EFER.LMA
  auto seg = [&](kvm_segment& k, const char* name) {
    k.selector = uint16_t(get(name));
    k.present = 1;
    k.s = 1;
    k.dpl = k.selector & 3;
  };
  seg(sr.cs, "cs"), seg(sr.ss, "ss"), seg(sr.ds, "ds"), seg(sr.es, "es");
  seg(sr.fs, "fs"), seg(sr.gs, "gs");
  sr.cs.l = long_mode ? 1 : 0;
  sr.cs.type = 11; // execute/read, accessed
  sr.fs.base = get("fs_base");
  sr.gs.base = get("gs_base");
  s.msrs.efer = sr.efer;
  s.msrs.shadow_gs = get("k_gs_base");
  return s;
}

std::vector<std::pair<unsigned, std::vector<uint8_t>>> encode_regs(const register_layout& l,
                                                                   const kvm_regs& x) {
  std::vector<std::pair<unsigned, std::vector<uint8_t>>> out;
  auto put = [&](const char* name, uint64_t v) {
    auto r = l.find(name);
    if (!r || r->size > 8)
      return;
    std::vector<uint8_t> b(r->size);
    std::memcpy(b.data(), &v, r->size);
    out.emplace_back(r->regnum, std::move(b));
  };
  put("rax", x.rax), put("rbx", x.rbx), put("rcx", x.rcx), put("rdx", x.rdx);
  put("rsi", x.rsi), put("rdi", x.rdi), put("rsp", x.rsp), put("rbp", x.rbp);
  put("r8", x.r8), put("r9", x.r9), put("r10", x.r10), put("r11", x.r11);
  put("r12", x.r12), put("r13", x.r13), put("r14", x.r14), put("r15", x.r15);
  put("rip", x.rip), put("eflags", x.rflags);
  return out;
}

std::optional<uint64_t> msr_value(const x86_state& s, uint32_t msr) {
  switch (msr) {
    case msr_efer: return s.sregs.efer;
    case msr_fs_base: return s.sregs.fs.base;
    case msr_gs_base: return s.sregs.gs.base;
    case msr_kernel_gs_base: return s.msrs.shadow_gs;
  }
  return std::nullopt;
}

} // namespace kvmi::qemu
