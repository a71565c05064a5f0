// The page-access table as the API lists it: adjacent pages with the same
// access coalesced into one range, and paged, so that a policy protecting
// 20 MiB is a line, not 5,120 entries. Pure, so it is unit tested.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace kvmid::control {

struct page_range {
  uint64_t gpa = 0;   // first page, page aligned
  uint64_t pages = 0; // adjacent pages with this access
  uint8_t access = 7;
};

struct page_range_list {
  std::vector<page_range> ranges;
  // Where the next request starts (?from=), when `limit` cut the list.
  std::optional<uint64_t> next;
};

inline constexpr size_t page_ranges_default_limit = 1000;
inline constexpr size_t page_ranges_max_limit = 10000;

// pages: (gpa, access) of each restricted page, any order, page aligned.
// Lists the ranges of pages at or above `from` (rounded down to its page),
// at most `limit` (>= 1) of them.
page_range_list coalesce_pages(std::vector<std::pair<uint64_t, uint8_t>> pages, uint64_t from,
                               size_t limit);

} // namespace kvmid::control
