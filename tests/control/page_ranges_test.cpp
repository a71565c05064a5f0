#include "server/control/page_ranges.hpp"

#include <doctest/doctest.h>

#include <algorithm>

using namespace kvmid::control;

namespace {
constexpr uint64_t pg = 4096;
std::vector<std::pair<uint64_t, uint8_t>> run(uint64_t gpa, uint64_t n, uint8_t access) {
  std::vector<std::pair<uint64_t, uint8_t>> out;
  for (uint64_t i = 0; i < n; ++i)
    out.emplace_back(gpa + i * pg, access);
  return out;
}
} // namespace

TEST_CASE("page ranges: adjacent pages with the same access are one range") {
  // 5,120 pages of a 20 MiB read-only region, given out of order, and one
  // page with other access right after it, and one after a gap.
  auto pages = run(0x1000000, 5120, 5);
  std::reverse(pages.begin(), pages.end());
  pages.emplace_back(0x1000000 + 5120 * pg, 1);
  pages.emplace_back(0x3000000, 5);
  auto l = coalesce_pages(pages, 0, page_ranges_default_limit);
  REQUIRE(l.ranges.size() == 3);
  CHECK(l.ranges[0].gpa == 0x1000000);
  CHECK(l.ranges[0].pages == 5120);
  CHECK(l.ranges[0].access == 5);
  CHECK(l.ranges[1].gpa == 0x1000000 + 5120 * pg);
  CHECK(l.ranges[1].pages == 1);
  CHECK(l.ranges[1].access == 1);
  CHECK(l.ranges[2].gpa == 0x3000000);
  CHECK(l.ranges[2].pages == 1);
  CHECK_FALSE(l.next);
}

TEST_CASE("page ranges: paging with limit and from covers every page once") {
  std::vector<std::pair<uint64_t, uint8_t>> pages;
  // 50 one-page ranges two pages apart, each two pages long every 5th.
  for (uint64_t i = 0; i < 50; ++i) {
    pages.emplace_back(i * 4 * pg, uint8_t(i % 8));
    if (i % 5 == 0)
      pages.emplace_back(i * 4 * pg + pg, uint8_t(i % 8));
  }
  uint64_t from = 0, seen_pages = 0;
  size_t calls = 0, ranges = 0;
  for (;;) {
    auto l = coalesce_pages(pages, from, 7);
    ++calls;
    CHECK(l.ranges.size() <= 7);
    for (auto& r : l.ranges) {
      CHECK(r.gpa >= from);
      seen_pages += r.pages;
      ++ranges;
    }
    if (!l.next)
      break;
    CHECK(*l.next > l.ranges.back().gpa);
    from = *l.next;
    REQUIRE(calls < 100);
  }
  CHECK(ranges == 50);
  CHECK(seen_pages == pages.size());
  CHECK(calls == 8); // 7 pages of 7, then 1
}

TEST_CASE("page ranges: from inside a range starts at its page and an empty table is empty") {
  auto l = coalesce_pages(run(0x10000, 4, 7 & ~2), 0x12345, 10);
  REQUIRE(l.ranges.size() == 1);
  CHECK(l.ranges[0].gpa == 0x12000);
  CHECK(l.ranges[0].pages == 2);
  CHECK(coalesce_pages({}, 0, 1).ranges.empty());
  CHECK_FALSE(coalesce_pages(run(0x10000, 4, 1), 0x20000, 1).next);
}
