#include "server/control/page_ranges.hpp"

#include "proto/ids.hpp"

#include <algorithm>

namespace kvmid::control {

page_range_list coalesce_pages(std::vector<std::pair<uint64_t, uint8_t>> pages, uint64_t from,
                               size_t limit) {
  std::sort(pages.begin(), pages.end());
  from -= from % kvmi::page_size;
  page_range_list out;
  for (auto [gpa, access] : pages) {
    if (gpa < from)
      continue;
    if (!out.ranges.empty()) {
      auto& last = out.ranges.back();
      // A page repeated in the table (it should not be) is one page.
      if (gpa < last.gpa + last.pages * kvmi::page_size)
        continue;
      if (gpa == last.gpa + last.pages * kvmi::page_size && access == last.access) {
        ++last.pages;
        continue;
      }
    }
    if (out.ranges.size() == limit) {
      out.next = gpa;
      break;
    }
    out.ranges.push_back({gpa, 1, access});
  }
  return out;
}

} // namespace kvmid::control
