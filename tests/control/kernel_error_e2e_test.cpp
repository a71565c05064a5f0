// What a -KVM_E* answer from the host becomes on the API (server/control/
// API.md, Errors): -KVM_EINVAL is the caller's argument (422 invalid), not a
// failing kernel (502 kernel_error).
#include "tests/support/kvmid_process.hpp"

using namespace kvmid;
using namespace kvmid::test;

TEST_SUITE("control-e2e") {

TEST_CASE("e2e: the host's -KVM_EINVAL for an unknown MSR is 422 invalid naming the error") {
  kvmid_process t(one_vm());
  std::string vm = "/v1/vms/" + t.uuid(0);
  REQUIRE(t.curl("POST", vm + "/pause").status == 200);
  // 0x123 is no MSR the host keeps: GET_REGISTERS answers -KVM_EINVAL.
  auto r = t.curl("GET", vm + "/vcpus/0/registers?msrs=0x123");
  INFO(r.body);
  CHECK(r.status == 422);
  CHECK(r.j()["error"]["code"] == "invalid");
  CHECK(r.j()["error"]["message"].get<std::string>().find("-KVM_EINVAL") != std::string::npos);
  CHECK(t.curl("POST", vm + "/resume").status == 200);
}

}
