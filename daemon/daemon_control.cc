#include "daemon/daemon_control.h"

#include <unistd.h>

#include <ctime>
#include <fstream>
#include <iterator>
#include <set>

#include "config.h"
#include "daemon/base/log.h"
#include "daemon/export/exporter.h"
#include "daemon/import/importer.h"
#include "daemon/import/own_mount.h"
#include "daemon/link/link_table.h"
#include "daemon/link/relay.h"
#include "fusedev/disk_tree.h"

namespace xdisk {

namespace {

uint64_t WallClockMs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000 + static_cast<uint64_t>(ts.tv_nsec) / 1000000;
}

const char* LinkStateName(Link::State s) {
  switch (s) {
    case Link::State::kConnecting:
      return "connecting";
    case Link::State::kCrypto:
      return "crypto";
    case Link::State::kHandshake:
      return "handshake";
    case Link::State::kUp:
      return "up";
    case Link::State::kClosing:
      return "closing";
    case Link::State::kClosed:
      return "closed";
  }
  return "unknown";
}

const char* DiskStateName(ImportedDisk::State s) {
  switch (s) {
    case ImportedDisk::State::kOnline:
      return "online";
    case ImportedDisk::State::kBlocked:
      return "blocked";
    case ImportedDisk::State::kOffline:
      return "offline";
  }
  return "unknown";
}

// ImportedDisk::PathInfo names links as Link::name() does ("link
// 10.0.0.2:987"); the control API shows the peer alone, as `links` does.
std::string PeerOfLinkName(const std::string& name) {
  constexpr std::string_view kPrefix = "link ";
  return name.starts_with(kPrefix) ? name.substr(kPrefix.size()) : name;
}

control::ExportInfo DescribeExport(const ExportedDisk& d) {
  const ResolvedExport& r = d.resolved();
  control::ExportInfo e;
  e.set_serial(r.serial);
  e.set_path(r.path);
  e.set_label(r.label);
  e.set_uuid(r.uuid_text);
  e.set_read_only(r.read_only);
  e.set_blksize(r.blksize);
  e.set_size(d.span().media_bytes);
  return e;
}

void FillOpStats(const LatencyHistogram& h, uint64_t ops, uint64_t bytes, control::OpStats* o) {
  o->set_ops(ops);
  o->set_bytes(bytes);
  o->set_completed(h.count());
  o->set_mean_us(h.mean_us());
  o->set_p50_us(h.Percentile(50));
  o->set_p90_us(h.Percentile(90));
  o->set_p99_us(h.Percentile(99));
  o->set_p999_us(h.Percentile(99.9));
}

bool HasTarget(const std::vector<HostPort>& v, const HostPort& hp) {
  for (const HostPort& x : v)
    if (x.ToString() == hp.ToString()) return true;
  return false;
}

}  // namespace

bool SameExport(const ResolvedExport& a, const ResolvedExport& b) {
  return a.serial == b.serial && a.canonical_path == b.canonical_path && a.label == b.label &&
         a.uuid_text == b.uuid_text && a.read_only == b.read_only && a.blksize == b.blksize;
}

ReloadPlan PlanReload(const std::vector<ResolvedExport>& running_exports,
                      const std::vector<HostPort>& running_connects,
                      const std::vector<ResolvedExport>& wanted_exports,
                      const std::vector<HostPort>& wanted_connects) {
  ReloadPlan plan;
  for (const ResolvedExport& r : running_exports) {
    const ResolvedExport* w = nullptr;
    for (const ResolvedExport& x : wanted_exports)
      if (x.serial == r.serial) w = &x;
    if (w == nullptr || !SameExport(r, *w)) plan.remove_exports.push_back(r.serial);
  }
  for (const ResolvedExport& w : wanted_exports) {
    const ResolvedExport* r = nullptr;
    for (const ResolvedExport& x : running_exports)
      if (x.serial == w.serial) r = &x;
    if (r == nullptr || !SameExport(*r, w)) plan.add_exports.push_back(w);
  }
  for (const HostPort& r : running_connects)
    if (!HasTarget(wanted_connects, r)) plan.disconnect.push_back(r);
  for (const HostPort& w : wanted_connects)
    if (!HasTarget(running_connects, w) && !HasTarget(plan.connect, w)) plan.connect.push_back(w);
  return plan;
}

DaemonControl::DaemonControl(Parts parts, const DaemonOptions& opts, std::string hostname)
    : parts_(parts),
      opts_(opts),
      hostname_(std::move(hostname)),
      connects_(opts.connect),
      started_ms_(WallClockMs()),
      // uv_now() counts uv_hrtime() in milliseconds; fixing the offset once
      // keeps a link's "since" the same from one query to the next.
      loop_to_wall_ms_(static_cast<int64_t>(started_ms_) -
                       static_cast<int64_t>(uv_hrtime() / 1000000)) {}

std::vector<ResolvedExport> DaemonControl::RunningExports() const {
  std::vector<ResolvedExport> out;
  for (const auto& [serial, d] : parts_.exporter->disks()) out.push_back(d->resolved());
  return out;
}

// ---- queries ----

control::DaemonInfo DaemonControl::DescribeDaemon() const {
  control::DaemonInfo d;
  d.set_hostname(hostname_);
  d.set_version(XDISK_VERSION);
  d.set_pid(static_cast<uint32_t>(getpid()));
  d.set_started_ms(started_ms_);
  d.set_mountpoint(opts_.mountpoint);
  for (size_t i = 0; i < opts_.listen.size(); ++i) {
    // Show the bound port, which differs from the option for port 0.
    HostPort hp = opts_.listen[i];
    int port = parts_.table->listen_port(i);
    if (port > 0) hp.port = static_cast<uint16_t>(port);
    d.add_listen(hp.ToString());
  }
  for (const HostPort& hp : connects_) d.add_connect(hp.ToString());
  if (parts_.describe_survival) parts_.describe_survival(&d);
  return d;
}

Result<std::string> DaemonControl::Restart() {
  if (!parts_.restart) return Status::Unavailable("this daemon cannot restart itself");
  if (Status s = parts_.restart(); !s.ok()) return s;
  return std::string("restarting: the daemon re-executes itself and keeps its mount");
}

std::vector<control::LinkInfo> DaemonControl::Links() const {
  std::vector<control::LinkInfo> out;
  for (const Link* l : parts_.table->links()) {
    control::LinkInfo li;
    li.set_peer(l->peer());
    li.set_direction(l->direction() == Link::Direction::kIncoming ? "in" : "out");
    li.set_state(LinkStateName(l->state()));
    // up_since_ms() is loop time; the API speaks wall-clock time.
    if (l->up())
      li.set_since_ms(
          static_cast<uint64_t>(static_cast<int64_t>(l->up_since_ms()) + loop_to_wall_ms_));
    li.set_bytes_in(l->bytes_in());
    li.set_bytes_out(l->bytes_out());
    li.set_encryption(l->encryption());
    if (l->up()) li.set_peer_label(l->peer_conn().peer_label);
    if (parts_.relay != nullptr) {
      const Relay::Counters c = parts_.relay->counters(l);
      li.set_relayed_txns(c.txns);
      li.set_relayed_bytes(c.bytes);
    }
    out.push_back(std::move(li));
  }
  // Connect targets between attempts have no link: show them too, or an
  // operator cannot tell a target that keeps failing from one never given.
  for (const LinkTable::ConnectTarget& t : parts_.table->connect_targets()) {
    if (t.has_link) continue;
    control::LinkInfo li;
    li.set_peer(t.addr.ToString());
    li.set_direction("out");
    li.set_state(t.state);
    if (t.next_retry_ms != 0)
      li.set_next_retry_ms(
          static_cast<uint64_t>(static_cast<int64_t>(t.next_retry_ms) + loop_to_wall_ms_));
    li.set_last_error(t.last_error);
    li.set_encryption("none");
    out.push_back(std::move(li));
  }
  // Recently refused addresses: why, when and how often (the log has the
  // first of each reason only).
  for (const LinkTable::Refusal& r : parts_.table->refusals()) {
    control::LinkInfo li;
    li.set_peer(r.host);
    li.set_direction(r.direction);
    li.set_state("refused");
    li.set_since_ms(static_cast<uint64_t>(static_cast<int64_t>(r.at_ms) + loop_to_wall_ms_));
    li.set_encryption("-");
    li.set_refusal_kind(r.kind);
    li.set_last_error(r.reason);
    li.set_refusals(r.count);
    out.push_back(std::move(li));
  }
  return out;
}

std::vector<control::DiskInfo> DaemonControl::Disks() const {
  std::vector<control::DiskInfo> out;
  if (parts_.importer == nullptr) return out;
  for (const auto& [serial, disk] : parts_.importer->disks()) {
    control::DiskInfo di;
    di.set_serial(serial);
    di.set_size(disk->size());
    di.set_blksize(disk->block_size());
    if (parts_.tree != nullptr) {
      fusedev::Ino ino = parts_.tree->InoOf(serial);
      const fusedev::DiskInfo* info = ino ? parts_.tree->info(ino) : nullptr;
      if (info != nullptr && parts_.tree->IsVisible(ino)) {
        di.add_names(parts_.tree->XaName(serial));
        di.add_names("serno/" + serial);
        if (!info->label.empty()) di.add_names("by-label/" + info->label);
        if (!info->uuid.empty()) di.add_names("by-uuid/" + info->uuid);
      }
    }
    for (const ImportedDisk::PathInfo& p : disk->paths()) {
      control::PathInfo* pi = di.add_paths();
      pi->set_link(PeerOfLinkName(p.link));
      pi->set_dist(p.dist);
      pi->set_active(p.active);
    }
    const ImportedDisk::Stats s = disk->stats();
    di.set_state(DiskStateName(disk->state()));
    di.set_inflight(s.inflight);
    di.set_queued(s.queued);
    di.set_blocked_since_ms(s.blocked_since_ms);
    di.set_journal_bytes(s.journal_bytes);
    di.set_journal_pending(s.journal_pending);
    di.set_journal_pending_bytes(s.journal_pending_bytes);
    di.set_errors(s.errors);
    out.push_back(std::move(di));
  }
  return out;
}

std::vector<control::ExportInfo> DaemonControl::Exports() const {
  std::vector<control::ExportInfo> out;
  for (const auto& [serial, d] : parts_.exporter->disks()) out.push_back(DescribeExport(*d));
  return out;
}

std::vector<control::DiskStats> DaemonControl::Stats() const {
  std::vector<control::DiskStats> out;
  if (parts_.importer == nullptr) return out;
  for (const auto& [serial, disk] : parts_.importer->disks()) {
    const ImportedDisk::Stats s = disk->stats();
    control::DiskStats ds;
    ds.set_serial(serial);
    FillOpStats(s.latency_of(IoKind::kRead), s.reads, s.read_bytes, ds.mutable_read());
    FillOpStats(s.latency_of(IoKind::kWrite), s.writes, s.write_bytes, ds.mutable_write());
    FillOpStats(s.latency_of(IoKind::kFlush), s.flushes, 0, ds.mutable_flush());
    FillOpStats(s.latency_of(IoKind::kTrim), s.trims, s.trim_bytes, ds.mutable_trim());
    ds.set_errors(s.errors);
    ds.set_resent(s.resent);
    ds.set_reopens(s.reopens);
    out.push_back(std::move(ds));
  }
  return out;
}

std::vector<control::RelayedSpanInfo> DaemonControl::RelayedSpans() const {
  std::vector<control::RelayedSpanInfo> out;
  if (parts_.relay == nullptr) return out;
  for (const Relay::RelayedSpan& r : parts_.relay->relayed()) {
    control::RelayedSpanInfo info;
    info.set_to(r.to);
    info.set_from(r.from);
    info.set_dist(r.dist);
    info.set_serial(r.serial);
    info.set_label(r.label);
    out.push_back(std::move(info));
  }
  return out;
}

// ---- changes ----

Status DaemonControl::CheckNotInMount(const std::string& path) const {
  // Resolving or opening a path inside our own FUSE mount from the loop
  // thread would wait for an answer only this thread can give: the path is
  // resolved one component at a time and refused before any system call
  // reaches the mount, as named, as started, or bound elsewhere
  // (daemon/import/own_mount.h).
  if (opts_.mountpoint.empty()) return Status::Ok();
  std::vector<std::string> forbidden{LexicalAbsolute(opts_.mountpoint)};
  if (!parts_.mount_real.empty()) {
    forbidden.push_back(parts_.mount_real);
    for (std::string& m : MountsOfSameDevice(ReadMountInfo(), parts_.mount_real))
      forbidden.push_back(std::move(m));
  }
  auto resolved = ResolveAvoiding(path, forbidden);
  if (!resolved.ok() && resolved.status().kind() == Status::Kind::kInvalidArgument)
    return Status::InvalidArgument(resolved.status().message() +
                                   ": inside this daemon's mount; export it from another daemon");
  // Other failures (a missing file, a link loop) end it here too: the
  // export's own realpath(3) must not take a way this walk did not check.
  return resolved.status();
}

Result<control::ExportInfo> DaemonControl::AddExport(const std::string& raw,
                                                     const ExportSpec& spec) {
  if (Status s = CheckNotInMount(spec.path); !s.ok()) return s;
  auto res = ResolveExport(spec, opts_.state_dir, hostname_);
  if (!res.ok()) return res.status();
  std::vector<ResolvedExport> all = RunningExports();
  all.push_back(*res);
  if (Status s = CheckUniqueSerials(all); !s.ok()) return s;
  if (Status s = parts_.exporter->Add(*res); !s.ok()) return s;
  XLOG(kInfo, "control", "export %s added: %s", res->serial.c_str(), raw.c_str());
  return DescribeExport(*parts_.exporter->disks().at(res->serial));
}

Result<std::string> DaemonControl::RemoveExport(const std::string& serial) {
  if (!parts_.exporter->Remove(serial))
    return Status::NotFound("no export with serial '" + serial + "'");
  XLOG(kInfo, "control", "export %s removed", serial.c_str());
  return "export " + serial + " removed";
}

Result<std::string> DaemonControl::Connect(const HostPort& addr) {
  const std::string name = addr.ToString();
  if (HasTarget(connects_, addr)) return Status::InvalidArgument("already connecting to " + name);
  parts_.table->Connect(addr);
  connects_.push_back(addr);
  XLOG(kInfo, "control", "connecting to %s", name.c_str());
  return "connecting to " + name;
}

Result<std::string> DaemonControl::Disconnect(const HostPort& addr) {
  const std::string name = addr.ToString();
  if (!parts_.table->Disconnect(addr))
    return Status::NotFound("no connect target " + name +
                            " (links a peer opened to us cannot be disconnected)");
  std::erase_if(connects_, [&](const HostPort& hp) { return hp.ToString() == name; });
  XLOG(kInfo, "control", "disconnected from %s", name.c_str());
  return "disconnected from " + name;
}

// ---- reload ----

void DaemonControl::NoteRestartOnly(const DaemonOptions& fresh) const {
  auto note = [](bool changed, const char* what) {
    if (changed) XLOG(kInfo, "reload", "%s changed: takes effect at the next start", what);
  };
  auto hosts = [](const std::vector<HostPort>& v) {
    std::string s;
    for (const HostPort& hp : v) s += hp.ToString() + " ";
    return s;
  };
  note(hosts(fresh.listen) != hosts(opts_.listen), "--listen");
  note(fresh.mountpoint != opts_.mountpoint, "MOUNTPOINT");
  note(fresh.state_dir != opts_.state_dir, "--state-dir");
  note(fresh.keys_dir != opts_.keys_dir, "--keys");
  note(fresh.hostname != opts_.hostname, "--hostname");
  note(fresh.control_path != opts_.control_path, "--control");
}

Status DaemonControl::Reload(const DaemonOptions& fresh) {
  // Resolve everything first: a reload either applies as a whole or not at
  // all, so a typo in one export never withdraws the others.
  std::vector<ResolvedExport> wanted;
  for (const std::string& raw : fresh.exports) {
    auto spec = ParseExportSpec(raw);
    if (!spec.ok())
      return Status::InvalidArgument("--export " + raw + ": " + spec.status().message());
    if (Status s = CheckNotInMount(spec->path); !s.ok())
      return Status::InvalidArgument("--export " + raw + ": " + s.message());
    auto res = ResolveExport(*spec, opts_.state_dir, hostname_);
    if (!res.ok())
      return Status::InvalidArgument("--export " + raw + ": " + res.status().message());
    wanted.push_back(*res);
  }
  if (Status s = CheckUniqueSerials(wanted); !s.ok())
    return Status::InvalidArgument("--export: " + s.message());

  NoteRestartOnly(fresh);
  if (fresh.verbosity != opts_.verbosity) {
    SetLogLevel(static_cast<LogLevel>(fresh.verbosity));
    XLOG(kInfo, "reload", "log level %d", fresh.verbosity);
    opts_.verbosity = fresh.verbosity;
  }

  ReloadPlan plan = PlanReload(RunningExports(), connects_, wanted, fresh.connect);
  for (const std::string& serial : plan.remove_exports) {
    if (parts_.exporter->Remove(serial)) XLOG(kInfo, "reload", "export %s removed", serial.c_str());
  }
  for (const ResolvedExport& r : plan.add_exports) {
    if (Status s = parts_.exporter->Add(r); !s.ok()) {
      // The others still apply; this one is missing until the next reload.
      XLOG(kWarning, "reload", "export %s (%s) not added: %s", r.serial.c_str(), r.path.c_str(),
           s.message().c_str());
      continue;
    }
    XLOG(kInfo, "reload", "export %s added: %s", r.serial.c_str(), r.path.c_str());
  }
  for (const HostPort& hp : plan.disconnect) {
    parts_.table->Disconnect(hp);
    std::erase_if(connects_, [&](const HostPort& x) { return x.ToString() == hp.ToString(); });
    XLOG(kInfo, "reload", "disconnected from %s", hp.ToString().c_str());
  }
  for (const HostPort& hp : plan.connect) {
    parts_.table->Connect(hp);
    connects_.push_back(hp);
    XLOG(kInfo, "reload", "connecting to %s", hp.ToString().c_str());
  }
  if (plan.empty()) XLOG(kInfo, "reload", "no changes to exports or peers");
  opts_.exports = fresh.exports;
  opts_.connect = fresh.connect;
  return Status::Ok();
}

}  // namespace xdisk
