#include "server/control/auth.hpp"
#include "tests/support/temp_dir.hpp"

#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <sys/stat.h>

using namespace kvmid::control;
namespace fs = std::filesystem;

using kvmid::test::temp_dir;

TEST_SUITE("control") {

TEST_CASE("auth: token file is read and trimmed") {
  temp_dir d("auth");
  auto a = token_auth::from_file(d.write("tok", "  s3cret-token\n").string());
  CHECK(a.check("Bearer s3cret-token"));
  CHECK(a.check("bearer s3cret-token"));
  CHECK(a.check("BEARER s3cret-token  "));
  CHECK_FALSE(a.check(std::nullopt));
  CHECK_FALSE(a.check(""));
  CHECK_FALSE(a.check("Bearer"));
  CHECK_FALSE(a.check("Bearer "));
  CHECK_FALSE(a.check("Bearer s3cret-toke"));
  CHECK_FALSE(a.check("Bearer s3cret-token2"));
  CHECK_FALSE(a.check("Bearer S3CRET-TOKEN"));
  CHECK_FALSE(a.check("Basic czNjcmV0LXRva2Vu"));
  CHECK_FALSE(a.check("s3cret-token"));
  CHECK_FALSE(a.check("Bearers3cret-token"));
}

TEST_CASE("auth: bad token files are refused with the file's name") {
  temp_dir d("auth");
  auto expect_throw = [](const std::string& path) {
    try {
      token_auth::from_file(path);
      FAIL("no exception for " << path);
    } catch (const std::runtime_error& e) {
      CHECK(std::string(e.what()).find(path) != std::string::npos);
    }
  };
  expect_throw((d.path() / "missing").string());
  expect_throw(d.write("empty", "\n  \n").string());
  expect_throw(d.write("two-words", "abc def\n").string());
  expect_throw(d.write("group-writable", "abc\n", 0620).string());
  expect_throw(d.write("world-writable", "abc\n", 0602).string());
  expect_throw(d.path().string()); // a directory
  CHECK_THROWS_AS(token_auth(""), std::runtime_error);
}

TEST_CASE("auth: a token file group or others may read is refused with its mode and the fix") {
  temp_dir d;
  for (mode_t m : {0644, 0640, 0604}) {
    CAPTURE(m);
    auto path = d.write("token", "s3cret-token\n", m).string();
    try {
      token_auth::from_file(path);
      FAIL("accepted a token file of mode " << m);
    } catch (const std::runtime_error& e) {
      char mode[8];
      std::snprintf(mode, sizeof mode, "%04o", unsigned(m));
      std::string what = e.what();
      CHECK(what.find(path + ": mode " + mode) != std::string::npos);
      CHECK(what.find("chmod 600 " + path) != std::string::npos);
    }
  }
  CHECK(token_auth::from_file(d.write("token", "s3cret-token\n", 0400).string())
          .check("Bearer s3cret-token"));
}

}
