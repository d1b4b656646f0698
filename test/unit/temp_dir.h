// TempDir: a directory under /tmp for one test, removed with everything in
// it at the end.
#pragma once

#include <stdlib.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <string>

namespace xdisk::testing {

class TempDir {
 public:
  explicit TempDir(const char* prefix = "xdisk_test") {
    std::string tmpl = std::string("/tmp/") + prefix + ".XXXXXX";
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace xdisk::testing
