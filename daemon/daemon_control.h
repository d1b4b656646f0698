// DaemonControl: the running daemon as seen and changed through the control
// API (daemon/control/control_service.h) and by SIGHUP reloads.
//
// Queries read the live modules: the LinkTable's links, the Exporter's
// exports, the Importer's disks and their names in the DiskTree. Changes go
// through the same module calls the start-up path uses: Exporter::Add and
// Remove, LinkTable::Connect and Disconnect. DaemonControl keeps the list of
// connect targets (LinkTable does not expose its connectors).
//
// Reload (SIGHUP): the daemon re-parses its command line (and with it any
// configuration file) and hands the result to Reload(), which makes the
// running exports and connect targets match it and changes nothing else:
//   * every export spec is parsed and resolved, and the set checked with
//     CheckUniqueSerials, before anything changes; any failure aborts the
//     whole reload (logged) and the running configuration stays;
//   * exports are compared by resolved serial: a serial no longer wanted is
//     withdrawn, a new one is added, and one whose resolved identity changed
//     (path, label, uuid, ro, blksize) is withdrawn and added again; the
//     others, and the links carrying them, are not touched;
//   * connect targets are compared as HOST:PORT text: targets no longer
//     wanted are disconnected, new ones connected; links to unchanged
//     targets, and accepted links, are not touched;
//   * --log-level / -v take effect; options that need a restart (--listen,
//     MOUNTPOINT, --state-dir, --keys, --hostname, --control) are logged as
//     such and otherwise ignored.
// Exports and targets added or removed with xdiskctl are runtime changes:
// the next reload makes the daemon match its configuration again.
//
// Threading: loop thread only. The modules in Parts must outlive this
// object; `importer` and `tree` may be null (no MOUNTPOINT).
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "daemon/base/options.h"
#include "daemon/control/control_service.h"
#include "daemon/export/export_identity.h"
#include "proto/status.h"

namespace xdisk {

class Exporter;
class Importer;
class LinkTable;
class Relay;
namespace fusedev {
class DiskTree;
}

// What a reload changes. Pure data; see PlanReload.
struct ReloadPlan {
  std::vector<std::string> remove_exports;  // serials, withdrawn first
  std::vector<ResolvedExport> add_exports;  // then added, in config order
  std::vector<HostPort> disconnect;
  std::vector<HostPort> connect;
  bool empty() const {
    return remove_exports.empty() && add_exports.empty() && disconnect.empty() && connect.empty();
  }
};

// Diffs the running exports and connect targets against the wanted ones.
// Pure; unit tested. Duplicate wanted targets are connected once.
ReloadPlan PlanReload(const std::vector<ResolvedExport>& running_exports,
                      const std::vector<HostPort>& running_connects,
                      const std::vector<ResolvedExport>& wanted_exports,
                      const std::vector<HostPort>& wanted_connects);

// True if two resolutions describe the same export (serial, target,
// advertised identity and access).
bool SameExport(const ResolvedExport& a, const ResolvedExport& b);

class DaemonControl : public control::ControlBackend {
 public:
  struct Parts {
    uv_loop_t* loop = nullptr;
    LinkTable* table = nullptr;
    Exporter* exporter = nullptr;
    const Importer* importer = nullptr;       // null without MOUNTPOINT
    const fusedev::DiskTree* tree = nullptr;  // null without MOUNTPOINT
    const Relay* relay = nullptr;             // null with --no-relay
    // The mountpoint as realpath(3) gave it before mounting (how
    // /proc/self/mountinfo names it); empty without MOUNTPOINT.
    std::string mount_real;
    // Fills DaemonInfo's protection, keeper_pid, restarts and resend.
    std::function<void(control::DaemonInfo*)> describe_survival;
    // Starts a live restart (daemon/daemon.cc); an error if it cannot.
    std::function<Status()> restart;
  };

  // `opts` are the options the daemon started with; their connect targets
  // are taken as already connected. `hostname` is the one in effect.
  DaemonControl(Parts parts, const DaemonOptions& opts, std::string hostname);

  // Applies a fresh parse of the configuration (see the top of this file).
  // Returns an error, changing nothing, if the new exports do not resolve.
  Status Reload(const DaemonOptions& fresh);

  // control::ControlBackend
  control::DaemonInfo DescribeDaemon() const override;
  std::vector<control::LinkInfo> Links() const override;
  std::vector<control::DiskInfo> Disks() const override;
  std::vector<control::ExportInfo> Exports() const override;
  std::vector<control::DiskStats> Stats() const override;
  std::vector<control::RelayedSpanInfo> RelayedSpans() const override;
  Result<control::ExportInfo> AddExport(const std::string& raw, const ExportSpec& spec) override;
  Result<std::string> RemoveExport(const std::string& serial) override;
  Result<std::string> Connect(const HostPort& addr) override;
  Result<std::string> Disconnect(const HostPort& addr) override;
  Result<std::string> Restart() override;

 private:
  Status CheckNotInMount(const std::string& path) const;
  std::vector<ResolvedExport> RunningExports() const;
  void NoteRestartOnly(const DaemonOptions& fresh) const;

  Parts parts_;
  DaemonOptions opts_;  // as started; exports/connect/verbosity follow reloads
  std::string hostname_;
  std::vector<HostPort> connects_;  // connect targets in effect
  uint64_t started_ms_;
  int64_t loop_to_wall_ms_;  // add to loop time (uv_now) for wall-clock time
};

}  // namespace xdisk
