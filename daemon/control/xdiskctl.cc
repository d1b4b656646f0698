#include "daemon/control/xdiskctl.h"

#include <sys/un.h>

#include <charconv>
#include <cinttypes>
#include <cstdio>
#include <ctime>
#include <vector>

#include "config.h"
#include "daemon/base/export_spec.h"
#include "daemon/base/options.h"
#include "daemon/control/control_codec.h"
#include "daemon/control/control_service.h"

namespace xdisk::ctl {

using control::Request;
using control::Response;

// ---- command line ----

std::string CtlUsage() {
  return "Usage: xdiskctl [OPTIONS] COMMAND [ARGS]\n"
         "\n"
         "Asks a running xdisk-fuse daemon over its control socket.\n"
         "\n"
         "Commands:\n"
         "  status                   the daemon, its links, disks and exports, totals\n"
         "  links                    peer, direction, state, since, bytes, encryption;\n"
         "                           recently refused addresses: why, when, how often\n"
         "  disks                    imported disks: state, blocked since, in flight,\n"
         "                           queued, journal, names, paths; and exports\n"
         "  stats                    per disk: ops and bytes by type, latencies;\n"
         "                           per link: transactions and bytes relayed to it\n"
         "  spans                    the spans this daemon relays: to, from, dist\n"
         "  export add PATH[,serno=S][,label=L][,uuid=U][,ro][,blksize=N]\n"
         "                           export a block device or file now\n"
         "  export remove SERIAL     withdraw an export\n"
         "  connect HOST[:PORT]      keep a link to HOST (port 987)\n"
         "  disconnect HOST[:PORT]   drop a connect target and its link\n"
         "  restart                  replace the daemon with the installed binary, keeping\n"
         "                           the mount, exports and journals\n"
         "\n"
         "Options:\n"
         "  --control PATH           the daemon's socket (default /run/xdisk-fuse.sock)\n"
         "  --json                   one JSON object instead of tables\n"
         "  --timeout SEC            wait at most SEC for the answer (default 10)\n"
         "  -h, --help               this text\n"
         "  -V, --version            print the version\n"
         "\n"
         "Exit status: 0 ok, 1 the daemon refused (message shown), 2 usage,\n"
         "3 the daemon cannot be reached.\n";
}

Result<CtlOutcome> ParseCtlArgs(int argc, const char* const* argv, CtlArgs* out) {
  std::vector<std::string> words;
  bool options_done = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (options_done || arg.empty() || arg[0] != '-' || arg == "-") {
      words.emplace_back(arg);
      continue;
    }
    auto [name, value, has_inline] = SplitLongOption(arg);
    auto need_value = [&]() -> Result<std::string_view> {
      if (has_inline) return value;
      if (i + 1 >= argc) return Status::InvalidArgument(std::string(name) + ": missing value");
      return std::string_view(argv[++i]);
    };
    auto flag = [&](bool* f) -> Status {
      if (has_inline) return Status::InvalidArgument(std::string(name) + ": takes no value");
      *f = true;
      return Status::Ok();
    };
    if (name == "--") {
      options_done = true;
    } else if (name == "-h" || name == "--help") {
      return CtlOutcome::kHelp;
    } else if (name == "-V" || name == "--version") {
      return CtlOutcome::kVersion;
    } else if (name == "--json") {
      if (Status s = flag(&out->json); !s.ok()) return s;
    } else if (name == "--control") {
      auto v = need_value();
      if (!v.ok()) return v.status();
      if (v->empty()) return Status::InvalidArgument("--control: empty path");
      // A UNIX socket path must fit in sockaddr_un, NUL included.
      if (v->size() >= sizeof(sockaddr_un::sun_path))
        return Status::InvalidArgument("--control: path longer than " +
                                       std::to_string(sizeof(sockaddr_un::sun_path) - 1) +
                                       " bytes");
      out->control_path = std::string(*v);
    } else if (name == "--timeout") {
      auto v = need_value();
      if (!v.ok()) return v.status();
      unsigned sec = 0;
      auto [p, ec] = std::from_chars(v->data(), v->data() + v->size(), sec);
      if (ec != std::errc() || p != v->data() + v->size() || sec == 0 || sec > 3600)
        return Status::InvalidArgument("--timeout: bad number of seconds '" + std::string(*v) +
                                       "'");
      out->timeout_ms = static_cast<int>(sec) * 1000;
    } else {
      return Status::InvalidArgument("unknown option '" + std::string(name) + "'");
    }
  }
  if (words.empty()) return Status::InvalidArgument("missing command");
  const std::string cmd = words[0];
  std::string label = cmd;  // "export add" for the messages
  auto arity = [&](size_t n, const char* what) -> Status {
    if (words.size() < n + 1) return Status::InvalidArgument(label + ": missing " + what);
    if (words.size() > n + 1)
      return Status::InvalidArgument(label + ": unexpected argument '" + words[n + 1] + "'");
    return Status::Ok();
  };
  Request& r = out->request;
  r.set_version(control::kControlVersion);
  if (cmd == "status" || cmd == "links" || cmd == "disks" || cmd == "stats" || cmd == "restart" ||
      cmd == "spans") {
    if (Status s = arity(0, ""); !s.ok()) return s;
    if (cmd == "spans") r.mutable_links()->set_spans(true);
    if (cmd == "restart") r.mutable_restart();
    if (cmd == "status") r.mutable_status();
    if (cmd == "links") r.mutable_links();
    if (cmd == "disks") r.mutable_disks();
    if (cmd == "stats") r.mutable_stats();
  } else if (cmd == "export") {
    if (words.size() < 2) return Status::InvalidArgument("export: expected 'add' or 'remove'");
    const std::string sub = words[1];
    label = cmd + " " + sub;
    words.erase(words.begin());
    if (sub == "add") {
      if (Status s = arity(1, "PATH[,options]"); !s.ok()) return s;
      auto spec = ParseExportSpec(words[1]);
      if (!spec.ok()) return Status::InvalidArgument("export add: " + spec.status().message());
      r.mutable_export_add()->set_spec(words[1]);
    } else if (sub == "remove") {
      if (Status s = arity(1, "SERIAL"); !s.ok()) return s;
      if (words[1].size() > kMaxIdentityLength)
        return Status::InvalidArgument("export remove: serial longer than 63 bytes");
      r.mutable_export_remove()->set_serial(words[1]);
    } else {
      return Status::InvalidArgument("export: expected 'add' or 'remove', got '" + sub + "'");
    }
  } else if (cmd == "connect" || cmd == "disconnect") {
    if (Status s = arity(1, "HOST[:PORT]"); !s.ok()) return s;
    auto hp = ParseHostPort(words[1]);
    if (!hp.ok()) return Status::InvalidArgument(cmd + ": " + hp.status().message());
    if (cmd == "connect") {
      r.mutable_connect()->set_address(words[1]);
    } else {
      r.mutable_disconnect()->set_address(words[1]);
    }
  } else if (cmd == "help") {
    return CtlOutcome::kHelp;
  } else {
    return Status::InvalidArgument("unknown command '" + cmd + "'");
  }
  return CtlOutcome::kRun;
}

// ---- building blocks ----

std::string HumanBytes(uint64_t n) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (n < 1024) return std::to_string(n) + "B";
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 6) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  snprintf(buf, sizeof buf, v < 10 ? "%.1f%s" : "%.0f%s", v, kUnits[u]);
  return buf;
}

std::string HumanAge(uint64_t ms) {
  uint64_t s = ms / 1000;
  auto two = [](uint64_t a, const char* ua, uint64_t b, const char* ub) {
    return std::to_string(a) + ua + (b ? std::to_string(b) + ub : "");
  };
  if (s < 60) return std::to_string(s) + "s";
  if (s < 3600) return two(s / 60, "m", s % 60, "s");
  if (s < 86400) return two(s / 3600, "h", s % 3600 / 60, "m");
  return two(s / 86400, "d", s % 86400 / 3600, "h");
}

std::string HumanMicros(uint64_t us) {
  char buf[32];
  if (us < 1000) return std::to_string(us) + "us";
  if (us < 1000000) {
    snprintf(buf, sizeof buf, "%.1fms", static_cast<double>(us) / 1e3);
  } else {
    snprintf(buf, sizeof buf, "%.1fs", static_cast<double>(us) / 1e6);
  }
  return buf;
}

std::string IsoTime(uint64_t ms) {
  if (ms == 0) return "-";
  time_t t = static_cast<time_t>(ms / 1000);
  tm local{};
  localtime_r(&t, &local);
  char buf[64];
  size_t n = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S%z", &local);
  // strftime's %z is "+0200"; ISO 8601 extended format wants "+02:00".
  // (Built by appending: gcc 12 at -O3 warns falsely on string::insert.)
  if (n < 5) return std::string(buf, n);
  std::string s(buf, n - 2);
  s.append(":").append(buf + n - 2, 2);
  return s;
}

namespace {

// Decodes one UTF-8 sequence at s[i]. Returns its length and sets *cp, or
// returns the length of the maximal invalid subpart (at least 1) and sets
// *cp to -1; so each invalid stretch is replaced once, the way the Unicode
// standard recommends (and browsers do). Overlong forms, surrogates and
// code points above U+10FFFF are invalid.
size_t DecodeUtf8(std::string_view s, size_t i, int32_t* cp) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  size_t need;
  unsigned char lo = 0x80, hi = 0xbf;  // the range of the second byte
  int32_t v;
  if (b0 >= 0xc2 && b0 <= 0xdf) {
    need = 1;
    v = b0 & 0x1f;
  } else if (b0 >= 0xe0 && b0 <= 0xef) {
    need = 2;
    v = b0 & 0x0f;
    if (b0 == 0xe0) lo = 0xa0;  // overlong
    if (b0 == 0xed) hi = 0x9f;  // surrogates
  } else if (b0 >= 0xf0 && b0 <= 0xf4) {
    need = 3;
    v = b0 & 0x07;
    if (b0 == 0xf0) lo = 0x90;  // overlong
    if (b0 == 0xf4) hi = 0x8f;  // above U+10FFFF
  } else {
    *cp = -1;
    return 1;
  }
  size_t n = 1;
  for (; n <= need; ++n) {
    if (i + n >= s.size()) break;
    const auto b = static_cast<unsigned char>(s[i + n]);
    if (n == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xbf)) break;
    v = (v << 6) | (b & 0x3f);
  }
  if (n <= need) {
    *cp = -1;
    return n;
  }
  *cp = v;
  return n;
}

}  // namespace

std::string JsonQuote(std::string_view s) {
  std::string out = "\"";
  for (size_t i = 0; i < s.size();) {
    int32_t cp;
    const size_t n = DecodeUtf8(s, i, &cp);
    if (cp < 0) {
      // JSON text must be UTF-8 (RFC 8259 section 8.1): a parser may reject
      // the whole object for one stray byte.
      out += "\\ufffd";
    } else if (cp == '"') {
      out += "\\\"";
    } else if (cp == '\\') {
      out += "\\\\";
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp < 0x20 || cp == 0x7f) {
      char buf[8];
      snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(cp));
      out += buf;
    } else {
      out.append(s.substr(i, n));
    }
    i += n;
  }
  return out + "\"";
}

std::string TerminalSafe(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    int32_t cp;
    const size_t n = DecodeUtf8(s, i, &cp);
    // C1 controls (U+0080..U+009F) matter too: some terminals take U+009B
    // as CSI, the start of an escape sequence.
    if (cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f)) {
      out += '?';
    } else {
      out.append(s.substr(i, n));
    }
    i += n;
  }
  return out;
}

namespace {

// Columns are aligned by code points, which is right for most scripts (not
// for wide CJK characters or combining marks; good enough for labels).
size_t DisplayWidth(std::string_view s) {
  size_t w = 0;
  for (size_t i = 0; i < s.size();) {
    int32_t cp;
    i += DecodeUtf8(s, i, &cp);
    ++w;
  }
  return w;
}

// ---- JSON ----

// Builds one JSON object; values are passed as JSON text or typed.
class JsonObject {
 public:
  JsonObject& Raw(std::string_view key, const std::string& json) {
    text_ += first_ ? "" : ",";
    first_ = false;
    text_ += JsonQuote(key) + ":" + json;
    return *this;
  }
  JsonObject& Str(std::string_view key, std::string_view v) { return Raw(key, JsonQuote(v)); }
  JsonObject& Num(std::string_view key, uint64_t v) { return Raw(key, std::to_string(v)); }
  JsonObject& Bool(std::string_view key, bool v) { return Raw(key, v ? "true" : "false"); }
  // An ISO time string, or null when `ms` is 0.
  JsonObject& Time(std::string_view key, uint64_t ms) {
    return Raw(key, ms ? JsonQuote(IsoTime(ms)) : "null");
  }
  std::string Done() const { return "{" + text_ + "}"; }

 private:
  std::string text_;
  bool first_ = true;
};

template <typename C, typename F>
std::string JsonArray(const C& items, F to_json) {
  std::string s = "[";
  bool first = true;
  for (const auto& x : items) {
    if (!first) s += ",";
    first = false;
    s += to_json(x);
  }
  return s + "]";
}

std::string StringsJson(const google::protobuf::RepeatedPtrField<std::string>& v) {
  return JsonArray(v, [](const std::string& s) { return JsonQuote(s); });
}

std::string LinkJson(const control::LinkInfo& l) {
  return JsonObject()
      .Str("peer", l.peer())
      .Str("direction", l.direction())
      .Str("state", l.state())
      .Num("since_ms", l.since_ms())
      .Time("since", l.since_ms())
      .Num("bytes_in", l.bytes_in())
      .Num("bytes_out", l.bytes_out())
      .Str("encryption", l.encryption())
      .Str("peer_label", l.peer_label())
      .Num("next_retry_ms", l.next_retry_ms())
      .Time("next_retry", l.next_retry_ms())
      .Str("last_error", l.last_error())
      .Str("refusal_kind", l.refusal_kind())
      .Num("refusals", l.refusals())
      .Num("relayed_txns", l.relayed_txns())
      .Num("relayed_bytes", l.relayed_bytes())
      .Done();
}

std::string RelayedSpanJson(const control::RelayedSpanInfo& r) {
  return JsonObject()
      .Str("to", r.to())
      .Str("from", r.from())
      .Num("dist", r.dist())
      .Str("serial", r.serial())
      .Str("label", r.label())
      .Done();
}

std::string DiskJson(const control::DiskInfo& d, uint64_t now_ms) {
  std::string paths = JsonArray(d.paths(), [](const control::PathInfo& p) {
    return JsonObject()
        .Str("link", p.link())
        .Num("dist", p.dist())
        .Bool("active", p.active())
        .Done();
  });
  const uint64_t blocked_for =
      d.blocked_since_ms() && now_ms > d.blocked_since_ms() ? now_ms - d.blocked_since_ms() : 0;
  return JsonObject()
      .Str("serial", d.serial())
      .Num("size", d.size())
      .Num("blksize", d.blksize())
      .Raw("names", StringsJson(d.names()))
      .Raw("paths", paths)
      .Str("state", d.state())
      .Num("inflight", d.inflight())
      .Num("queued", d.queued())
      .Num("blocked_since_ms", d.blocked_since_ms())
      .Time("blocked_since", d.blocked_since_ms())
      .Num("blocked_for_ms", blocked_for)
      .Num("journal_bytes", d.journal_bytes())
      .Num("journal_pending", d.journal_pending())
      .Num("journal_pending_bytes", d.journal_pending_bytes())
      .Num("errors", d.errors())
      .Done();
}

std::string ExportJson(const control::ExportInfo& e) {
  return JsonObject()
      .Str("serial", e.serial())
      .Str("path", e.path())
      .Str("label", e.label())
      .Str("uuid", e.uuid())
      .Bool("read_only", e.read_only())
      .Num("blksize", e.blksize())
      .Num("size", e.size())
      .Done();
}

std::string OpStatsJson(const control::OpStats& o) {
  return JsonObject()
      .Num("ops", o.ops())
      .Num("bytes", o.bytes())
      .Num("completed", o.completed())
      .Num("mean_us", o.mean_us())
      .Num("p50_us", o.p50_us())
      .Num("p90_us", o.p90_us())
      .Num("p99_us", o.p99_us())
      .Num("p999_us", o.p999_us())
      .Done();
}

std::string DiskStatsJson(const control::DiskStats& s) {
  return JsonObject()
      .Str("serial", s.serial())
      .Raw("read", OpStatsJson(s.read()))
      .Raw("write", OpStatsJson(s.write()))
      .Raw("flush", OpStatsJson(s.flush()))
      .Raw("trim", OpStatsJson(s.trim()))
      .Num("errors", s.errors())
      .Num("resent", s.resent())
      .Num("reopens", s.reopens())
      .Done();
}

std::string DaemonJson(const control::DaemonInfo& d) {
  return JsonObject()
      .Str("hostname", d.hostname())
      .Str("version", d.version())
      .Num("pid", d.pid())
      .Num("started_ms", d.started_ms())
      .Time("started", d.started_ms())
      .Str("mountpoint", d.mountpoint())
      .Str("protection", d.protection())
      .Num("keeper_pid", d.keeper_pid())
      .Num("restarts", d.restarts())
      .Raw("resend", d.resend() ? "true" : "false")
      .Raw("listen", StringsJson(d.listen()))
      .Raw("connect", StringsJson(d.connect()))
      .Done();
}

struct Totals {
  uint64_t links = 0, links_up = 0, bytes_in = 0, bytes_out = 0;
  uint64_t disks = 0, online = 0, blocked = 0, offline = 0, inflight = 0, queued = 0;
  uint64_t exports = 0;
};

Totals Sum(const control::StatusReply& s) {
  Totals t;
  for (const auto& l : s.links()) {
    ++t.links;
    t.links_up += l.state() == "up";
    t.bytes_in += l.bytes_in();
    t.bytes_out += l.bytes_out();
  }
  for (const auto& d : s.disks()) {
    ++t.disks;
    t.online += d.state() == "online";
    t.blocked += d.state() == "blocked";
    t.offline += d.state() == "offline";
    t.inflight += d.inflight();
    t.queued += d.queued();
  }
  t.exports = static_cast<uint64_t>(s.exports_size());
  return t;
}

// ---- tables ----

// Left-aligned columns separated by two spaces, like `ip -br`; the last
// column is not padded.
class Table {
 public:
  explicit Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  // Cells come from the daemon and its peers: a label must not be able to
  // write escape sequences or extra lines to the operator's terminal.
  void Add(std::vector<std::string> row) {
    for (auto& cell : row) cell = TerminalSafe(cell);
    rows_.push_back(std::move(row));
  }
  std::string Render() const {
    std::vector<size_t> width;
    for (const auto& r : rows_)
      for (size_t i = 0; i < r.size(); ++i) {
        if (width.size() <= i) width.push_back(0);
        width[i] = std::max(width[i], DisplayWidth(r[i]));
      }
    std::string out;
    for (const auto& r : rows_) {
      std::string line;
      for (size_t i = 0; i < r.size(); ++i) {
        line += r[i];
        if (i + 1 < r.size()) line += std::string(width[i] - DisplayWidth(r[i]) + 2, ' ');
      }
      while (!line.empty() && line.back() == ' ') line.pop_back();
      out += line + "\n";
    }
    return out;
  }

 private:
  std::vector<std::vector<std::string>> rows_;
};

std::string Join(const google::protobuf::RepeatedPtrField<std::string>& v, const char* sep) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : sep) + x;
  return s.empty() ? "-" : s;
}

std::string PathsText(const control::DiskInfo& d) {
  std::string s;
  for (const auto& p : d.paths()) {
    if (!s.empty()) s += ",";
    s += p.link() + "/d" + std::to_string(p.dist()) + (p.active() ? "*" : "");
  }
  return s.empty() ? "-" : s;
}

std::string SinceText(uint64_t since_ms, uint64_t now_ms) {
  if (since_ms == 0) return "-";
  return IsoTime(since_ms) + " (" + HumanAge(now_ms > since_ms ? now_ms - since_ms : 0) + ")";
}

std::string LinksTable(const google::protobuf::RepeatedPtrField<control::LinkInfo>& links,
                       uint64_t now_ms) {
  if (links.empty()) return "no links\n";
  Table t({"PEER", "DIR", "STATE", "SINCE", "IN", "OUT", "ENC", "LABEL"});
  for (const auto& l : links) {
    if (l.state() == "retrying" || l.state() == "resolving") {
      // A connect target between attempts: when the next one starts in
      // SINCE, why the last one failed in LABEL.
      std::string next = "-";
      if (l.next_retry_ms() != 0)
        next = "next try " + IsoTime(l.next_retry_ms()) + " (in " +
               HumanMicros(1000 * (l.next_retry_ms() > now_ms ? l.next_retry_ms() - now_ms : 0)) +
               ")";
      t.Add({l.peer(), l.direction(), l.state(), next, "-", "-", l.encryption(),
             l.last_error().empty() ? "-" : "error: " + l.last_error()});
      continue;
    }
    if (l.state() == "refused") {
      // A recently refused address: the last refusal's time in SINCE, its
      // kind, count and reason in LABEL.
      t.Add({l.peer(), l.direction(), l.state(), SinceText(l.since_ms(), now_ms), "-", "-",
             l.encryption(),
             l.refusal_kind() + " (x" + std::to_string(l.refusals()) + "): " + l.last_error()});
      continue;
    }
    t.Add({l.peer(), l.direction(), l.state(), SinceText(l.since_ms(), now_ms),
           HumanBytes(l.bytes_in()), HumanBytes(l.bytes_out()), l.encryption(),
           l.peer_label().empty() ? "-" : l.peer_label()});
  }
  return t.Render();
}

std::string DisksTable(const google::protobuf::RepeatedPtrField<control::DiskInfo>& disks,
                       uint64_t now_ms, bool with_names) {
  std::vector<std::string> head = {"SERIAL", "STATE",   "SIZE",          "INFLIGHT",
                                   "QUEUED", "JOURNAL", "BLOCKED-SINCE", "PATHS"};
  if (with_names) head.push_back("NAMES");
  Table t(head);
  for (const auto& d : disks) {
    std::vector<std::string> row = {d.serial(),
                                    d.state(),
                                    HumanBytes(d.size()),
                                    std::to_string(d.inflight()),
                                    std::to_string(d.queued()),
                                    HumanBytes(d.journal_bytes()),
                                    SinceText(d.blocked_since_ms(), now_ms),
                                    PathsText(d)};
    if (with_names) row.push_back(Join(d.names(), ","));
    t.Add(row);
  }
  return t.Render();
}

std::string ExportsTable(const google::protobuf::RepeatedPtrField<control::ExportInfo>& ex) {
  Table t({"SERIAL", "SIZE", "BLKSIZE", "MODE", "PATH", "LABEL", "UUID"});
  for (const auto& e : ex)
    t.Add({e.serial(), HumanBytes(e.size()), std::to_string(e.blksize()),
           e.read_only() ? "ro" : "rw", e.path(), e.label(), e.uuid()});
  return t.Render();
}

std::string StatusText(const control::StatusReply& s, uint64_t now_ms) {
  const control::DaemonInfo& d = s.daemon();
  const Totals t = Sum(s);
  std::string out = "xdisk-fuse " + TerminalSafe(d.version()) + " on " +
                    TerminalSafe(d.hostname()) + ", pid " + std::to_string(d.pid()) + ", up " +
                    HumanAge(now_ms > d.started_ms() ? now_ms - d.started_ms() : 0) + "\n";
  out += "mount    " + (d.mountpoint().empty() ? std::string("-") : TerminalSafe(d.mountpoint())) +
         "\n";
  if (!d.mountpoint().empty()) {
    std::string p = TerminalSafe(d.protection());
    if (d.keeper_pid() != 0) p += " (pid " + std::to_string(d.keeper_pid()) + ")";
    p += ", " + std::to_string(d.restarts()) + " restarts";
    if (!d.resend()) p += ", no kernel resend";
    out += "survives " + p + "\n";
  }
  out += "listen   " + TerminalSafe(Join(d.listen(), " ")) + "\n";
  out += "connect  " + TerminalSafe(Join(d.connect(), " ")) + "\n";
  out += "\nlinks: " + std::to_string(t.links) + " (" + std::to_string(t.links_up) + " up), in " +
         HumanBytes(t.bytes_in) + ", out " + HumanBytes(t.bytes_out) + "\n";
  if (t.links > 0) out += LinksTable(s.links(), now_ms);
  out += "\ndisks: " + std::to_string(t.disks) + " (" + std::to_string(t.online) + " online, " +
         std::to_string(t.blocked) + " blocked, " + std::to_string(t.offline) + " offline), " +
         std::to_string(t.inflight) + " in flight, " + std::to_string(t.queued) + " queued\n";
  if (t.disks > 0) out += DisksTable(s.disks(), now_ms, false);
  out += "\nexports: " + std::to_string(t.exports) + "\n";
  if (t.exports > 0) out += ExportsTable(s.exports());
  return out;
}

std::string SpansTable(const google::protobuf::RepeatedPtrField<control::RelayedSpanInfo>& spans) {
  if (spans.empty()) return "no relayed spans\n";
  Table t({"SERIAL", "TO", "FROM", "DIST", "LABEL"});
  for (const auto& r : spans)
    t.Add({r.serial(), r.to(), r.from(), std::to_string(r.dist()), r.label()});
  return t.Render();
}

// Per link, what the relay passed on to it.
std::string RelayStatsTable(const google::protobuf::RepeatedPtrField<control::LinkInfo>& links) {
  Table t({"LINK", "RELAYED-TXNS", "RELAYED-BYTES"});
  bool any = false;
  for (const auto& l : links) {
    if (l.state() == "retrying" || l.state() == "resolving") continue;
    any = true;
    t.Add({l.peer(), std::to_string(l.relayed_txns()), HumanBytes(l.relayed_bytes())});
  }
  return any ? t.Render() : "";
}

std::string StatsText(const control::StatsReply& s) {
  std::string relay = RelayStatsTable(s.links());
  if (!relay.empty()) relay = "\nrelayed, per link:\n" + relay;
  if (s.disks().empty()) return "no imported disks\n" + relay;
  Table t({"SERIAL", "OP", "OPS", "BYTES", "DONE", "MEAN", "P50", "P90", "P99", "P99.9"});
  Table e({"SERIAL", "ERRORS", "RESENT", "REOPENS"});
  for (const auto& d : s.disks()) {
    const std::pair<const char*, const control::OpStats*> ops[] = {
        {"read", &d.read()}, {"write", &d.write()}, {"flush", &d.flush()}, {"trim", &d.trim()}};
    bool first = true;
    for (const auto& [name, o] : ops) {
      const bool any = o->completed() > 0;
      t.Add({first ? d.serial() : "", name, std::to_string(o->ops()), HumanBytes(o->bytes()),
             std::to_string(o->completed()), any ? HumanMicros(o->mean_us()) : "-",
             any ? HumanMicros(o->p50_us()) : "-", any ? HumanMicros(o->p90_us()) : "-",
             any ? HumanMicros(o->p99_us()) : "-", any ? HumanMicros(o->p999_us()) : "-"});
      first = false;
    }
    e.Add({d.serial(), std::to_string(d.errors()), std::to_string(d.resent()),
           std::to_string(d.reopens())});
  }
  return t.Render() + "\n" + e.Render() + relay;
}

std::string ExportAddedText(const control::ExportInfo& e) {
  return TerminalSafe("exported " + e.serial() + ": " + e.path() + ", " + HumanBytes(e.size()) +
                      ", blksize " + std::to_string(e.blksize()) +
                      (e.read_only() ? ", read-only" : "") + ", label " + e.label() + ", uuid " +
                      e.uuid()) +
         "\n";
}

}  // namespace

std::string FormatHuman(const Request& req, const Response& resp, uint64_t now_ms) {
  if (resp.has_error()) return "error: " + TerminalSafe(resp.error().message()) + "\n";
  switch (req.command_case()) {
    case Request::kStatus:
      return StatusText(resp.status(), now_ms);
    case Request::kLinks:
      if (req.links().spans()) return SpansTable(resp.links().relayed());
      return LinksTable(resp.links().links(), now_ms);
    case Request::kDisks: {
      const control::DisksReply& d = resp.disks();
      if (d.disks().empty() && d.exports().empty()) return "no disks\n";
      std::string out;
      if (!d.disks().empty()) out += DisksTable(d.disks(), now_ms, true);
      if (!d.exports().empty()) {
        if (!out.empty()) out += "\n";
        out += "exports:\n" + ExportsTable(d.exports());
      }
      return out;
    }
    case Request::kStats:
      return StatsText(resp.stats());
    case Request::kExportAdd:
      return ExportAddedText(resp.export_added());
    case Request::kExportRemove:
    case Request::kConnect:
    case Request::kDisconnect:
    case Request::kRestart:
      return TerminalSafe(resp.done().message()) + "\n";
    case Request::COMMAND_NOT_SET:
      break;
  }
  return "\n";
}

std::string FormatJson(const Request& req, const Response& resp, uint64_t now_ms) {
  JsonObject o;
  o.Num("version", resp.version()).Bool("ok", !resp.has_error());
  if (resp.has_error()) {
    o.Raw("error", JsonObject()
                       .Str("code", control::ErrorCodeName(resp.error().code()))
                       .Str("message", resp.error().message())
                       .Done());
    return o.Done() + "\n";
  }
  auto disks = [&](const auto& v) {
    return JsonArray(v, [&](const control::DiskInfo& d) { return DiskJson(d, now_ms); });
  };
  switch (req.command_case()) {
    case Request::kStatus: {
      const control::StatusReply& s = resp.status();
      const Totals t = Sum(s);
      o.Raw("daemon", DaemonJson(s.daemon()))
          .Raw("links", JsonArray(s.links(), LinkJson))
          .Raw("disks", disks(s.disks()))
          .Raw("exports", JsonArray(s.exports(), ExportJson))
          .Raw("totals", JsonObject()
                             .Num("links", t.links)
                             .Num("links_up", t.links_up)
                             .Num("bytes_in", t.bytes_in)
                             .Num("bytes_out", t.bytes_out)
                             .Num("disks", t.disks)
                             .Num("online", t.online)
                             .Num("blocked", t.blocked)
                             .Num("offline", t.offline)
                             .Num("inflight", t.inflight)
                             .Num("queued", t.queued)
                             .Num("exports", t.exports)
                             .Done());
      break;
    }
    case Request::kLinks:
      o.Raw("links", JsonArray(resp.links().links(), LinkJson))
          .Raw("relayed", JsonArray(resp.links().relayed(), RelayedSpanJson));
      break;
    case Request::kDisks:
      o.Raw("disks", disks(resp.disks().disks()))
          .Raw("exports", JsonArray(resp.disks().exports(), ExportJson));
      break;
    case Request::kStats:
      o.Raw("disks", JsonArray(resp.stats().disks(), DiskStatsJson))
          .Raw("links", JsonArray(resp.stats().links(), LinkJson));
      break;
    case Request::kExportAdd:
      o.Raw("export", ExportJson(resp.export_added()));
      break;
    case Request::kExportRemove:
    case Request::kConnect:
    case Request::kDisconnect:
    case Request::kRestart:
      o.Str("message", resp.done().message());
      break;
    case Request::COMMAND_NOT_SET:
      break;
  }
  return o.Done() + "\n";
}

}  // namespace xdisk::ctl
