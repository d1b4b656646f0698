#include "daemon/options.h"

#include <algorithm>
#include <charconv>
#include <cstring>

#include "config.h"
#include "daemon/log.h"

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
    case 'k': case 'K': mult = 1ull << 10; break;
    case 'm': case 'M': mult = 1ull << 20; break;
    case 'g': case 'G': mult = 1ull << 30; break;
    case 't': case 'T': mult = 1ull << 40; break;
    default: break;
  }
  if (mult != 1) s.remove_suffix(1);
  uint64_t v;
  if (!ParseU64(s, &v) || v > UINT64_MAX / mult) return false;
  *out = v * mult;
  return true;
}

}  // namespace

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
         "                           DIR/remote/ADDR.none allows a plaintext link\n"
         "  --ping-interval MS       PING after MS of silence (default 1000)\n"
         "  --link-timeout MS        drop a link after MS of silence (default 10000)\n"
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
         "  --journal-dump DIR       print the records of the journals in DIR, exit\n"
         "\n"
         "General:\n"
         "  --hostname NAME          name used in labels (default: gethostname)\n"
         "  -v, --verbose            more logging (repeatable)\n"
         "  --log-level LEVEL        error, warning, info (default), debug, trace\n"
         "  -h, --help               this text\n"
         "  -V, --version            print the version\n";
}

Result<ParseOutcome> ParseOptions(int argc, const char* const* argv, DaemonOptions* opts,
                                  std::string* out) {
  std::vector<std::string_view> positional;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    std::string_view name = arg, value;
    bool has_inline = false;
    if (arg.starts_with("--")) {
      size_t eq = arg.find('=');
      if (eq != std::string_view::npos) {
        name = arg.substr(0, eq);
        value = arg.substr(eq + 1);
        has_inline = true;
      }
    } else if (arg == "-" || !arg.starts_with("-")) {
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
    if (name == "--") {
      for (++i; i < argc; ++i) positional.push_back(argv[i]);
      break;
    }
    static constexpr std::string_view kWithValue[] = {
        "--listen",    "--connect", "--keys",       "--export",        "--state-dir",
        "-o",          "--mode",    "--io-timeout", "--ping-interval", "--link-timeout",
        "--log-level", "--hostname", "--journal", "--sync", "--journal-max", "--journal-dump"};
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
        opts->sync = DaemonOptions::SyncMode::kRemote;
      } else if (val == "journal") {
        opts->sync = DaemonOptions::SyncMode::kJournal;
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
    } else {
      return Status::InvalidArgument("unknown option '" + std::string(name) + "'");
    }
  }
  if (!opts->journal_dump.empty()) return ParseOutcome::kRun;
  if (opts->sync == DaemonOptions::SyncMode::kJournal && opts->journal_dir == "none")
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
