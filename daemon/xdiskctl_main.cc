// xdiskctl: asks a running xdisk-fuse over its control socket. Thin glue:
// arguments and output in daemon/control/xdiskctl.h, the socket in
// daemon/control/control_client.h.
#include <cstdio>
#include <ctime>

#include "config.h"
#include "daemon/control/control_client.h"
#include "daemon/control/control_server.h"
#include "daemon/control/xdiskctl.h"

namespace {

uint64_t WallClockMs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000 + static_cast<uint64_t>(ts.tv_nsec) / 1000000;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace xdisk;
  ctl::CtlArgs args;
  auto parsed = ctl::ParseCtlArgs(argc, argv, &args);
  if (!parsed.ok()) {
    fprintf(stderr, "xdiskctl: %s\nTry 'xdiskctl --help'.\n", parsed.status().message().c_str());
    return ctl::kExitUsage;
  }
  if (*parsed == ctl::CtlOutcome::kHelp) {
    fputs(ctl::CtlUsage().c_str(), stdout);
    return ctl::kExitOk;
  }
  if (*parsed == ctl::CtlOutcome::kVersion) {
    printf("xdiskctl %s (control protocol %u)\n", XDISK_VERSION, control::kControlVersion);
    return ctl::kExitOk;
  }
  const std::string path =
      args.control_path.empty() ? control::kDefaultControlPath : args.control_path;
  auto client = control::ControlClient::Connect(path, args.timeout_ms);
  if (!client.ok()) {
    fprintf(stderr, "xdiskctl: %s\n", client.status().message().c_str());
    // A path that cannot be a socket address is the operator's mistake
    // (ParseCtlArgs catches it first; this is the backstop).
    return client.status().kind() == Status::Kind::kInvalidArgument ? ctl::kExitUsage
                                                                    : ctl::kExitUnreachable;
  }
  auto resp = (*client)->Call(args.request);
  if (!resp.ok()) {
    fprintf(stderr, "xdiskctl: %s\n", resp.status().message().c_str());
    // Something answered but not in our protocol: that is the daemon's
    // error to report, not a failure to reach it.
    return resp.status().kind() == Status::Kind::kProtocol ? ctl::kExitDaemonError
                                                           : ctl::kExitUnreachable;
  }
  const uint64_t now = WallClockMs();
  if (args.json) fputs(ctl::FormatJson(args.request, *resp, now).c_str(), stdout);
  if (resp->has_error()) {
    fprintf(stderr, "xdiskctl: %s\n", ctl::TerminalSafe(resp->error().message()).c_str());
    return ctl::kExitDaemonError;
  }
  if (!args.json) fputs(ctl::FormatHuman(args.request, *resp, now).c_str(), stdout);
  return ctl::kExitOk;
}
