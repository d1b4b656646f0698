// Command-line and configuration-file parsing: every error names the
// option, or the file and line.
#include "daemon/base/options.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <string>
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

// ---- Configuration file ------------------------------------------------------

namespace {
// A configuration file in $TMPDIR, removed at the end of the test.
class TempConfig {
 public:
  explicit TempConfig(const std::string& text) {
    const char* dir = getenv("TMPDIR");
    path_ = std::string(dir && *dir ? dir : "/tmp") + "/xdisk-options-test.XXXXXX";
    int fd = mkstemp(path_.data());
    REQUIRE(fd >= 0);
    REQUIRE(write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
    close(fd);
  }
  ~TempConfig() { unlink(path_.c_str()); }
  const char* path() const { return path_.c_str(); }

 private:
  std::string path_;
};

std::string ConfigError(std::string_view text) {
  auto entries = ParseConfigText(text, "xdisk-fuse.conf");
  if (!entries.ok()) return entries.status().message();
  DaemonOptions o;
  Status st = ApplyConfigEntries(*entries, "xdisk-fuse.conf", &o);
  return st.ok() ? "" : st.message();
}
}  // namespace

TEST_CASE("config text: key = value, key value, bare flags, comments, blanks", "[options]") {
  auto r = ParseConfigText(
      "# a comment line\n"
      "\n"
      "   \t\n"
      "listen = 127.0.0.1:9000\n"
      "connect  host.example:5   # trailing comment\n"
      "export=/img,label=a#b\n"
      "journal-strict\n"
      "  hostname   spaced  \r\n"
      "sync =\n",
      "f.conf");
  REQUIRE(r.ok());
  const auto& e = *r;
  REQUIRE(e.size() == 6);
  CHECK(e[0].line == 4);
  CHECK(e[0].key == "listen");
  CHECK(e[0].value == "127.0.0.1:9000");
  CHECK(e[1].key == "connect");
  CHECK(e[1].value == "host.example:5");
  CHECK(e[2].key == "export");
  CHECK(e[2].value == "/img,label=a#b");  // '#' not after whitespace is kept
  CHECK(e[3].key == "journal-strict");
  CHECK_FALSE(e[3].value.has_value());
  CHECK(e[4].line == 8);
  CHECK(e[4].value == "spaced");
  CHECK(e[5].key == "sync");
  CHECK(e[5].value == "");  // "key =" is an empty value, not a flag
}

TEST_CASE("config text: a last line without a newline counts", "[options]") {
  auto r = ParseConfigText("listen 1.2.3.4\nkeys /k", "f");
  REQUIRE(r.ok());
  REQUIRE(r->size() == 2);
  CHECK((*r)[1].line == 2);
  CHECK((*r)[1].value == "/k");
}

TEST_CASE("config text: syntax errors name the file and line", "[options]") {
  CHECK(ConfigError("listen 1.2.3.4\n\n--listen 1.2.3.4\n") ==
        "xdisk-fuse.conf:3: bad key '--listen' (keys are written without leading dashes)");
  CHECK_THAT(ConfigError("[section]\n"), Catch::StartsWith("xdisk-fuse.conf:1: bad key"));
  CHECK_THAT(ConfigError("# c\n= 5\n"), Catch::StartsWith("xdisk-fuse.conf:2: missing key"));
  CHECK_THAT(ConfigError("Listen 1.2.3.4\n"), Catch::StartsWith("xdisk-fuse.conf:1: bad key"));
}

TEST_CASE("config keys mean their long options", "[options]") {
  auto entries = ParseConfigText(
      "listen 0.0.0.0\nlisten [::1]:99\nconnect h:5\nkeys /k\nexport /img,ro\nexport /dev/sdb\n"
      "state-dir /s\noption allow_other,ro\noption default_permissions\nmode 0640\n"
      "io-timeout 30\nping-interval 500\nlink-timeout 2000\nlog-level debug\nverbose\n"
      "hostname h1\njournal /j\nsync journal\njournal-max 64M\njournal-strict\n"
      "mountpoint /mnt/x\n",
      "f");
  REQUIRE(entries.ok());
  DaemonOptions o;
  REQUIRE(ApplyConfigEntries(*entries, "f", &o).ok());
  REQUIRE(o.listen.size() == 2);
  CHECK(o.listen[1].ToString() == "[::1]:99");
  CHECK(o.connect[0].port == 5);
  CHECK(o.keys_dir == "/k");
  CHECK(o.exports == std::vector<std::string>{"/img,ro", "/dev/sdb"});
  CHECK(o.state_dir == "/s");
  CHECK(o.fuse_options == std::vector<std::string>{"allow_other", "ro", "default_permissions"});
  CHECK(o.file_mode == 0640);
  CHECK(o.io_timeout_s == 30);
  CHECK(o.ping_interval_ms == 500);
  CHECK(o.link_timeout_ms == 2000);
  CHECK(o.verbosity == 4);  // debug, then one more for `verbose`
  CHECK(o.hostname == "h1");
  CHECK(o.journal_dir == "/j");
  CHECK(o.sync == SyncMode::kJournal);
  CHECK(o.journal_max == (64ull << 20));
  CHECK(o.journal_strict);
  CHECK(o.mountpoint == "/mnt/x");
}

TEST_CASE("config: unknown keys and bad values name the line", "[options]") {
  CHECK(ConfigError("listen 1.2.3.4\n# x\n\nkeys /k\n\n\nlisen 1.2.3.4\n") ==
        "xdisk-fuse.conf:7: unknown key 'lisen'");
  CHECK(ConfigError("listen 1.2.3.4:x\n") == "xdisk-fuse.conf:1: listen: bad port 'x'");
  CHECK(ConfigError("\nmode 999\n") == "xdisk-fuse.conf:2: mode: bad octal mode '999'");
  CHECK(ConfigError("journal-max 1k\n") ==
        "xdisk-fuse.conf:1: journal-max: bad size (at least 4M) '1k'");
  CHECK(ConfigError("listen\n") == "xdisk-fuse.conf:1: listen: missing value");
  CHECK(ConfigError("listen =\n") == "xdisk-fuse.conf:1: listen: empty address");
  CHECK(ConfigError("journal-strict yes\n") == "xdisk-fuse.conf:1: journal-strict: takes no value");
  CHECK(ConfigError("option\n") == "xdisk-fuse.conf:1: option: missing value");
  CHECK(ConfigError("mountpoint\n") == "xdisk-fuse.conf:1: mountpoint: missing value");
  CHECK(ConfigError("v\n") == "xdisk-fuse.conf:1: unknown key 'v'");
  CHECK(ConfigError("o allow_other\n") == "xdisk-fuse.conf:1: unknown key 'o'");
  for (const char* key : {"help", "version", "config /x", "no-config", "journal-dump /d"}) {
    CHECK_THAT(
        ConfigError(std::string("\n") + key + "\n"),
        Catch::StartsWith("xdisk-fuse.conf:2: '") && Catch::Contains("not a configuration key"));
  }
}

TEST_CASE("--config: the file is read and the command line overrides it", "[options]") {
  TempConfig conf(
      "listen 127.0.0.1:9001\nlisten 127.0.0.1:9002\nconnect a:1\nexport /img\n"
      "option allow_other\nio-timeout 30\nkeys /from-file\nlog-level warning\nmountpoint /m1\n");
  SECTION("the file alone") {
    DaemonOptions o;
    std::string out;
    auto r = Parse({"--config", conf.path()}, &o, &out);
    REQUIRE(r.ok());
    CHECK(o.config_file == conf.path());
    CHECK(o.listen.size() == 2);
    CHECK(o.connect.size() == 1);
    CHECK(o.exports.size() == 1);
    CHECK(o.io_timeout_s == 30);
    CHECK(o.keys_dir == "/from-file");
    CHECK(o.verbosity == 1);
    CHECK(o.mountpoint == "/m1");
  }
  SECTION("single values: the command line wins, wherever it stands") {
    DaemonOptions o;
    std::string out;
    auto r =
        Parse({"--io-timeout", "5", "--keys", "/from-cli", "-v", "/m2", "--config", conf.path()},
              &o, &out);
    REQUIRE(r.ok());
    CHECK(o.io_timeout_s == 5);
    CHECK(o.keys_dir == "/from-cli");
    CHECK(o.verbosity == 2);  // warning from the file, -v on top
    CHECK(o.mountpoint == "/m2");
    CHECK(o.listen.size() == 2);  // lists the command line does not give stay
  }
  SECTION("lists: any command-line occurrence replaces the file's list") {
    DaemonOptions o;
    std::string out;
    auto r = Parse({"--config", conf.path(), "--listen", "127.0.0.1:9100", "--export", "/x",
                    "--export", "/y", "-o", "ro"},
                   &o, &out);
    REQUIRE(r.ok());
    REQUIRE(o.listen.size() == 1);
    CHECK(o.listen[0].port == 9100);
    CHECK(o.exports == std::vector<std::string>{"/x", "/y"});
    CHECK(o.fuse_options == std::vector<std::string>{"ro"});
    REQUIRE(o.connect.size() == 1);  // not given on the command line
    CHECK(o.connect[0].host == "a");
  }
  SECTION("parsing twice (SIGHUP) gives the same result") {
    DaemonOptions a, b;
    std::string out;
    REQUIRE(Parse({"--config", conf.path(), "--connect", "b:2"}, &a, &out).ok());
    REQUIRE(Parse({"--config", conf.path(), "--connect", "b:2"}, &b, &out).ok());
    CHECK(a.connect.size() == 1);
    CHECK(b.connect.size() == 1);
    CHECK(a.listen.size() == b.listen.size());
  }
}

TEST_CASE("--config errors: missing file, bad line, conflicts", "[options]") {
  CHECK_THAT(Error({"--config", "/nonexistent/xdisk.conf", "/m"}),
             Catch::Contains("--config") && Catch::Contains("/nonexistent/xdisk.conf") &&
                 Catch::Contains("No such file"));
  CHECK_THAT(Error({"--config", "", "/m"}), Catch::Contains("--config"));
  CHECK_THAT(Error({"--config", "/", "/m"}), Catch::Contains("--config: cannot read '/'"));
  CHECK_THAT(Error({"--config"}), Catch::Contains("--config: missing value"));
  CHECK_THAT(Error({"--no-config=1"}), Catch::Contains("--no-config: takes no value"));
  TempConfig bad("listen 127.0.0.1\n\nlisen 127.0.0.1\n");
  CHECK(Error({"--config", bad.path()}) == std::string(bad.path()) + ":3: unknown key 'lisen'");
  CHECK_THAT(Error({"--config", bad.path(), "--no-config"}),
             Catch::Contains("--config and --no-config"));
  // The command line is checked before the file is read: its errors win.
  CHECK_THAT(Error({"--config", bad.path(), "--bogus"}), Catch::Contains("--bogus"));
  // An empty file is fine, and then there is nothing to do.
  TempConfig empty("# nothing\n");
  CHECK_THAT(Error({"--config", empty.path()}), Catch::Contains("nothing to do"));
}

TEST_CASE("--help and --version do not read the configuration file", "[options]") {
  DaemonOptions o;
  std::string out;
  auto r = Parse({"--config", "/nonexistent/xdisk.conf", "--help"}, &o, &out);
  REQUIRE(r.ok());
  CHECK(*r == ParseOutcome::kExitOk);
  CHECK_THAT(out, Catch::Contains("--config FILE") && Catch::Contains("--no-config"));
}

TEST_CASE("--no-config skips the default file", "[options]") {
  DaemonOptions o;
  std::string out;
  auto r = Parse({"--no-config", "--listen", "127.0.0.1"}, &o, &out);
  REQUIRE(r.ok());
  CHECK(o.config_file.empty());
  CHECK(o.no_config);
}

TEST_CASE("journal options: values, defaults and bad input", "[options]") {
  DaemonOptions o;
  std::string out;
  REQUIRE(Parse({"--state-dir", "/s", "/mnt"}, &o, &out).ok());
  CHECK(o.sync == SyncMode::kRemote);
  CHECK(o.JournalDir() == "/s/journal");
  CHECK(o.journal_max == (1ull << 30));
  CHECK_FALSE(o.journal_strict);

  DaemonOptions w;
  REQUIRE(Parse({"--sync=journal", "--journal", "/j", "--journal-max", "1G", "--journal-strict",
                 "/mnt"},
                &w, &out)
              .ok());
  CHECK(w.sync == SyncMode::kJournal);
  CHECK(w.JournalDir() == "/j");
  CHECK(w.journal_max == (1ull << 30));
  CHECK(w.journal_strict);

  DaemonOptions n;
  REQUIRE(Parse({"--journal", "none", "/mnt"}, &n, &out).ok());
  CHECK(n.JournalDir().empty());

  // --journal-dump needs nothing else to do.
  DaemonOptions d;
  REQUIRE(Parse({"--journal-dump", "/var/lib/xdisk-fuse/journal"}, &d, &out).ok());
  CHECK(d.journal_dump == "/var/lib/xdisk-fuse/journal");

  CHECK(Error({"--sync", "fast", "/mnt"}) == "--sync: expected remote or journal, got 'fast'");
  CHECK(Error({"--journal-max", "1M", "/mnt"}) == "--journal-max: bad size (at least 4M) '1M'");
  CHECK(Error({"--journal-max", "12X", "/mnt"}) == "--journal-max: bad size (at least 4M) '12X'");
  CHECK(Error({"--journal-max", "99999999999T", "/mnt"}) ==
        "--journal-max: bad size (at least 4M) '99999999999T'");
  CHECK(Error({"--journal", "", "/mnt"}) == "--journal: empty directory ''");
  CHECK(Error({"--journal-strict=yes", "/mnt"}) == "--journal-strict: takes no value");
  CHECK(Error({"--sync=journal", "--journal", "none", "/mnt"}) ==
        "--sync: journal needs a journal (--journal is 'none')");
}
