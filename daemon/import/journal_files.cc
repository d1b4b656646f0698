// Journal files (the contract is in journal_files.h).
#include "daemon/import/journal_files.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>

namespace xdisk::journal_files {
namespace {

// Accepts only the canonical name of a number (what SegmentName() makes),
// so that "1.log" and "000001.log" can never both be segment 1.
bool ParseSegmentName(const char* name, uint64_t* number) {
  size_t digits = 0;
  while (name[digits] >= '0' && name[digits] <= '9') ++digits;
  if (digits < 6 || digits > 15 || std::strcmp(name + digits, ".log") != 0) return false;
  uint64_t n = 0;
  for (size_t i = 0; i < digits; ++i) n = n * 10 + static_cast<uint64_t>(name[i] - '0');
  if (SegmentName(n) != name) return false;
  *number = n;
  return true;
}

}  // namespace

// This boot's id, "" if unknown.
std::string CurrentBootId() {
  static const std::string id = [] {
    char buf[64] = {};
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return std::string();
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    std::string s(buf, n > 0 ? static_cast<size_t>(n) : 0);
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    return s;
  }();
  return id;
}

std::string SegmentName(uint64_t number) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%06llu.log", static_cast<unsigned long long>(number));
  return buf;
}

// A serial becomes a directory name, and serials come from remote peers.
bool ValidSerial(const std::string& s) {
  return !s.empty() && s.size() <= 255 && s != "." && s != ".." &&
         s.find('/') == std::string::npos && s.find('\0') == std::string::npos;
}

std::string At(const std::string& path, uint64_t offset) {
  return path + " offset " + std::to_string(offset);
}

// mkdir -p; a directory it creates is made durable in its parent.
Status MakeDirs(const std::string& path) {
  if (path.empty()) return Status::InvalidArgument("journal: empty directory name");
  for (size_t pos = 1; pos <= path.size(); ++pos) {
    if (pos != path.size() && path[pos] != '/') continue;
    const std::string prefix = path.substr(0, pos);
    if (mkdir(prefix.c_str(), 0700) == 0) {
      const size_t slash = prefix.find_last_of('/');
      const std::string parent = slash == std::string::npos ? "."
                                 : slash == 0               ? "/"
                                                            : prefix.substr(0, slash);
      const int fd = open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
      }
    } else if (errno != EEXIST) {
      return Status::FromErrno(errno, "journal: creating " + prefix);
    }
  }
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return Status::FromErrno(errno, "journal: " + path);
  if (!S_ISDIR(st.st_mode))
    return Status::InvalidArgument("journal: " + path + " is not a directory");
  return Status::Ok();
}

// Writes a gather list completely at file offset `at` (IOV_MAX entries
// per call at most).
Status PwritevAll(int fd, std::span<const std::span<const uint8_t>> pieces, const std::string& path,
                  uint64_t at) {
  std::vector<iovec> iov;
  iov.reserve(pieces.size());
  for (const auto& p : pieces)
    if (!p.empty()) iov.push_back(iovec{const_cast<uint8_t*>(p.data()), p.size()});
  size_t first = 0;
  uint64_t done = 0;
  while (first < iov.size()) {
    const int count = static_cast<int>(std::min<size_t>(iov.size() - first, IOV_MAX));
    const ssize_t w = pwritev(fd, iov.data() + first, count, static_cast<off_t>(at + done));
    if (w < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "journal: writing " + At(path, at + done));
    }
    if (w == 0) return Status::FromErrno(ENOSPC, "journal: writing " + At(path, at + done));
    done += static_cast<uint64_t>(w);
    // Skip what was written, partly written entries included.
    size_t left = static_cast<size_t>(w);
    while (first < iov.size() && left >= iov[first].iov_len) left -= iov[first++].iov_len;
    if (left > 0) {
      iov[first].iov_base = static_cast<uint8_t*>(iov[first].iov_base) + left;
      iov[first].iov_len -= left;
    }
  }
  return Status::Ok();
}

// Reads exactly buf.size() bytes at `at`; Corruption if the file is shorter.
Status PreadAll(int fd, std::span<uint8_t> buf, const std::string& path, uint64_t at) {
  size_t done = 0;
  while (done < buf.size()) {
    const ssize_t r =
        pread(fd, buf.data() + done, buf.size() - done, static_cast<off_t>(at + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "journal: reading " + At(path, at + done));
    }
    if (r == 0) return Status::Corruption("journal: " + At(path, at) + ": record cut short");
    done += static_cast<size_t>(r);
  }
  return Status::Ok();
}

MappedSegment::~MappedSegment() {
  if (addr != nullptr) munmap(addr, size);
  if (fd >= 0) close(fd);
}

Status MapSegment(const std::string& path, MappedSegment* m) {
  // O_NONBLOCK: a FIFO planted under a segment's name must not hang replay.
  m->fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (m->fd < 0) return Status::FromErrno(errno, "journal: opening " + path);
  struct stat st;
  if (fstat(m->fd, &st) != 0) return Status::FromErrno(errno, "journal: " + path);
  if (!S_ISREG(st.st_mode)) return Status::InvalidArgument("journal: " + path + " is not a file");
  m->size = static_cast<size_t>(st.st_size);
  if (m->size == 0) return Status::Ok();
  void* p = mmap(nullptr, m->size, PROT_READ, MAP_PRIVATE, m->fd, 0);
  if (p == MAP_FAILED) return Status::FromErrno(errno, "journal: mapping " + path);
  m->addr = p;
  return Status::Ok();
}

Result<std::vector<uint64_t>> ListSegments(const std::string& disk_dir) {
  DIR* d = opendir(disk_dir.c_str());
  if (d == nullptr) return Status::FromErrno(errno, "journal: listing " + disk_dir);
  std::vector<uint64_t> numbers;
  while (const dirent* e = readdir(d)) {
    uint64_t n = 0;
    if (ParseSegmentName(e->d_name, &n)) numbers.push_back(n);
  }
  closedir(d);
  std::sort(numbers.begin(), numbers.end());
  return numbers;
}

}  // namespace xdisk::journal_files
