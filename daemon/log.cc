#include "daemon/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstring>

namespace xdisk {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
const char* const kLevelNames[] = {"error", "warning", "info", "debug", "trace"};
}  // namespace

void SetLogLevel(LogLevel level) { g_level = static_cast<int>(level); }
LogLevel GetLogLevel() { return static_cast<LogLevel>(g_level.load()); }
bool LogEnabled(LogLevel level) { return static_cast<int>(level) <= g_level.load(); }

bool ParseLogLevel(std::string_view text, LogLevel* out) {
  static const char* const kNames[] = {"error", "warning", "info", "debug", "trace"};
  for (int i = 0; i < 5; ++i) {
    if (text == kNames[i] || (text.size() == 1 && text[0] == '0' + i)) {
      *out = static_cast<LogLevel>(i);
      return true;
    }
  }
  return false;
}

void Log(LogLevel level, std::string_view subject, const char* fmt, ...) {
  char line[2048];
  int n =
      snprintf(line, sizeof line, "xdisk-fuse: %s: %.*s%s", kLevelNames[static_cast<int>(level)],
               static_cast<int>(subject.size()), subject.data(), subject.empty() ? "" : ": ");
  if (n < 0) return;
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
  va_end(ap);
  size_t len = n + (m < 0 ? 0 : std::min<size_t>(m, sizeof line - n - 2));
  line[len++] = '\n';
  // One write per line keeps lines from different threads whole.
  ssize_t ignored = write(STDERR_FILENO, line, len);
  (void)ignored;
}

}  // namespace xdisk
