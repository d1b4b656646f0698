#include "daemon/base/log.h"

#include <unistd.h>

#include <algorithm>
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

namespace {
// Length of the valid UTF-8 sequence at s[i] (code point >= U+00A0, so that
// C1 controls count as invalid here), or 0.
size_t Utf8Printable(std::string_view s, size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  size_t need;
  unsigned char lo = 0x80, hi = 0xbf;  // the range of the second byte
  if (b0 == 0xc2) {
    need = 1;
    lo = 0xa0;  // U+0080..U+009F are C1 controls
  } else if (b0 > 0xc2 && b0 <= 0xdf) {
    need = 1;
  } else if (b0 >= 0xe0 && b0 <= 0xef) {
    need = 2;
    if (b0 == 0xe0) lo = 0xa0;  // overlong
    if (b0 == 0xed) hi = 0x9f;  // surrogates
  } else if (b0 >= 0xf0 && b0 <= 0xf4) {
    need = 3;
    if (b0 == 0xf0) lo = 0x90;  // overlong
    if (b0 == 0xf4) hi = 0x8f;  // above U+10FFFF
  } else {
    return 0;
  }
  if (need >= s.size() - i) return 0;  // cut short
  for (size_t n = 1; n <= need; ++n) {
    const auto b = static_cast<unsigned char>(s[i + n]);
    if (n == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xbf)) return 0;
  }
  return need + 1;
}
}  // namespace

std::string EscapeLogText(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const auto b = static_cast<unsigned char>(text[i]);
    if (b >= 0x20 && b < 0x7f && b != '\\') {
      out += static_cast<char>(b);
      ++i;
      continue;
    }
    if (b == '\\') {
      out += "\\\\";
      ++i;
      continue;
    }
    if (b >= 0x80) {
      if (size_t n = Utf8Printable(text, i); n != 0) {
        out.append(text.substr(i, n));
        i += n;
        continue;
      }
    }
    char buf[5];
    snprintf(buf, sizeof buf, "\\x%02x", b);
    out += buf;
    ++i;
  }
  return out;
}

void Log(LogLevel level, std::string_view subject, const char* fmt, ...) {
  char text[2048];
  int n = snprintf(text, sizeof text, "%.*s%s", static_cast<int>(subject.size()), subject.data(),
                   subject.empty() ? "" : ": ");
  if (n < 0) return;
  n = std::min<int>(n, sizeof text - 1);
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(text + n, sizeof text - n, fmt, ap);
  va_end(ap);
  size_t len = n + (m < 0 ? 0 : std::min<size_t>(m, sizeof text - n - 1));
  // The subject and the message may carry what a peer sent: escaped as one,
  // the line stays one line whatever they hold.
  std::string line = "xdisk-fuse: ";
  line += kLevelNames[static_cast<int>(level)];
  line += ": ";
  line += EscapeLogText(std::string_view(text, len));
  line += '\n';
  // One write per line keeps lines from different threads whole.
  ssize_t ignored = write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;
}

}  // namespace xdisk
