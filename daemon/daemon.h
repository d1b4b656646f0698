// Daemon: the whole xdisk-fuse process on one libuv loop. It wires the
// modules together (links, spans, exporter, importer, FUSE tree), owns the
// signal handles and runs the loop until a clean shutdown.
//
// Lifecycle (docs/xdisk-fuse.8 has the picture):
//   Run(): resolve exports (exit 2 on a bad one) -> listen -> connect ->
//          mount (if MOUNTPOINT) -> loop
//   SIGINT/SIGTERM or the mount going away: withdraw our spans (DELETE),
//          close BLK opens, close links gracefully, unmount, loop ends -> 0.
//   After start-up the control socket (--control, daemon/control/control_server.h)
//   answers xdiskctl, and SIGHUP re-parses the command line and its
//   configuration file and applies changed exports and connect targets
//   (daemon/daemon_control.h); a reload that does not parse changes nothing.
#pragma once

#include <uv.h>

#include <memory>

#include "daemon/base/options.h"

namespace xdisk {

class Daemon {
 public:
  explicit Daemon(DaemonOptions opts);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Runs until shutdown. Returns the process exit code: 0 after a clean
  // shutdown, 1 on a runtime failure (cannot bind, cannot mount), 2 on a bad
  // option value detected at startup (an unreadable export, say).
  int Run();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace xdisk
