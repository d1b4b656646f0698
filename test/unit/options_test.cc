// Command-line parsing: every error names the option.
#include "daemon/options.h"

#include <catch2/catch.hpp>
#include <vector>

using namespace xdisk;

namespace {
Result<ParseOutcome> Parse(std::vector<const char*> args, DaemonOptions* o, std::string* out) {
  args.insert(args.begin(), "xdisk-fuse");
  return ParseOptions(static_cast<int>(args.size()), args.data(), o, out);
}
std::string Error(std::vector<const char*> args) {
  DaemonOptions o;
  std::string out;
  auto r = Parse(args, &o, &out);
  return r.ok() ? "" : r.status().message();
}
}  // namespace

TEST_CASE("host:port parsing covers IPv4, IPv6 and names", "[options]") {
  auto a = ParseHostPort("127.0.0.1:1234");
  REQUIRE(a.ok());
  CHECK(a->host == "127.0.0.1");
  CHECK(a->port == 1234);
  auto b = ParseHostPort("[::1]:99");
  REQUIRE(b.ok());
  CHECK(b->host == "::1");
  CHECK(b->port == 99);
  auto c = ParseHostPort("::1");
  REQUIRE(c.ok());
  CHECK(c->host == "::1");
  CHECK(c->port == 987);
  auto d = ParseHostPort("dfly.example");
  REQUIRE(d.ok());
  CHECK(d->port == 987);
  CHECK(ParseHostPort("[::1]").value().port == 987);
  CHECK_FALSE(ParseHostPort("").ok());
  CHECK_FALSE(ParseHostPort("h:0").ok());
  CHECK_FALSE(ParseHostPort("h:65536").ok());
  CHECK_FALSE(ParseHostPort("h:x").ok());
  CHECK_FALSE(ParseHostPort(":5").ok());
  CHECK_FALSE(ParseHostPort("[::1").ok());
  CHECK(b->ToString() == "[::1]:99");
}

TEST_CASE("options parse into DaemonOptions", "[options]") {
  DaemonOptions o;
  std::string out;
  auto r = Parse({"--listen", "0.0.0.0", "--connect=h:5", "--keys", "/k", "--export", "/img,ro",
                  "-o", "allow_other,ro", "--io-timeout", "30", "-v", "/mnt"},
                 &o, &out);
  REQUIRE(r.ok());
  CHECK(*r == ParseOutcome::kRun);
  REQUIRE(o.listen.size() == 1);
  CHECK(o.listen[0].port == 987);
  CHECK(o.connect[0].port == 5);
  CHECK(o.keys_dir == "/k");
  CHECK(o.exports == std::vector<std::string>{"/img,ro"});
  CHECK(o.fuse_options == std::vector<std::string>{"allow_other", "ro"});
  CHECK(o.io_timeout_s == 30);
  CHECK(o.verbosity == 3);
  CHECK(o.mountpoint == "/mnt");
}

TEST_CASE("--help and --version ask to exit 0", "[options]") {
  DaemonOptions o;
  std::string out;
  auto r = Parse({"--help"}, &o, &out);
  REQUIRE(r.ok());
  CHECK(*r == ParseOutcome::kExitOk);
  CHECK_THAT(out, Catch::Contains("--listen"));
  r = Parse({"--version"}, &o, &out);
  REQUIRE(r.ok());
  CHECK_THAT(out, Catch::StartsWith("xdisk-fuse "));
}

TEST_CASE("bad options produce errors that name the option", "[options]") {
  CHECK_THAT(Error({"--bogus"}), Catch::Contains("--bogus"));
  CHECK_THAT(Error({"-x"}), Catch::Contains("-x"));
  CHECK_THAT(Error({"--listen"}), Catch::Contains("--listen: missing value"));
  CHECK_THAT(Error({"--listen", "1.2.3.4:0"}), Catch::Contains("--listen"));
  CHECK_THAT(Error({"--connect", "h:70000"}), Catch::Contains("--connect"));
  CHECK_THAT(Error({"--io-timeout", "-1", "/m"}), Catch::Contains("--io-timeout"));
  CHECK_THAT(Error({"--mode", "999", "/m"}), Catch::Contains("--mode"));
  CHECK_THAT(Error({"--log-level", "loud", "/m"}), Catch::Contains("--log-level"));
  CHECK_THAT(Error({"--help=3"}), Catch::Contains("--help"));
  CHECK_THAT(Error({"/a", "/b"}), Catch::Contains("too many arguments"));
  CHECK_THAT(Error({}), Catch::Contains("nothing to do"));
  CHECK_THAT(Error({"--keys", "", "/m"}), Catch::Contains("--keys"));
}
