// JSON scenarios: scripted guest actions run in order, each checked
// against its expectations.
#include "kernel-patches/sim/sim.hpp"

#include <nlohmann/json.hpp>

#include <thread>

namespace kvmi::sim {

nlohmann::json host::run_scenario(const nlohmann::json& scenario) {
  using nlohmann::json;
  json results = json::array();
  if (!scenario.contains("steps") || !scenario["steps"].is_array())
    return json::array({json{{"failed", true}, {"error", "scenario needs a steps array"}}});
  for (auto& st : scenario["steps"]) {
    json r{{"op", st.value("op", "")}};
    std::string op = st.value("op", "");
    uint32_t vm = st.value("vm", 0u), vcpu = st.value("vcpu", 0u);
    auto timeout = ms{st.value("timeout_ms", 5000)};
    std::optional<std::future<outcome>> f;
    if (op == "sleep") {
      std::this_thread::sleep_for(ms{st.value("ms", 0)});
    } else if (op == "wait_hooked") {
      bool okh = wait_until([&] { return hooked(vm); }, timeout);
      r["hooked"] = okh;
      if (!okh)
        r["failed"] = true;
    } else if (op == "write_msr") {
      f = write_msr(vm, vcpu, st.at("msr").get<uint32_t>(), st.at("value").get<uint64_t>());
    } else if (op == "write_cr") {
      f = write_cr(vm, vcpu, st.at("cr").get<uint32_t>(), st.at("value").get<uint64_t>());
    } else if (op == "access") {
      std::string mode = st.value("mode", "r");
      uint8_t m = 0;
      for (char ch : mode)
        m |= ch == 'r' ? page_access_r : ch == 'w' ? page_access_w : ch == 'x' ? page_access_x : 0;
      f = access(vm, vcpu, st.at("gpa").get<uint64_t>(), m);
    } else if (op == "execute") {
      f = execute(vm, vcpu, st.at("gpa").get<uint64_t>());
    } else if (op == "hypercall") {
      f = hypercall(vm, vcpu);
    } else if (op == "descriptor") {
      f = descriptor(vm, vcpu, st.value("descriptor", uint8_t(desc_idtr)), st.value("write", false));
    } else if (op == "xsetbv") {
      f = xsetbv(vm, vcpu, st.at("value").get<uint64_t>());
    } else if (op == "hotplug") {
      f = hotplug(vm);
    } else if (op == "unhook") {
      f = request_unhook(vm);
    } else if (op == "crash") {
      f = crash(vm);
    } else if (op == "fault") {
      f = inject_fault(vm, st.value("fault", ""));
    } else if (op == "guest_write") {
      guest_write(vm, st.at("gpa").get<uint64_t>(), st.at("bytes").get<std::vector<uint8_t>>());
    } else {
      r["failed"] = true;
      r["error"] = "unknown op";
    }
    if (f) {
      if (f->wait_for(timeout) != std::future_status::ready) {
        r["failed"] = true;
        r["error"] = "timeout";
      } else {
        auto out = f->get();
        r["ok"] = out.ok;
        if (!out.error.empty())
          r["error"] = out.error;
        r["events"] = out.events;
        if (out.event)
          r["event"] = std::string(name(*out.event));
        if (out.reply)
          r["reply"] = std::string(name(*out.reply));
        r["aborted"] = out.aborted;
        r["crashed"] = out.crashed;
        r["allowed"] = out.allowed;
        r["guest_exception"] = out.guest_exception;
        r["value"] = out.value;
        r["vcpu"] = out.vcpu;
        if (!out.ok)
          r["failed"] = true;
      }
    }
    if (st.contains("expect"))
      for (auto& [k, want] : st["expect"].items())
        if (!r.contains(k) || r[k] != want) {
          r["failed"] = true;
          r["expect_failed"][k] = want;
        }
    results.push_back(std::move(r));
  }
  return results;
}

} // namespace kvmi::sim
