// xdiskctl's pure half: the command line to a control Request, and a
// Response to what the operator reads (aligned tables) or a script parses
// (--json). No sockets and no clock: the caller passes "now", so the output
// is unit tested byte for byte. The I/O half is daemon/control/control_client.h,
// glued together in daemon/xdiskctl_main.cc.
//
// Exit codes (kExit*): 0 ok, 1 the daemon answered with an error (message on
// stderr; with --json also an {"ok": false, ...} object on stdout), 2 usage,
// 3 the daemon cannot be reached.
//
// JSON output is one object on one line with lowercase snake_case keys that
// do not change between releases (new keys may appear). Every object has
// "version" (the control protocol version) and "ok". Sizes and counters are
// numbers of bytes or units; times are *_ms (milliseconds since the Unix
// epoch, 0 when not applicable) plus an ISO 8601 local-time string or null.
#pragma once

#include <cstdint>
#include <string>

#include "proto/control.pb.h"
#include "proto/status.h"

namespace xdisk::ctl {

inline constexpr int kExitOk = 0;
inline constexpr int kExitDaemonError = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitUnreachable = 3;

struct CtlArgs {
  std::string control_path;  // empty: the default, /run/xdisk-fuse.sock
  bool json = false;
  int timeout_ms = 10000;
  control::Request request;  // the command to send
};

enum class CtlOutcome { kRun, kHelp, kVersion };

// Parses xdiskctl's arguments. Options (--control PATH, --json,
// --timeout SEC, -h/--help, -V/--version) may come before or after the
// command; "--" ends them. Arguments are checked with the daemon's own
// parsers (ParseExportSpec, ParseHostPort), so a typo is a usage error
// (exit 2) rather than a daemon error. Errors name the offending argument.
Result<CtlOutcome> ParseCtlArgs(int argc, const char* const* argv, CtlArgs* out);
std::string CtlUsage();

// The text for a successful response to `req`, ending in a newline.
// `now_ms` is wall-clock milliseconds since the epoch (for ages).
std::string FormatHuman(const control::Request& req, const control::Response& resp,
                        uint64_t now_ms);
// One JSON object and a newline; also for error responses.
std::string FormatJson(const control::Request& req, const control::Response& resp, uint64_t now_ms);

// ---- building blocks, exposed for tests ----

// 0 -> "0B", 1536 -> "1.5KiB", 1073741824 -> "1.0GiB".
std::string HumanBytes(uint64_t n);
// 3723000 -> "1h2m", 59000 -> "59s", 90061000 -> "1d1h".
std::string HumanAge(uint64_t ms);
// 900 -> "900us", 1500 -> "1.5ms", 2500000 -> "2.5s".
std::string HumanMicros(uint64_t us);
// Local time "2024-05-01T10:00:00+02:00"; "-" for 0.
std::string IsoTime(uint64_t ms_since_epoch);
// A JSON string literal with quotes, escaping as RFC 8259 requires: `"`,
// `\` and control characters are escaped, and each invalid UTF-8 sequence
// (the bytes may come from a peer or a file name) becomes \ufffd, so the
// output is always valid UTF-8 and valid JSON.
std::string JsonQuote(std::string_view s);
// `s` made safe to print on a terminal: control characters (C0, DEL, C1)
// and invalid UTF-8 sequences each become '?'; valid UTF-8 text is kept.
std::string TerminalSafe(std::string_view s);

}  // namespace xdisk::ctl
