#include "daemon/import/own_mount.h"

#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <deque>
#include <fstream>
#include <iterator>

#include "daemon/base/split.h"

namespace xdisk {
namespace {

constexpr int kMaxSymlinks = 40;  // Linux's limit for one lookup

// Splits on '/', dropping empty parts and ".".
std::deque<std::string> Components(std::string_view path) {
  std::deque<std::string> out;
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    std::string_view part = path.substr(i, j - i);
    if (!part.empty() && part != ".") out.emplace_back(part);
    i = j + 1;
  }
  return out;
}

bool AtOrUnder(const std::string& p, const std::string& dir) {
  if (dir == "/") return true;
  return p == dir || (p.size() > dir.size() && p.starts_with(dir) && p[dir.size()] == '/');
}

std::string Parent(const std::string& p) {
  size_t k = p.rfind('/');
  return k == 0 || k == std::string::npos ? "/" : p.substr(0, k);
}

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string Unescape(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '3' && s[i + 2] >= '0' &&
        s[i + 2] <= '7' && s[i + 3] >= '0' && s[i + 3] <= '7') {
      out += static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

}  // namespace

std::string LexicalAbsolute(const std::string& path) {
  std::deque<std::string> parts;
  if (path.empty() || path[0] != '/') {
    char cwd[PATH_MAX];
    parts = Components(getcwd(cwd, sizeof cwd) != nullptr ? cwd : "/");
  }
  for (std::string& c : Components(path)) parts.push_back(std::move(c));
  std::string out;
  std::vector<std::string> kept;
  for (std::string& p : parts) {
    if (p == "..") {
      if (!kept.empty()) kept.pop_back();
    } else {
      kept.push_back(std::move(p));
    }
  }
  for (const std::string& p : kept) {
    out.push_back('/');
    out.append(p);
  }
  if (out.empty()) out.push_back('/');
  return out;
}

std::vector<MountEntry> ParseMountInfo(std::string_view mountinfo) {
  // Each line: id parent major:minor root mountpoint options [optional
  // fields...] - fstype source super-options
  std::vector<MountEntry> entries;
  for (std::string_view line : SplitOn(mountinfo, '\n')) {
    std::vector<std::string_view> f = SplitOn(line, ' ');
    if (f.size() < 5) continue;
    MountEntry en{std::string(f[2]), Unescape(f[4]), {}, {}};
    for (size_t k = 5; k + 2 < f.size(); k++) {
      if (f[k] == "-") {
        en.fstype = Unescape(f[k + 1]);
        en.source = Unescape(f[k + 2]);
        break;
      }
    }
    entries.push_back(std::move(en));
  }
  return entries;
}

std::string ReadMountInfo() {
  std::ifstream f("/proc/self/mountinfo");
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

std::optional<MountEntry> MountAt(std::string_view mountinfo, const std::string& mountpoint) {
  std::optional<MountEntry> top;
  for (MountEntry& en : ParseMountInfo(mountinfo))
    if (en.point == mountpoint) top = std::move(en);  // the last one mounted there
  return top;
}

std::vector<std::string> MountsOfSameDevice(std::string_view mountinfo,
                                            const std::string& mountpoint) {
  std::vector<std::string> out;
  auto top = MountAt(mountinfo, mountpoint);
  if (!top) return out;
  for (const MountEntry& en : ParseMountInfo(mountinfo))
    if (en.dev == top->dev) out.push_back(en.point);
  return out;
}

Result<std::string> ResolveAvoiding(const std::string& path,
                                    const std::vector<std::string>& forbidden) {
  auto check = [&](const std::string& p) -> Status {
    for (const std::string& m : forbidden)
      if (AtOrUnder(p, m))
        return Status::InvalidArgument(path + " leads into this daemon's mount " + m + " (at " + p +
                                       ")");
    return Status::Ok();
  };
  std::string resolved = "/";
  std::deque<std::string> todo;
  if (path.empty() || path[0] != '/') {
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd) == nullptr) return Status::FromErrno(errno, "getcwd");
    todo = Components(cwd);
  }
  for (std::string& c : Components(path)) todo.push_back(std::move(c));
  if (Status st = check(resolved); !st.ok()) return st;
  int links = 0;
  while (!todo.empty()) {
    std::string part = std::move(todo.front());
    todo.pop_front();
    if (part == "..") {
      resolved = Parent(resolved);  // physical: `resolved` has no links
      continue;
    }
    std::string next = resolved;
    if (next != "/") next.push_back('/');
    next.append(part);
    if (Status st = check(next); !st.ok()) return st;
    struct stat st;
    if (lstat(next.c_str(), &st) != 0) return Status::FromErrno(errno, path + ": " + next);
    if (!S_ISLNK(st.st_mode)) {
      resolved = std::move(next);
      continue;
    }
    if (++links > kMaxSymlinks) return Status::FromErrno(ELOOP, path);
    char buf[PATH_MAX];
    ssize_t n = readlink(next.c_str(), buf, sizeof buf);
    if (n < 0) return Status::FromErrno(errno, path + ": readlink " + next);
    if (static_cast<size_t>(n) == sizeof buf) return Status::FromErrno(ENAMETOOLONG, next);
    std::string_view target(buf, static_cast<size_t>(n));
    std::deque<std::string> parts = Components(target);
    todo.insert(todo.begin(), parts.begin(), parts.end());
    if (!target.empty() && target[0] == '/')
      resolved.assign(1, '/');  // (not = "/": gcc 12 -O3 warns falsely)
  }
  return resolved;
}

}  // namespace xdisk
