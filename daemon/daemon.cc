#include "daemon/daemon.h"

#include <unistd.h>

#include <csignal>
#include <cstring>

#include "daemon/link_table.h"
#include "daemon/log.h"
#include "daemon/peer_policy.h"
#include "daemon/span_registry.h"

namespace xdisk {

struct Daemon::Impl {
  explicit Impl(DaemonOptions o) : opts(std::move(o)), policy(opts.keys_dir) {}

  DaemonOptions opts;
  uv_loop_t loop;
  uv_signal_t sigint, sigterm;
  PeerPolicy policy;
  SpanRegistry registry;
  std::unique_ptr<LinkTable> table;
  bool stopping = false;
  int exit_code = 0;

  static void OnSignal(uv_signal_t* h, int signum) {
    auto* self = static_cast<Impl*>(h->data);
    XLOG(kInfo, "main", "%s: shutting down", strsignal(signum));
    self->Stop(0);
  }

  void Stop(int code) {
    if (stopping) return;
    stopping = true;
    exit_code = code;
    // Withdraw what we advertised before the links go, so peers see a clean
    // DELETE rather than a lost link.
    registry.RemoveAllLocalSpans();
    table->Shutdown([this] {
      uv_close(reinterpret_cast<uv_handle_t*>(&sigint), nullptr);
      uv_close(reinterpret_cast<uv_handle_t*>(&sigterm), nullptr);
    });
  }

  int Run() {
    uv_loop_init(&loop);
    std::string hostname = opts.hostname;
    if (hostname.empty()) {
      char buf[256] = {};
      gethostname(buf, sizeof buf - 1);
      hostname = buf;
    }
    LinkConfig config;
    config.label = hostname + "/xdisk-fuse";
    config.ping_interval_ms = opts.ping_interval_ms;
    config.dead_timeout_ms = opts.link_timeout_ms;
    table = std::make_unique<LinkTable>(&loop, config, &policy, &registry);

    for (const HostPort& hp : opts.listen) {
      Status s = table->Listen(hp);
      if (!s.ok()) {
        XLOG(kError, "main", "%s", s.message().c_str());
        exit_code = 1;
        table->Shutdown([] {});
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        return exit_code;
      }
    }
    for (const HostPort& hp : opts.connect) table->Connect(hp);

    uv_signal_init(&loop, &sigint);
    uv_signal_init(&loop, &sigterm);
    sigint.data = sigterm.data = this;
    uv_signal_start(&sigint, OnSignal, SIGINT);
    uv_signal_start(&sigterm, OnSignal, SIGTERM);
    signal(SIGPIPE, SIG_IGN);

    XLOG(kInfo, "main", "running (keys %s)", opts.keys_dir.c_str());
    uv_run(&loop, UV_RUN_DEFAULT);
    table.reset();
    int rc = uv_loop_close(&loop);
    if (rc != 0) XLOG(kWarning, "main", "loop closed with handles open: %s", uv_strerror(rc));
    XLOG(kInfo, "main", "exit %d", exit_code);
    return exit_code;
  }
};

Daemon::Daemon(DaemonOptions opts) : impl_(std::make_unique<Impl>(std::move(opts))) {}
Daemon::~Daemon() = default;
int Daemon::Run() { return impl_->Run(); }

}  // namespace xdisk
