// The closed reason sets behind kvmid_protocol_errors_total and
// kvmid_handshake_failures_total: the lists exported at 0 from start-up
// must hold every reason, once, as a token fit for a label and an alert.
#include "actors/protocol_fault.hpp"
#include "server/dialect/handshake_failure.hpp"

#include <doctest/doctest.h>

#include <set>

using namespace kvmid;

namespace {
bool token_like(std::string_view s) {
  if (s.empty())
    return false;
  for (char c : s)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
      return false;
  return true;
}
} // namespace

TEST_SUITE("control") {

TEST_CASE("metric reasons: every protocol error reason is listed once in enum order") {
  std::set<std::string_view> names;
  for (size_t i = 0; i < all_protocol_error_reasons.size(); ++i) {
    auto r = static_cast<protocol_error_reason>(i);
    CAPTURE(i);
    CHECK(all_protocol_error_reasons[i] == r);
    CHECK(token_like(name(r)));
    CHECK(names.insert(name(r)).second);
  }
  // An enumerator added past the list's end has a name: the list must grow.
  CHECK(name(static_cast<protocol_error_reason>(all_protocol_error_reasons.size())) == "?");
}

TEST_CASE("metric reasons: handshake failure tokens are unique label values") {
  std::set<std::string_view> seen;
  for (auto t : handshake_failure_reasons) {
    CAPTURE(t);
    CHECK(token_like(t));
    CHECK(seen.insert(t).second);
  }
}

} // TEST_SUITE
