#include "daemon/import/fd_store.h"

#include <systemd/sd-bus.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-login.h>
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

bool ServiceRestartPending() {
  char* unit = nullptr;
  if (sd_pid_get_unit(getpid(), &unit) < 0 || unit == nullptr) return false;
  sd_bus* bus = nullptr;
  char* unit_path = nullptr;
  sd_bus_error error = SD_BUS_ERROR_NULL;
  sd_bus_message* reply = nullptr;
  char* type = nullptr;
  bool restart = false;
  if (sd_bus_open_system(&bus) >= 0 && sd_bus_set_method_call_timeout(bus, 1000000) >= 0 &&
      sd_bus_path_encode("/org/freedesktop/systemd1/unit", unit, &unit_path) >= 0 &&
      sd_bus_get_property(bus, "org.freedesktop.systemd1", unit_path,
                          "org.freedesktop.systemd1.Unit", "Job", &error, &reply, "(uo)") >= 0) {
    uint32_t id = 0;
    const char* job_path = nullptr;
    if (sd_bus_message_read(reply, "(uo)", &id, &job_path) >= 0 && id != 0 &&
        sd_bus_get_property_string(bus, "org.freedesktop.systemd1", job_path,
                                   "org.freedesktop.systemd1.Job", "JobType", &error, &type) >= 0) {
      std::string t = type;
      restart = t == "restart" || t == "try-restart" || t == "reload-or-restart";
    }
  }
  free(type);
  sd_bus_message_unref(reply);
  sd_bus_error_free(&error);
  free(unit_path);
  sd_bus_unref(bus);
  free(unit);
  return restart;
}

void NotifyReady() { sd_notify(0, "READY=1"); }
void NotifyStopping() { sd_notify(0, "STOPPING=1"); }

}  // namespace xdisk
