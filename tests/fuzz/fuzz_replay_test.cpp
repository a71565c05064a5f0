// Runs the fuzz targets' logic under the normal (and the ASan/UBSan) build:
// the seeds, seeded random mutations of them, and the corpus kept in
// tests/fuzz/corpus/<target>/ (minimised fuzzer finds and regressions). A
// target without a kept corpus fails.
#include <stdexcept>
#define KVMI_FUZZ_FAIL(msg) throw std::logic_error(msg)
#include "tests/fuzz/api_targets.hpp"
#include "tests/fuzz/fuzz_targets.hpp"
#include "tests/fuzz/v7_targets.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <random>

namespace {

using target = int (*)(const uint8_t*, size_t);

// Bit flips, byte overwrites, truncation, extension and splicing: the kinds
// of change libFuzzer makes, seeded so a failure reproduces.
std::vector<uint8_t> mutate(std::vector<uint8_t> s, std::mt19937_64& rng,
                            const std::vector<std::vector<uint8_t>>& pool) {
  int edits = 1 + static_cast<int>(rng() % 6);
  for (int k = 0; k < edits; ++k) {
    switch (rng() % 6) {
      case 0:
        if (!s.empty())
          s[rng() % s.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
        break;
      case 1:
        if (!s.empty())
          s[rng() % s.size()] = static_cast<uint8_t>(rng());
        break;
      case 2:
        if (!s.empty())
          s.resize(rng() % s.size());
        break;
      case 3:
        s.resize(s.size() + rng() % 64, static_cast<uint8_t>(rng()));
        break;
      case 4: {
        auto& o = pool[rng() % pool.size()];
        size_t from = o.empty() ? 0 : rng() % o.size();
        s.insert(s.end(), o.begin() + static_cast<long>(from), o.end());
        break;
      }
      default:
        // Interesting hdr.size values; the header's size field is at byte 5
        // of a decode input and byte 3 of a splitter stream.
        {
          static const uint16_t sizes[] = {0, 1, 7, 8, 535, 536, 560, 4096, 4104, 4112, 4113, 0xffff};
          uint16_t v = sizes[rng() % std::size(sizes)];
          size_t at = rng() % 2 ? 5 : 3;
          if (s.size() >= at + 2)
            std::memcpy(s.data() + at, &v, 2);
        }
        break;
    }
  }
  return s;
}

void replay(target t, const std::vector<std::vector<uint8_t>>& seeds, const char* corpus,
            int mutations, uint64_t seed) {
  for (auto& s : seeds) {
    std::vector<uint8_t> copy(s); // exact-size heap buffer: ASan sees over-reads
    CHECK_NOTHROW(t(copy.data(), copy.size()));
  }
  std::mt19937_64 rng(seed);
  for (int i = 0; i < mutations; ++i) {
    auto m = mutate(seeds[rng() % seeds.size()], rng, seeds);
    INFO("mutation " << i);
    REQUIRE_NOTHROW(t(m.data(), m.size()));
  }
  // Pure random bytes too.
  for (int i = 0; i < mutations / 10; ++i) {
    std::vector<uint8_t> r(rng() % 5000);
    for (auto& b : r)
      b = static_cast<uint8_t>(rng());
    REQUIRE_NOTHROW(t(r.data(), r.size()));
  }
  std::filesystem::path dir = std::filesystem::path(KVMI_FUZZ_CORPUS) / corpus;
  INFO("corpus " << dir.string());
  REQUIRE(std::filesystem::is_directory(dir));
  size_t files = 0;
  for (auto& entry : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(entry.path(), std::ios::binary);
    std::vector<uint8_t> b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    INFO("corpus file " << entry.path().string());
    CHECK_NOTHROW(t(b.data(), b.size()));
    ++files;
  }
  CHECK(files > 0);
}

} // namespace

TEST_CASE("fuzz replay: decode targets on seeds, mutations and the kept corpus") {
  auto seeds = kvmi::fuzz::decode_seeds();
  REQUIRE(seeds.size() > 50);
  replay(kvmi::fuzz::decode_one, seeds, "decode", 20000, 1);
}

TEST_CASE("fuzz replay: frame splitter on seeds, mutations and the kept corpus") {
  auto seeds = kvmi::fuzz::splitter_seeds();
  replay(kvmi::fuzz::split_stream, seeds, "splitter", 3000, 2);
}

TEST_CASE("fuzz replay: handshake tool side on seeds, mutations and the kept corpus") {
  auto seeds = kvmi::fuzz::handshake_seeds();
  replay(kvmi::fuzz::handshake_bytes, seeds, "handshake", 5000, 3);
}

TEST_CASE("fuzz replay: HTTP request path on seeds, mutations and the kept corpus") {
  auto seeds = kvmi::fuzz::http_seeds();
  replay(kvmi::fuzz::http_request, seeds, "http_request", 2000, 4);
}

TEST_CASE("fuzz replay: JSON body routes on seeds, mutations and the kept corpus") {
  auto seeds = kvmi::fuzz::json_body_seeds();
  replay(kvmi::fuzz::json_body, seeds, "json_body", 3000, 5);
}

TEST_CASE("fuzz replay: v7 decode targets on seeds and mutations and the kept corpus") {
  auto seeds = kvmi::fuzz::v7::decode_seeds();
  REQUIRE(seeds.size() > 50);
  replay(kvmi::fuzz::v7::decode_one, seeds, "decode_v7", 20000, 6);
}

TEST_CASE("fuzz replay: v7 handshake on seeds and mutations and the kept corpus") {
  auto seeds = kvmi::fuzz::v7::handshake_seeds();
  replay(kvmi::fuzz::v7::handshake_bytes, seeds, "handshake_v7", 5000, 7);
}

TEST_CASE("fuzz replay: the API invariants reject what the API must never answer") {
  using kvmi::fuzz::check_answer;
  std::string ok = R"({"error": {"code": "bad_request", "message": "unknown field 'x'"}})";
  CHECK_NOTHROW(check_answer(400, "application/json", ok));
  CHECK_NOTHROW(check_answer(200, "text/plain", "metrics"));
  CHECK_THROWS_AS(check_answer(500, "application/json", ok), std::logic_error);
  CHECK_THROWS_AS(check_answer(400, "application/json", R"({"error": "x"})"), std::logic_error);
  CHECK_THROWS_AS(check_answer(200, "application/json", "[1"), std::logic_error);
  std::string echo = R"({"error": {"code": "bad_request", "message": ")"
                     + std::string(kvmi::fuzz::max_error_body, 'e') + "\"}}";
  CHECK_THROWS_AS(check_answer(400, "application/json", echo), std::logic_error);
  // A response stream cut short is not well formed.
  CHECK_FALSE(kvmid::test::split_answers("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}"));
}
