#include "server/control/json.hpp"

#include "proto/ids.hpp"
#include "server/control/encoding.hpp"

namespace kvmid::control {

using nlohmann::json;

json to_json(const region_info& r) {
  return {{"gpa", hex_u64(r.gpa)}, {"size", hex_u64(r.size)}, {"type", r.type},
          {"online", r.online},    {"tgt", hex_u64(r.tgt)}};
}

json event_names(uint32_t mask) {
  json a = json::array();
  for (uint32_t e = 0; e < 32; ++e)
    if (mask & (1u << e))
      a.push_back(e < kvmi::num_events ? std::string(event_kind_name(e))
                                       : "bit" + std::to_string(e));
  return a;
}

json to_json(const vcpu_info& v) {
  return {{"index", v.index},
          {"state", name(v.state)},
          {"event", v.event},
          {"enabled_events", event_names(v.enabled_events)},
          {"counters", {{"events", v.events}, {"alerts", v.alerts}}}};
}

json to_json(const vm_policy& p) {
  json pages = json::array(), msrs = json::array(), crs = json::array(), bps = json::array();
  for (auto& r : p.pages) {
    json rule = {{"name", r.name},
                 {"gpa", hex_u64(r.gpa)},
                 {"size", hex_u64(r.size)},
                 {"access", access_string(r.access)},
                 {"on_violation", std::string(name(r.on_violation))}};
    if (r.deny_size)
      rule["deny_range"] = {{"gpa", hex_u64(r.deny_gpa)}, {"size", hex_u64(r.deny_size)}};
    pages.push_back(std::move(rule));
  }
  for (auto& r : p.msrs)
    msrs.push_back({{"name", r.name}, {"msr", hex_u64(r.msr)}});
  for (auto& c : p.crs)
    crs.push_back(c.name);
  for (auto& b : p.breakpoints)
    bps.push_back({{"name", b.name}, {"gpa", hex_u64(b.gpa)}});
  return {{"name", p.name},
          {"page_protection", std::move(pages)},
          {"msr_protection", std::move(msrs)},
          {"cr_pins", std::move(crs)},
          {"breakpoints", std::move(bps)},
          {"hypercalls", p.hypercalls}};
}

json to_json(const vm_info& v, bool detail) {
  json j = {{"uuid", v.uuid},
            {"name", v.name},
            {"state", !v.connected ? "disconnected" : v.paused ? "paused" : "running"},
            {"connected", v.connected},
            {"peer", v.peer},
            {"sessions", v.sessions},
            {"connected_since", v.connected_since},
            {"start_time", v.start_time},
            {"byte_order", v.byte_order},
            {"protocol", v.protocol},
            {"vcpus", v.vcpu_count},
            {"paused", v.paused},
            {"setup", v.setup},
            {"policy", v.policy},
            {"counters",
             {{"events", v.events},
              {"alerts", v.alerts},
              {"protocol_errors", v.protocol_errors}}}};
  if (detail) {
    if (v.policy_rules)
      j["policy_rules"] = to_json(*v.policy_rules);
    json hits = json::array();
    for (auto& h : v.rule_hits)
      hits.push_back({{"kind", h.kind}, {"name", h.name}, {"hits", h.hits}});
    j["rule_hits"] = std::move(hits);
    j["commands_mask"] = hex_u64(v.commands_mask);
    j["events_mask"] = hex_u64(v.events_mask);
    json regions = json::array();
    for (auto& r : v.regions)
      regions.push_back(to_json(r));
    j["memory_map"] = std::move(regions);
    json vcpus = json::array();
    for (auto& c : v.vcpus)
      vcpus.push_back(to_json(c));
    j["vcpu_list"] = std::move(vcpus);
  }
  return j;
}

namespace {
json segment(const kvm_segment& s) {
  return {{"selector", hex_u64(s.selector)}, {"base", hex_u64(s.base)},
          {"limit", hex_u64(s.limit)},       {"type", s.type},
          {"dpl", s.dpl},                    {"present", s.present != 0},
          {"l", s.l != 0},                   {"db", s.db != 0}};
}
} // namespace

json to_json(const registers_info& r) {
  const kvm_regs& g = r.regs;
  json regs = {{"rax", hex_u64(g.rax)}, {"rbx", hex_u64(g.rbx)}, {"rcx", hex_u64(g.rcx)},
               {"rdx", hex_u64(g.rdx)}, {"rsi", hex_u64(g.rsi)}, {"rdi", hex_u64(g.rdi)},
               {"rsp", hex_u64(g.rsp)}, {"rbp", hex_u64(g.rbp)}, {"r8", hex_u64(g.r8)},
               {"r9", hex_u64(g.r9)},   {"r10", hex_u64(g.r10)}, {"r11", hex_u64(g.r11)},
               {"r12", hex_u64(g.r12)}, {"r13", hex_u64(g.r13)}, {"r14", hex_u64(g.r14)},
               {"r15", hex_u64(g.r15)}, {"rip", hex_u64(g.rip)}, {"rflags", hex_u64(g.rflags)}};
  const kvm_sregs& s = r.sregs;
  json sregs = {{"cr0", hex_u64(s.cr0)},   {"cr2", hex_u64(s.cr2)},
                {"cr3", hex_u64(s.cr3)},   {"cr4", hex_u64(s.cr4)},
                {"cr8", hex_u64(s.cr8)},   {"efer", hex_u64(s.efer)},
                {"apic_base", hex_u64(s.apic_base)},
                {"cs", segment(s.cs)},     {"ds", segment(s.ds)},
                {"es", segment(s.es)},     {"fs", segment(s.fs)},
                {"gs", segment(s.gs)},     {"ss", segment(s.ss)},
                {"tr", segment(s.tr)},     {"ldt", segment(s.ldt)},
                {"gdt", {{"base", hex_u64(s.gdt.base)}, {"limit", hex_u64(s.gdt.limit)}}},
                {"idt", {{"base", hex_u64(s.idt.base)}, {"limit", hex_u64(s.idt.limit)}}}};
  json msrs = json::array();
  for (auto& [idx, val] : r.msrs)
    msrs.push_back({{"index", hex_u64(idx)}, {"value", hex_u64(val)}});
  return {{"mode", r.mode}, {"regs", std::move(regs)}, {"sregs", std::move(sregs)},
          {"msrs", std::move(msrs)}};
}

json to_json(const breakpoint_info& b) {
  return {{"gpa", hex_u64(b.gpa)},
          {"original", hex_u64(b.original)},
          {"planted", b.planted},
          {"hits", b.hits}};
}

json to_json(const page_range_list& l) {
  json a = json::array();
  for (auto& r : l.ranges)
    a.push_back({{"gpa", hex_u64(r.gpa)},
                 {"pages", r.pages},
                 {"len", hex_u64(r.pages * kvmi::page_size)},
                 {"access", access_string(r.access)}});
  json out{{"ranges", std::move(a)}};
  if (l.next)
    out["next"] = hex_u64(*l.next);
  return out;
}

} // namespace kvmid::control
