// xdisk-fuse: thin main. Everything lives in daemon/daemon.cc.
#include <malloc.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>

#include "daemon/base/log.h"
#include "daemon/base/options.h"
#include "daemon/daemon.h"
#include "daemon/import/fd_store.h"
#include "daemon/import/journal.h"
#include "daemon/import/keeper.h"
#include "daemon/import/own_mount.h"
#include "daemon/link/keygen.h"

int main(int argc, char** argv) {
  // `xdisk-fuse keygen` (daemon/link/keygen.h) is a subcommand, not an option.
  if (argc >= 2 && std::string_view(argv[1]) == "keygen")
    return xdisk::KeygenMain(argc - 1, argv + 1);
  // SIGHUP reloads (daemon/daemon.cc), but only once the loop runs; until
  // then an early `systemctl reload` must not kill the daemon.
  signal(SIGHUP, SIG_IGN);
  xdisk::DaemonOptions opts;
  std::string out;
  auto parsed = xdisk::ParseOptions(argc, argv, &opts, &out);
  if (!parsed.ok()) {
    fprintf(stderr, "xdisk-fuse: %s\nTry 'xdisk-fuse --help'.\n",
            parsed.status().message().c_str());
    return 2;
  }
  if (*parsed == xdisk::ParseOutcome::kExitOk) {
    fputs(out.c_str(), stdout);
    return 0;
  }
  if (!opts.journal_dump.empty()) {
    xdisk::Status st = xdisk::Journal::Dump(opts.journal_dump, &out);
    fputs(out.c_str(), stdout);
    if (!st.ok()) {
      fprintf(stderr, "xdisk-fuse: --journal-dump %s: %s\n", opts.journal_dump.c_str(),
              st.ToString().c_str());
      return 1;
    }
    return 0;
  }
  // Disk I/O for exports runs on libuv's threadpool; the default of 4
  // threads caps a busy exporter. Must be set before the first uv call.
  setenv("UV_THREADPOOL_SIZE", "16", 0);
  // I/O buffers are up to 1 MiB and short-lived. Above glibc's default
  // mmap threshold each one would be a fresh mmap, page faults on every
  // touch, and a munmap: keep them on the heap, where freed memory is
  // reused. Peak RSS then follows the bytes in flight, as intended.
  // Threadpool workers would each get an arena holding its own freed
  // memory; two arenas bound that.
  mallopt(M_ARENA_MAX, 2);
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
  mallopt(M_TRIM_THRESHOLD, 16 << 20);
  xdisk::SetLogLevel(static_cast<xdisk::LogLevel>(opts.verbosity));
  // With a mountpoint, in a shell: this process becomes the keeper that
  // holds the mount and runs the daemon as its child (daemon/import/keeper.h).
  // Not under systemd (its fd store does that), not in the daemon the
  // keeper started, not in a daemon that re-executed itself.
  if (!opts.mountpoint.empty() && !opts.no_keeper && !xdisk::UnderServiceManager() &&
      getenv(xdisk::kEnvKeeperFd) == nullptr && getenv(xdisk::kEnvFuseFd) == nullptr) {
    return xdisk::RunKeeper(std::vector<std::string>(argv, argv + argc),
                            xdisk::LexicalAbsolute(opts.mountpoint));
  }
  xdisk::Daemon daemon(std::move(opts));
  return daemon.Run();
}
