#include "daemon/base/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

namespace xdisk {

namespace {

std::string DirName(const std::string& file) {
  size_t slash = file.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return file.substr(0, slash);
}

}  // namespace

// The temp name carries the pid so a crashed earlier run's leftover cannot
// be mistaken for ours; O_EXCL makes a collision an error rather than a
// shared file.
Status WriteFileAtomically(const std::string& file, const std::string& text, mode_t mode) {
  std::string tmp = file + ".tmp." + std::to_string(getpid());
  unlink(tmp.c_str());
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) return Status::FromErrno(errno, tmp + ": create");
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      Status s = Status::FromErrno(n < 0 ? errno : ENOSPC, tmp + ": write");
      close(fd);
      unlink(tmp.c_str());
      return s;
    }
    done += static_cast<size_t>(n);
  }
  // Without this fsync a crash after the rename could leave an empty file
  // under the final name, and the next start would refuse to run.
  if (fsync(fd) != 0) {
    Status s = Status::FromErrno(errno, tmp + ": fsync");
    close(fd);
    unlink(tmp.c_str());
    return s;
  }
  close(fd);
  if (rename(tmp.c_str(), file.c_str()) != 0) {
    Status s = Status::FromErrno(errno, file + ": rename from " + tmp);
    unlink(tmp.c_str());
    return s;
  }
  // The rename itself is only durable once the directory is synced. A
  // failure here is not fatal to this run: the file exists and is correct.
  std::string dir = DirName(file);
  int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return Status::Ok();
}

}  // namespace xdisk
