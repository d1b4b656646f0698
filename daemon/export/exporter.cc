#include "daemon/export/exporter.h"

#include <cinttypes>

#include "daemon/base/log.h"

namespace xdisk {

using namespace dmsg;

BlkCheck ValidateBlkRequest(uint32_t base_cmd, const BlkIo& io, uint64_t media_bytes,
                            uint32_t blksize, bool read_only) {
  char why[160];
  if (base_cmd == kBlkFlush) {
    // DragonFly copies the bio's (normally zero) range into a flush; a flush
    // is always of the whole device, so the range is not checked.
    return {};
  }
  if (base_cmd == kBlkWrite && read_only) return {kErrIo, "write to a read-only export"};
  if (io.bytes == 0) return {kErrParam, "zero length"};
  if (base_cmd != kBlkFreeblks && io.bytes > kAuxMax) {
    snprintf(why, sizeof why, "length %u over the 1 MiB limit", io.bytes);
    return {kErrParam, why};
  }
  if (io.offset % blksize != 0 || io.bytes % blksize != 0) {
    snprintf(why, sizeof why, "offset %" PRIu64 " length %u not aligned to %u", io.offset, io.bytes,
             blksize);
    return {kErrParam, why};
  }
  if (io.offset > media_bytes || io.bytes > media_bytes - io.offset) {
    snprintf(why, sizeof why, "range %" PRIu64 "+%u past the end (%" PRIu64 ")", io.offset,
             io.bytes, media_bytes);
    return {kErrParam, why};
  }
  if (base_cmd == kBlkFreeblks && read_only) return {kErrIo, "trim on a read-only export"};
  return {};
}

uint32_t DmsgErrorFor(const Status& s) {
  if (s.ok()) return 0;
  if (s.kind() == Status::Kind::kInvalidArgument) return kErrParam;
  return kErrIo;
}

// ---- ExportedDisk ----

struct ExportedDisk::Request {
  Link* link = nullptr;
  Transaction* txn = nullptr;  // nullptr once the transaction is gone
  uint32_t cmd = 0;
  size_t charged = 0;
};

ExportedDisk::ExportedDisk(Exporter* owner, ResolvedExport res, std::unique_ptr<LocalDisk> disk)
    : owner_(owner), res_(std::move(res)), disk_(std::move(disk)) {
  // Advertise whole blocks only: xdisk computes blocks = bytes / blksize.
  media_bytes_ = disk_->size() - disk_->size() % res_.blksize;
  span_.peer_type = kPeerBlock;
  span_.pfs_type = kPfsTypeServer;
  span_.proto_version = kSpanProtoVersion;
  span_.media_bytes = media_bytes_;
  span_.blksize = res_.blksize;
  span_.peer_label = res_.label;
  span_.pfs_label = res_.serial;
  auto uuid = UuidFromString(res_.uuid_text);
  if (uuid.ok()) span_.pfs_id = *uuid;
}

ExportedDisk::~ExportedDisk() = default;

TransactionHandler* ExportedDisk::OnChildCreate(Link&, Transaction& parent, Transaction& child,
                                                const Frame&) {
  const bool under_span = parent.handler != this;
  switch (child.cmd) {
    case kBlkOpen:
      return under_span ? this : nullptr;
    case kBlkRead:
    case kBlkWrite:
    case kBlkFlush:
    case kBlkFreeblks:
      return this;
    default:
      return nullptr;  // NOSUPP, as DragonFly's exporter answers (§7.6)
  }
}

void ExportedDisk::OnMessage(Link& link, Transaction& t, Frame& f) {
  const uint32_t cmd = f.hdr.cmd;
  if (t.cmd == kBlkOpen) {
    if (cmd & kFlagCreate) {
      // Writes are allowed whatever the modes say: DragonFly's xdisk opens
      // read-only and then writes (§7.3).
      XLOG(kDebug, link.name(), "%s: BLK_OPEN modes %#x", res_.serial.c_str(),
           BlkOpen::Decode(f.ext_span()).modes);
      link.Reply(&t, 0, cmd & kFlagDelete);
    }
    return;  // the client's DELETE is answered by the link
  }
  if (cmd & kFlagCreate) Serve(link, t, f);
}

void ExportedDisk::CloseDisk() {
  if (disk_ == nullptr || closing_) return;
  closing_ = true;
  // The callback may destroy the LocalDisk (local_disk.h); nothing runs on
  // it afterwards, and Serve() refuses new requests from here on.
  disk_->CloseWhenIdle([this] { disk_.reset(); });
}

void ExportedDisk::Serve(Link& link, Transaction& t, Frame& f) {
  const BlkIo io = BlkIo::Decode(f.ext_span());
  const BlkCheck check = ValidateBlkRequest(t.cmd, io, media_bytes_, res_.blksize, res_.read_only);
  if (check.error != 0) {
    XLOG(kDebug, link.name(), "%s: %s refused (%s): %s", res_.serial.c_str(),
         CommandName(t.cmd).c_str(), ErrorName(check.error).c_str(), check.why.c_str());
    link.Reply(&t, check.error, true);
    return;
  }
  if (disk_ == nullptr || closing_) {
    // Removed (Exporter::Remove): the span is gone and the file closing.
    link.Reply(&t, kErrIo, true);
    return;
  }
  auto r = std::make_shared<Request>();
  r->link = &link;
  r->txn = &t;
  r->cmd = t.cmd;
  t.user = r.get();
  t.deferred = true;
  // Memory-backed exports (tmpfs) with nothing else in flight: serve reads
  // and writes right here on the loop thread. The queue is empty, so no
  // ordering is bypassed, and two thread hand-offs are saved (QD1 latency).
  if (disk_->memory_backed() && disk_->in_flight() == 0 &&
      (t.cmd == kBlkRead || (t.cmd == kBlkWrite && f.aux.size() == io.bytes))) {
    dmsg::ByteBuffer data;
    Status s = t.cmd == kBlkRead ? disk_->ReadNow(io.offset, io.bytes, &data)
                                 : disk_->WriteNow(io.offset, f.aux);
    Finish(r.get(), s, std::move(data));
    return;
  }
  switch (t.cmd) {
    case kBlkRead:
      r->charged = io.bytes;
      owner_->Charge(link, r->charged);
      disk_->Read(io.offset, io.bytes, [this, r](Status s, dmsg::ByteBuffer data) {
        Finish(r.get(), s, std::move(data));
      });
      break;
    case kBlkWrite: {
      // A short aux is completed with zeros, a long one cut (§7.4). The
      // frame is ours to take: no copy of the data.
      dmsg::ByteBuffer data = std::move(f.aux);
      data.resize(io.bytes, 0);
      r->charged = io.bytes;
      owner_->Charge(link, r->charged);
      disk_->Write(io.offset, std::move(data), [this, r](Status s) { Finish(r.get(), s, {}); });
      break;
    }
    case kBlkFlush:
      disk_->Flush([this, r](Status s) { Finish(r.get(), s, {}); });
      break;
    case kBlkFreeblks:
      disk_->Trim(io.offset, io.bytes, [this, r](Status s) { Finish(r.get(), s, {}); });
      break;
  }
}

void ExportedDisk::Finish(Request* r, const Status& s, dmsg::ByteBuffer&& data) {
  if (r->txn == nullptr) return;  // the link or the transaction went away
  Transaction* t = r->txn;
  Link* link = r->link;
  owner_->Release(*link, r->charged);
  r->charged = 0;
  t->user = nullptr;
  r->txn = nullptr;
  if (!s.ok()) {
    XLOG(kWarning, link->name(), "%s: %s failed: %s", res_.serial.c_str(),
         CommandName(r->cmd).c_str(), s.message().c_str());
    link->Reply(t, DmsgErrorFor(s), true);
    return;
  }
  if (r->cmd == kBlkRead) {
    link->SendOwned(t, kLnkError, kFlagDelete, {}, std::move(data), 0);
  } else {
    link->Reply(t, 0, true);
  }
}

void ExportedDisk::OnFreed(Link& link, Transaction& t) {
  auto* r = static_cast<Request*>(t.user);
  if (r == nullptr) return;
  owner_->Release(link, r->charged);
  r->charged = 0;
  r->txn = nullptr;
  t.user = nullptr;
}

// ---- Exporter ----

Exporter::Exporter(uv_loop_t* loop, SpanRegistry* registry, const Uuid& host_uuid)
    : loop_(loop), registry_(registry), host_uuid_(host_uuid) {}

Exporter::~Exporter() = default;

Status Exporter::Add(const ResolvedExport& res) {
  if (disks_.count(res.serial))
    return Status::InvalidArgument("serial '" + res.serial + "' is already exported");
  auto disk = LocalDisk::Open(loop_, res.path, res.read_only);
  if (!disk.ok()) return disk.status();
  // The span advertises whole blocks only, and every importer refuses a
  // disk of none: exporting it would only make a disk nobody can use.
  if (const uint64_t bytes = disk.value()->size(); bytes / res.blksize == 0)
    return Status::InvalidArgument(res.path + ": " + std::to_string(bytes) +
                                   " bytes, less than one block of " + std::to_string(res.blksize) +
                                   " (importers refuse a zero-size disk)");
  auto ed = std::make_unique<ExportedDisk>(this, res, std::move(disk.value()));
  dmsg::LnkSpan span = ed->span();
  span.peer_id = host_uuid_;
  ed->span_id = registry_->AddLocalSpan(span, ed.get());
  XLOG(kInfo, "export " + res.serial, "%s: %" PRIu64 " bytes, blksize %u%s, label '%s', uuid %s",
       res.path.c_str(), span.media_bytes, res.blksize, res.read_only ? ", read-only" : "",
       res.label.c_str(), res.uuid_text.c_str());
  disks_[res.serial] = std::move(ed);
  return Status::Ok();
}

bool Exporter::Remove(const std::string& serial) {
  auto it = disks_.find(serial);
  if (it == disks_.end()) return false;
  registry_->RemoveLocalSpan(it->second->span_id);
  // Transactions on links may still name this handler until the peers
  // answer our DELETE, and disk I/O may be running: keep the object until
  // the Exporter goes away, but close the file once its I/O drained, so
  // that the device is free again (and add/remove cycles leak nothing but
  // this small object).
  ExportedDisk* ed = it->second.get();
  retiring_.push_back(std::move(it->second));
  disks_.erase(it);
  ed->CloseDisk();
  return true;
}

void Exporter::Charge(Link& link, size_t bytes) {
  if (bytes == 0) return;
  size_t& n = inflight_[&link];
  n += bytes;
  if (n > kLinkBudgetBytes) link.SetReadPaused(true);
}

void Exporter::Release(Link& link, size_t bytes) {
  if (bytes == 0) return;
  auto it = inflight_.find(&link);
  if (it == inflight_.end()) return;
  it->second -= std::min(it->second, bytes);
  if (it->second < kLinkBudgetBytes / 2) link.SetReadPaused(false);
  if (it->second == 0) inflight_.erase(it);
}

}  // namespace xdisk
