#include "daemon/fd_store.h"

#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace xdisk {

bool UnderServiceManager() {
  const char* s = getenv("NOTIFY_SOCKET");
  return s != nullptr && *s != '\0';
}

int TakeStoredFd(const std::string& name) {
  char** names = nullptr;
  int n = sd_listen_fds_with_names(1, &names);
  int found = -1;
  for (int i = 0; i < n; i++) {
    int fd = SD_LISTEN_FDS_START + i;
    if (found < 0 && names != nullptr && names[i] != nullptr && name == names[i]) {
      found = fd;  // sd_listen_fds set O_CLOEXEC on it.
    } else {
      close(fd);
    }
  }
  if (names != nullptr) {
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
  }
  return found;
}

Status StoreFd(int fd, const std::string& name) {
  std::string text = "FDSTORE=1\nFDNAME=" + name;
  int r = sd_pid_notify_with_fds(0, 0, text.c_str(), &fd, 1);
  if (r < 0) return Status::FromErrno(-r, "systemd fd store");
  if (r == 0) return Status::Unavailable("systemd fd store: no service manager (NOTIFY_SOCKET)");
  return Status::Ok();
}

void RemoveStoredFd(const std::string& name) {
  std::string text = "FDSTOREREMOVE=1\nFDNAME=" + name;
  sd_pid_notify(0, 0, text.c_str());
}

void NotifyReady() { sd_notify(0, "READY=1"); }
void NotifyStopping() { sd_notify(0, "STOPPING=1"); }

}  // namespace xdisk
