// The alert families, one per kind of policy rule. Each is the name of its
// alert records on the event bus, the `rule` label of kvmid_alerts_total and
// the kind of a rule's hit count: one spelling for all of them.
#pragma once

#include <array>
#include <string_view>

namespace kvmid::alert_kind {

inline constexpr std::string_view page_protection = "page-protection";
inline constexpr std::string_view msr_protection = "msr-protection";
inline constexpr std::string_view cr_pin = "cr-pin";

inline constexpr std::array<std::string_view, 3> all{page_protection, msr_protection, cr_pin};

} // namespace kvmid::alert_kind
