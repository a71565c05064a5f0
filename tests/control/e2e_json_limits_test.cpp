// A real kvmid given JSON nested 100,000 deep on the control API: a short
// 400, and kvmid (with every VM's introspection) carries on.
#include "e2e_fixture.hpp"

using namespace kvmid::test;

TEST_CASE("e2e: a 100000-deep JSON body is a short 400 and kvmid keeps its VMs") {
  e2e t;
  std::string deep = R"({"events": )" + std::string(100000, '[') + std::string(100000, ']') + "}";
  t.write_file("deep.json", deep); // 200 KB: too long for one argv string
  auto path = "/v1/vms/" + t.uuid(0) + "/vcpus/0/events";
  // Appended, not "@" + path: GCC 12 at -O3 reports a false -Wrestrict in
  // operator+(const char*, string&&).
  std::string body_arg = "@";
  body_arg += (t.dir / "deep.json").string();
  for (int round = 0; round < 3; ++round) {
    auto r = t.curl("PUT", path, body_arg);
    CAPTURE(r.body.substr(0, 300));
    INFO("kvmid stderr: " << t.log());
    REQUIRE(r.status == 400);
    CHECK(r.body.size() < 512);
    CHECK(r.j()["error"]["message"].get<std::string>().find("nested deeper than 64")
          != std::string::npos);
  }
  auto vms = t.curl("GET", "/v1/vms");
  REQUIRE(vms.status == 200);
  auto j = vms.j();
  REQUIRE(j["vms"].size() == 2);
  for (auto& v : j["vms"])
    CHECK(v["connected"] == true);
  for (uint32_t v = 0; v < 2; ++v)
    CHECK(t.sim->hooked(v));
}
