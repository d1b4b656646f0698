#include "daemon/base/options.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>

#include "config.h"
#include "daemon/base/log.h"

namespace xdisk {

std::string HostPort::ToString() const {
  bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

namespace {

bool ParseU64(std::string_view s, uint64_t* out, int base = 10) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out, base);
  return ec == std::errc() && p == s.data() + s.size();
}

Result<uint16_t> ParsePort(std::string_view s) {
  uint64_t v;
  if (!ParseU64(s, &v) || v == 0 || v > 65535)
    return Status::InvalidArgument("bad port '" + std::string(s) + "'");
  return static_cast<uint16_t>(v);
}

// "1073741824", "512M", "1G", "64k" (binary units).
bool ParseSize(std::string_view s, uint64_t* out) {
  if (s.empty()) return false;
  uint64_t mult = 1;
  switch (s.back()) {
    case 'k':
    case 'K':
      mult = 1ull << 10;
      break;
    case 'm':
    case 'M':
      mult = 1ull << 20;
      break;
    case 'g':
    case 'G':
      mult = 1ull << 30;
      break;
    case 't':
    case 'T':
      mult = 1ull << 40;
      break;
    default:
      break;
  }
  if (mult != 1) s.remove_suffix(1);
  uint64_t v;
  if (!ParseU64(s, &v) || v > UINT64_MAX / mult) return false;
  *out = v * mult;
  return true;
}

}  // namespace

SplitOption SplitLongOption(std::string_view arg) {
  SplitOption o{arg, {}, false};
  if (!arg.starts_with("--")) return o;
  size_t eq = arg.find('=');
  if (eq == std::string_view::npos) return o;
  return SplitOption{arg.substr(0, eq), arg.substr(eq + 1), true};
}

std::string DaemonOptions::JournalDir() const {
  if (journal_dir == "none") return "";
  if (!journal_dir.empty()) return journal_dir;
  return state_dir + "/journal";
}

Result<HostPort> ParseHostPort(std::string_view text) {
  HostPort hp;
  if (text.empty()) return Status::InvalidArgument("empty address");
  if (text[0] == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos || close == 1)
      return Status::InvalidArgument("bad IPv6 literal '" + std::string(text) + "'");
    hp.host = std::string(text.substr(1, close - 1));
    std::string_view rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest[0] != ':') return Status::InvalidArgument("bad address '" + std::string(text) + "'");
      auto port = ParsePort(rest.substr(1));
      if (!port.ok()) return port.status();
      hp.port = *port;
    }
    return hp;
  }
  size_t first = text.find(':');
  if (first != std::string_view::npos && text.find(':', first + 1) != std::string_view::npos) {
    hp.host = std::string(text);  // a bare IPv6 literal: no port
    return hp;
  }
  if (first == std::string_view::npos) {
    hp.host = std::string(text);
    return hp;
  }
  hp.host = std::string(text.substr(0, first));
  if (hp.host.empty())
    return Status::InvalidArgument("missing host in '" + std::string(text) + "'");
  auto port = ParsePort(text.substr(first + 1));
  if (!port.ok()) return port.status();
  hp.port = *port;
  return hp;
}

std::string UsageText() {
  return "Usage: xdisk-fuse [OPTIONS] [MOUNTPOINT]\n"
         "       xdisk-fuse keygen [--keys DIR]\n"
         "\n"
         "Exports local disks to dmsg peers and, given MOUNTPOINT, imports every\n"
         "remote disk it learns of into a FUSE tree (xaN, serno/, by-label/, by-uuid/).\n"
         "Runs in the foreground and logs to stderr.\n"
         "\n"
         "Links:\n"
         "  --listen ADDR[:PORT]     accept dmsg links on ADDR (repeatable; port 987)\n"
         "  --connect HOST[:PORT]    keep a dmsg link to HOST (repeatable; reconnects\n"
         "                           with backoff 0.1 s .. 5 s)\n"
         "  --keys DIR               peer policy directory (default /etc/xdisk-fuse):\n"
         "                           DIR/remote/ADDR.pub asks for an encrypted link\n"
         "                           (keys: DIR/rsa.prv, DIR/rsa.pub), else\n"
         "                           DIR/remote/ADDR.none allows a plaintext link\n"
         "  --ping-interval MS       PING after MS without sending (default 1000)\n"
         "  --link-timeout MS        drop a link after MS of silence (default 10000)\n"
         "  --no-relay               pass no spans or transactions between links\n"
         "                           (default: relay, as DragonFly's daemon does)\n"
         "\n"
         "Exports:\n"
         "  --export PATH[,serno=S][,label=L][,uuid=U][,ro][,blksize=N]\n"
         "                           serve a block device or file (repeatable)\n"
         "  --state-dir DIR          persistent identities (default /var/lib/xdisk-fuse)\n"
         "\n"
         "Import (with MOUNTPOINT):\n"
         "  -o OPT[,OPT...]          FUSE mount options (allow_other, ...)\n"
         "  --mode OCTAL             file mode of the disk files (default 0600)\n"
         "  --io-timeout SEC         fail blocked I/O with EIO after SEC (default 0:\n"
         "                           wait forever for the disk to return)\n"
         "  --journal DIR            journal of outstanding requests (default\n"
         "                           STATE-DIR/journal; 'none' turns it off)\n"
         "  --sync remote|journal    remote (default): writes complete when the\n"
         "                           remote has them; journal: when the local journal\n"
         "                           has them durably (write-back)\n"
         "  --journal-max SIZE       writes wait while the journal is this big\n"
         "                           (default 1G; k, M, G suffixes)\n"
         "  --journal-strict         refuse a journal with damage in the middle\n"
         "  --no-keeper              no keeper process: a crash of the daemon then\n"
         "                           ends the mount (default: the keeper holds the\n"
         "                           mount and starts the daemon again)\n"
         "  --journal-dump DIR       print the records of the journals in DIR, exit\n"
         "\n"
         "General:\n"
         "  --hostname NAME          name used in labels (default: gethostname)\n"
         "  --control PATH           control socket for xdiskctl (default\n"
         "                           /run/xdisk-fuse.sock; 'none' turns it off)\n"
         "  -v, --verbose            more logging (repeatable)\n"
         "  --log-level LEVEL        error, warning, info (default), debug, trace\n"
         "  --config FILE            read options from FILE first (default\n"
         "                           /etc/xdisk-fuse/xdisk-fuse.conf when present);\n"
         "                           the command line overrides it\n"
         "  --no-config              do not read the default configuration file\n"
         "  -h, --help               this text\n"
         "  -V, --version            print the version\n";
}

namespace {

// Applies argv[1..argc) to *opts and collects the positional arguments.
// ParseOptions runs it on the command line (twice, see there) and
// ApplyConfigEntries on the one or two tokens of each configuration line, so
// that a key means exactly what its option means. The checks that concern
// the whole configuration are left to ParseOptions.
Result<ParseOutcome> ParseArgs(int argc, const char* const* argv, DaemonOptions* opts,
                               std::string* out, std::vector<std::string_view>* positional_out) {
  std::vector<std::string_view>& positional = *positional_out;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    auto [name, value, has_inline] = SplitLongOption(arg);
    if (!arg.starts_with("--") && (arg == "-" || !arg.starts_with("-"))) {
      positional.push_back(arg);
      continue;
    }
    auto need_value = [&]() -> Result<std::string_view> {
      if (has_inline) return value;
      if (i + 1 >= argc) return Status::InvalidArgument(std::string(name) + ": missing value");
      return std::string_view(argv[++i]);
    };
    auto bad = [&](std::string_view v, const std::string& why) {
      return Status::InvalidArgument(std::string(name) + ": " + why + " '" + std::string(v) + "'");
    };
    auto no_value = [&]() -> Status {
      if (has_inline) return Status::InvalidArgument(std::string(name) + ": takes no value");
      return Status::Ok();
    };

    if (name == "-h" || name == "--help") {
      if (Status s = no_value(); !s.ok()) return s;
      *out = UsageText();
      return ParseOutcome::kExitOk;
    }
    if (name == "-V" || name == "--version") {
      if (Status s = no_value(); !s.ok()) return s;
      *out = std::string("xdisk-fuse ") + XDISK_VERSION + "\n";
      return ParseOutcome::kExitOk;
    }
    if (name == "-v" || name == "--verbose") {
      if (Status s = no_value(); !s.ok()) return s;
      opts->verbosity = std::min(opts->verbosity + 1, 4);
      continue;
    }
    if (name == "--journal-strict") {
      if (Status st = no_value(); !st.ok()) return st;
      opts->journal_strict = true;
      continue;
    }
    if (name == "--no-relay") {
      if (Status st = no_value(); !st.ok()) return st;
      opts->no_relay = true;
      continue;
    }
    if (name == "--no-keeper") {
      if (Status st = no_value(); !st.ok()) return st;
      opts->no_keeper = true;
      continue;
    }
    if (name == "--no-config") {
      if (Status st = no_value(); !st.ok()) return st;
      opts->no_config = true;
      continue;
    }
    if (name == "--config") {
      auto v = need_value();
      if (!v.ok()) return v.status();
      if (v->empty()) return bad(*v, "empty file name");
      opts->config_file = std::string(*v);
      continue;
    }
    if (name == "--") {
      for (++i; i < argc; ++i) positional.push_back(argv[i]);
      break;
    }
    static constexpr std::string_view kWithValue[] = {
        "--listen",       "--connect",    "--keys",
        "--export",       "--state-dir",  "-o",
        "--mode",         "--io-timeout", "--ping-interval",
        "--link-timeout", "--log-level",  "--hostname",
        "--journal",      "--sync",       "--journal-max",
        "--journal-dump", "--control"};
    if (std::find(std::begin(kWithValue), std::end(kWithValue), name) == std::end(kWithValue))
      return Status::InvalidArgument("unknown option '" + std::string(name) + "'");
    auto v = need_value();
    if (!v.ok()) return v.status();
    std::string_view val = *v;
    if (name == "--listen" || name == "--connect") {
      auto hp = ParseHostPort(val);
      if (!hp.ok())
        return Status::InvalidArgument(std::string(name) + ": " + hp.status().message());
      (name == "--listen" ? opts->listen : opts->connect).push_back(*hp);
    } else if (name == "--keys") {
      if (val.empty()) return bad(val, "empty directory");
      opts->keys_dir = std::string(val);
    } else if (name == "--export") {
      if (val.empty()) return bad(val, "empty export");
      opts->exports.emplace_back(val);
    } else if (name == "--state-dir") {
      if (val.empty()) return bad(val, "empty directory");
      opts->state_dir = std::string(val);
    } else if (name == "-o") {
      size_t start = 0;
      std::string s(val);
      while (start <= s.size()) {
        size_t comma = s.find(',', start);
        std::string one =
            s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        if (!one.empty()) opts->fuse_options.push_back(one);
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
    } else if (name == "--mode") {
      uint64_t m;
      if (!ParseU64(val, &m, 8) || m > 07777) return bad(val, "bad octal mode");
      opts->file_mode = static_cast<uint32_t>(m);
    } else if (name == "--io-timeout") {
      uint64_t t;
      if (!ParseU64(val, &t) || t > 86400 * 365) return bad(val, "bad number of seconds");
      opts->io_timeout_s = t;
    } else if (name == "--ping-interval") {
      uint64_t t;
      if (!ParseU64(val, &t) || t < 10 || t > 3600000) return bad(val, "bad milliseconds");
      opts->ping_interval_ms = t;
    } else if (name == "--link-timeout") {
      uint64_t t;
      if (!ParseU64(val, &t) || t < 100 || t > 3600000) return bad(val, "bad milliseconds");
      opts->link_timeout_ms = t;
    } else if (name == "--log-level") {
      LogLevel level;
      if (!ParseLogLevel(val, &level)) return bad(val, "unknown level");
      opts->verbosity = static_cast<int>(level);
    } else if (name == "--hostname") {
      if (val.empty() || val.size() > 63 || val.find('/') != std::string_view::npos)
        return bad(val, "bad host name");
      opts->hostname = std::string(val);
    } else if (name == "--journal") {
      if (val.empty()) return bad(val, "empty directory");
      opts->journal_dir = std::string(val);
    } else if (name == "--sync") {
      if (val == "remote") {
        opts->sync = SyncMode::kRemote;
      } else if (val == "journal") {
        opts->sync = SyncMode::kJournal;
      } else {
        return bad(val, "expected remote or journal, got");
      }
    } else if (name == "--journal-max") {
      uint64_t m;
      if (!ParseSize(val, &m) || m < (4ull << 20)) return bad(val, "bad size (at least 4M)");
      opts->journal_max = m;
    } else if (name == "--journal-dump") {
      if (val.empty()) return bad(val, "empty directory");
      opts->journal_dump = std::string(val);
    } else if (name == "--control") {
      if (val.empty()) return bad(val, "empty path");
      opts->control_path = std::string(val);
    } else {
      return Status::InvalidArgument("unknown option '" + std::string(name) + "'");
    }
  }
  return ParseOutcome::kRun;
}

// Reads a whole configuration file. A missing file is kNotFound, so that
// ParseOptions can skip a missing default file.
Result<std::string> ReadConfigFile(const std::string& path) {
  FILE* f = fopen(path.c_str(), "re");
  if (f == nullptr) {
    int err = errno;
    std::string msg = "--config: cannot read '" + path + "': " + strerror(err);
    if (err == ENOENT) return Status::NotFound(msg);
    return Status::InvalidArgument(msg);
  }
  std::string text;
  char buf[4096];
  size_t n;
  // A configuration file is a few lines; a huge one is a mistake (a disk
  // image given as --config), not something to load into memory.
  constexpr size_t kMaxConfigBytes = 1 << 20;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0 && text.size() <= kMaxConfigBytes)
    text.append(buf, n);
  int err = ferror(f) ? errno : 0;
  fclose(f);
  if (err != 0)
    return Status::InvalidArgument("--config: cannot read '" + path + "': " + strerror(err));
  if (text.size() > kMaxConfigBytes)
    return Status::InvalidArgument("--config: '" + path + "' is larger than 1 MiB");
  return text;
}

}  // namespace

Result<std::vector<ConfigEntry>> ParseConfigText(std::string_view text,
                                                 std::string_view file_name) {
  std::vector<ConfigEntry> entries;
  auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\r'; };
  int line_no = 0;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    ++line_no;
    // A comment starts at a '#' that begins the line or follows whitespace,
    // so that values such as "label=a#b" keep their '#'.
    for (size_t i = 0; i < line.size(); ++i) {
      if (line[i] == '#' && (i == 0 || is_space(line[i - 1]))) {
        line = line.substr(0, i);
        break;
      }
    }
    while (!line.empty() && is_space(line.front())) line.remove_prefix(1);
    while (!line.empty() && is_space(line.back())) line.remove_suffix(1);
    if (line.empty()) continue;
    auto where = [&] { return std::string(file_name) + ":" + std::to_string(line_no) + ": "; };
    size_t key_end = 0;
    while (key_end < line.size() && !is_space(line[key_end]) && line[key_end] != '=') ++key_end;
    std::string_view key = line.substr(0, key_end);
    if (key.empty()) return Status::InvalidArgument(where() + "missing key before '='");
    bool key_ok = std::all_of(key.begin(), key.end(), [](char c) {
      return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
    });
    if (!key_ok || key.front() == '-') {
      std::string hint = key.front() == '-' ? " (keys are written without leading dashes)" : "";
      return Status::InvalidArgument(where() + "bad key '" + std::string(key) + "'" + hint);
    }
    ConfigEntry e;
    e.line = line_no;
    e.key = std::string(key);
    std::string_view rest = line.substr(key_end);
    while (!rest.empty() && is_space(rest.front())) rest.remove_prefix(1);
    if (!rest.empty() && rest.front() == '=') {
      // "key =" sets an empty value, which the option then rejects by name.
      rest.remove_prefix(1);
      while (!rest.empty() && is_space(rest.front())) rest.remove_prefix(1);
      e.value = std::string(rest);
    } else if (!rest.empty()) {
      e.value = std::string(rest);
    }
    entries.push_back(std::move(e));
  }
  return entries;
}

Status ApplyConfigEntries(const std::vector<ConfigEntry>& entries, std::string_view file_name,
                          DaemonOptions* opts) {
  // Keys that select what the command line does rather than configure the
  // daemon; in a file they could only loop (config) or surprise (journal-dump).
  static constexpr std::string_view kNotKeys[] = {"help", "version", "config", "no-config",
                                                  "journal-dump"};
  for (const ConfigEntry& e : entries) {
    std::string where = std::string(file_name) + ":" + std::to_string(e.line) + ": ";
    if (std::find(std::begin(kNotKeys), std::end(kNotKeys), e.key) != std::end(kNotKeys))
      return Status::InvalidArgument(where + "'" + e.key +
                                     "' is a command-line option, not a configuration key");
    if (e.key == "mountpoint") {
      if (!e.value || e.value->empty())
        return Status::InvalidArgument(where + "mountpoint: missing value");
      opts->mountpoint = *e.value;
      continue;
    }
    // The entry becomes the option it names, parsed by the command-line
    // code: "--key=value" keeps a value that starts with '-' a value.
    std::string option = e.key == "option" ? "-o" : "--" + e.key;
    std::vector<std::string> tokens = {"xdisk-fuse"};
    if (e.key == "option") {
      tokens.push_back(option);
      if (e.value) tokens.push_back(*e.value);
    } else {
      tokens.push_back(e.value ? option + "=" + *e.value : option);
    }
    std::vector<const char*> argv;
    for (const std::string& t : tokens) argv.push_back(t.c_str());
    std::vector<std::string_view> positional;
    std::string ignored;
    auto r = ParseArgs(static_cast<int>(argv.size()), argv.data(), opts, &ignored, &positional);
    if (r.ok()) continue;
    const std::string& msg = r.status().message();
    if (msg.starts_with("unknown option"))
      return Status::InvalidArgument(where + "unknown key '" + e.key + "'");
    // "--listen: bad port 'x'" reads "listen: bad port 'x'" in a file.
    if (msg.starts_with(option + ":"))
      return Status::InvalidArgument(where + e.key + msg.substr(option.size()));
    return Status::InvalidArgument(where + msg);
  }
  return Status::Ok();
}

Result<ParseOutcome> ParseOptions(int argc, const char* const* argv, DaemonOptions* opts,
                                  std::string* out) {
  // First the command line alone, into a scratch copy: it answers --help and
  // --version without touching any file, reports command-line errors as
  // such, and tells which file to read and which lists it replaces.
  DaemonOptions cli = *opts;
  std::vector<std::string_view> positional;
  auto first = ParseArgs(argc, argv, &cli, out, &positional);
  if (!first.ok() || *first == ParseOutcome::kExitOk) return first;
  if (cli.no_config && !cli.config_file.empty())
    return Status::InvalidArgument("--config and --no-config exclude each other");
  bool explicit_file = !cli.config_file.empty();
  std::string path = explicit_file ? cli.config_file : cli.no_config ? "" : kDefaultConfigFile;
  Result<std::string> text = std::string();
  if (!path.empty()) text = ReadConfigFile(path);
  if (!text.ok() && !explicit_file && text.status().kind() == Status::Kind::kNotFound) {
    path.clear();  // the default file is optional
  } else if (!text.ok()) {
    return text.status();
  }
  if (!path.empty()) {
    auto entries = ParseConfigText(*text, path);
    if (!entries.ok()) return entries.status();
    size_t n_listen = opts->listen.size(), n_connect = opts->connect.size();
    size_t n_exports = opts->exports.size(), n_fuse = opts->fuse_options.size();
    if (Status st = ApplyConfigEntries(*entries, path, opts); !st.ok()) return st;
    // Lists the command line gives replace the file's (see options.h).
    if (cli.listen.size() > n_listen) opts->listen.resize(n_listen);
    if (cli.connect.size() > n_connect) opts->connect.resize(n_connect);
    if (cli.exports.size() > n_exports) opts->exports.resize(n_exports);
    if (cli.fuse_options.size() > n_fuse) opts->fuse_options.resize(n_fuse);
  }
  // Then the command line again, on top of the file. It succeeded above on
  // the same tokens, and options do not depend on each other while parsing.
  positional.clear();
  auto second = ParseArgs(argc, argv, opts, out, &positional);
  if (!second.ok()) return second;
  opts->config_file = path;
  if (!opts->journal_dump.empty()) return ParseOutcome::kRun;
  if (opts->sync == SyncMode::kJournal && opts->journal_dir == "none")
    return Status::InvalidArgument("--sync: journal needs a journal (--journal is 'none')");
  if (positional.size() > 1)
    return Status::InvalidArgument("too many arguments: '" + std::string(positional[1]) +
                                   "' (one MOUNTPOINT at most)");
  if (positional.size() == 1) opts->mountpoint = std::string(positional[0]);
  if (opts->listen.empty() && opts->connect.empty() && opts->mountpoint.empty() &&
      opts->exports.empty())
    return Status::InvalidArgument(
        "nothing to do: give MOUNTPOINT, --listen, --connect or --export");
  return ParseOutcome::kRun;
}

}  // namespace xdisk
