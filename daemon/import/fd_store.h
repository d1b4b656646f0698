// The systemd side of surviving a restart: under a service manager
// (NOTIFY_SOCKET set, Type=notify), the daemon keeps the /dev/fuse
// descriptor of its mount in systemd's file descriptor store
// (FileDescriptorStoreMax= in the unit) instead of a keeper process. After
// a crash (Restart=on-failure) or `systemctl restart`, systemd passes the
// descriptor back (LISTEN_FDS / LISTEN_FDNAMES) and the new daemon adopts
// the mount (fusedev/fuse_server.h, ADOPTION). See docs/xdisk-fuse.8,
// SURVIVING RESTARTS.
//
// Thin wrappers over libsystemd's sd_pid_notify_with_fds and
// sd_listen_fds_with_names; errors are returned, never fatal.
#pragma once

#include <string>

#include "proto/status.h"

namespace xdisk {

inline constexpr char kFuseFdName[] = "fuse";

// True when a service manager listens for notifications (NOTIFY_SOCKET).
bool UnderServiceManager();

// The descriptor systemd passed under `name`, or -1. Takes the LISTEN_*
// variables out of the environment; other passed descriptors are closed.
int TakeStoredFd(const std::string& name);

// Hands a copy of `fd` to the store under `name` ("FDSTORE=1").
Status StoreFd(int fd, const std::string& name);
// Drops the store's copy ("FDSTOREREMOVE=1"); best effort.
void RemoveStoredFd(const std::string& name);

// True when the service manager is restarting our unit (`systemctl
// restart`: a job of type restart, try-restart or reload-or-restart is
// pending for it), asked over D-Bus with a 1 s timeout. A SIGTERM is then
// the stop half of a restart, not a stop: the daemon leaves the mount to the
// fd store. False when anything cannot be asked. Blocks the caller while it
// asks; call only on SIGTERM under a service manager.
bool ServiceRestartPending();

// READY=1 / STOPPING=1; best effort, no-ops without a service manager.
void NotifyReady();
void NotifyStopping();

}  // namespace xdisk
