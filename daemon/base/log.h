// Logging to stderr with levels. Every line names the subject it concerns
// (a link's peer address, a disk's serial, "main"), so that an operator can
// grep one link's story out of a busy log:
//
//   xdisk-fuse: warning: link 127.0.0.1:987: dropping link: header crc mismatch
//
// The level is spelled out so that test scripts can grep for 'warning'.
//
// Every line is escaped as a whole (EscapeLogText) before it is written:
// peer-supplied strings (labels, serials) reach log lines, and a control
// character or a stray byte in one of them must not be able to start a
// line of its own ("xdisk-fuse: error: ...") or reach a terminal raw.
//
// Thread safety: Log() may be called from any thread (one write(2) per line).
#pragma once

#include <string>
#include <string_view>

namespace xdisk {

enum class LogLevel { kError = 0, kWarning = 1, kInfo = 2, kDebug = 3, kTrace = 4 };

// Messages above this level are discarded. Default kInfo.
void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
bool LogEnabled(LogLevel level);
// Parses "error", "warning", "info", "debug", "trace" (or 0..4).
bool ParseLogLevel(std::string_view text, LogLevel* out);

// Returns `text` with every byte that could forge or garble a log line
// written as \xNN: C0 controls (newline included), DEL, C1 controls and
// bytes that are not part of valid UTF-8. A backslash becomes \\, so that
// an escape seen in the log always stands for one byte. Valid UTF-8 text
// passes unchanged.
std::string EscapeLogText(std::string_view text);

// printf-style. `subject` may be empty. The formatted line is escaped with
// EscapeLogText and cut at a few KiB.
void Log(LogLevel level, std::string_view subject, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));

}  // namespace xdisk

#define XLOG(level, subject, ...)                                     \
  do {                                                                \
    if (::xdisk::LogEnabled(::xdisk::LogLevel::level))                \
      ::xdisk::Log(::xdisk::LogLevel::level, (subject), __VA_ARGS__); \
  } while (0)
