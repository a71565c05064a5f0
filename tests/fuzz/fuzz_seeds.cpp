// Writes the seed corpora for the fuzzers (valid frames made by encode(),
// authorised requests for every API route): fuzz_seeds DIR creates
// DIR/<target> afresh for each target.
#include "tests/fuzz/api_targets.hpp"
#include "tests/fuzz/fuzz_targets.hpp"
#include "tests/fuzz/v7_targets.hpp"

#include <filesystem>
#include <fstream>
#include <iostream>

namespace fs = std::filesystem;

static void write_all(const fs::path& dir, const std::vector<std::vector<uint8_t>>& seeds) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  int i = 0;
  for (auto& s : seeds) {
    std::ofstream out(dir / ("seed-" + std::to_string(i++)), std::ios::binary);
    out.write(reinterpret_cast<const char*>(s.data()), static_cast<std::streamsize>(s.size()));
  }
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: fuzz_seeds DIR\n";
    return 2;
  }
  fs::path dir = argv[1];
  write_all(dir / "decode", kvmi::fuzz::decode_seeds());
  write_all(dir / "splitter", kvmi::fuzz::splitter_seeds());
  write_all(dir / "handshake", kvmi::fuzz::handshake_seeds());
  write_all(dir / "http_request", kvmi::fuzz::http_seeds());
  write_all(dir / "json_body", kvmi::fuzz::json_body_seeds());
  write_all(dir / "decode_v7", kvmi::fuzz::v7::decode_seeds());
  write_all(dir / "handshake_v7", kvmi::fuzz::v7::handshake_seeds());
  return 0;
}
