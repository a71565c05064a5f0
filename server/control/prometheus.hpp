// Prometheus text exposition (format 0.0.4) of metric families: escaping of
// help and label values, histogram buckets/sum/count, names validated so a
// bad name can never produce an unparsable scrape.
#pragma once

#include "actors/metrics.hpp"

#include <span>
#include <string>
#include <string_view>

namespace kvmid::control {

bool valid_metric_name(std::string_view s);  // [a-zA-Z_:][a-zA-Z0-9_:]*
bool valid_label_name(std::string_view s);   // [a-zA-Z_][a-zA-Z0-9_]*, not "__" prefixed
std::string escape_label_value(std::string_view s); // \\ \" \n
std::string escape_help(std::string_view s);        // \\ \n
std::string format_value(double v);                 // shortest round-trip, +Inf/-Inf/NaN

// Families with an invalid name and samples with an invalid label name are
// skipped (and counted in the returned text as a comment), never emitted.
std::string render_prometheus(std::span<const metric_family> families);

inline constexpr std::string_view prometheus_content_type =
  "text/plain; version=0.0.4; charset=utf-8";

} // namespace kvmid::control
