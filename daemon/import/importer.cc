#include "daemon/import/importer.h"

#include <cinttypes>

#include "daemon/base/log.h"

namespace xdisk {

using namespace dmsg;

namespace {
constexpr size_t kMaxName = 63;  // xdisk keeps 63 characters (§6.3)

std::string Cut(const std::string& s) { return s.size() > kMaxName ? s.substr(0, kMaxName) : s; }
}  // namespace

std::string CheckImportSpan(const LnkSpan& span, std::string* serial, std::string* label,
                            uint32_t* blksize) {
  if (span.peer_type != kPeerBlock) return "not a block device span";
  *serial = Cut(span.pfs_label);
  *label = Cut(span.peer_label);
  if (serial->empty()) return "empty serial (pfs_label)";
  if (*serial == "." || *serial == ".." || serial->find('/') != std::string::npos)
    return "serial '" + *serial + "' is not usable as a file name";
  for (unsigned char ch : *serial)
    if (ch < 0x20 || ch == 0x7f) return "serial contains control characters";
  if (span.media_bytes == 0) return "zero-size disk";
  *blksize = span.blksize;
  if (*blksize < 512 || *blksize > 65536 || (*blksize & (*blksize - 1)) != 0)
    return "unusable block size " + std::to_string(span.blksize);
  if (span.media_bytes < *blksize)
    return "size " + std::to_string(span.media_bytes) + " is less than one block";
  return "";
}

Importer::Importer(uv_loop_t* loop, fusedev::DiskTree* tree, ImportedDisk::Config config,
                   JournalConfig journal)
    : loop_(loop), tree_(tree), config_(config), journal_config_(std::move(journal)) {
  reconsider_timer_.Open(uv_timer_init, loop_);
  reconsider_timer_.get()->data = this;
  // Polls busy disks only; never keeps the loop alive on its own.
  uv_unref(reconsider_timer_.handle());
  restore_timer_.Open(uv_timer_init, loop_);
  restore_timer_.get()->data = this;
  uv_unref(restore_timer_.handle());
}

Status Importer::RecoverJournals() {
  if (journal_config_.dir.empty()) return Status::Ok();
  auto serials = Journal::ListDisks(journal_config_.dir);
  if (!serials.ok()) return serials.status();
  for (const std::string& serial : *serials) {
    ReplayReport report;
    auto j = Journal::OpenExisting(journal_config_, serial, &report);
    if (!j.ok() && j.status().kind() == Status::Kind::kNotFound) continue;  // nothing in it
    if (!j.ok()) {
      if (journal_config_.strict) return j.status();
      XLOG(kError, "disk " + serial, "journal not used: %s", j.status().ToString().c_str());
      continue;
    }
    if (!report.damage.empty() || report.torn_tail)
      XLOG(kWarning, "disk " + serial, "%s", report.ToString().c_str());
    std::unique_ptr<Journal> journal = std::move(*j);
    if (journal->pending().empty()) {
      if (Status st = journal->RemoveIfEmpty(); !st.ok())
        XLOG(kWarning, "disk " + serial, "journal: %s", st.ToString().c_str());
      continue;
    }
    const JournalDiskHeader& h = journal->header();
    auto disk = std::make_unique<ImportedDisk>(loop_, h.serial, h.size, h.blksize, config_);
    disk->AttachJournal(std::move(journal));
    WatchDrain(disk.get());
    if (tree_ != nullptr) {
      fusedev::DiskInfo info;
      info.serial = h.serial;
      info.label = h.label;
      info.size = h.size;
      info.blksize = h.blksize;
      tree_->AddOrUpdate(info, disk.get());
    }
    disks_.emplace(h.serial, std::move(disk));
  }
  return Status::Ok();
}

Importer::~Importer() = default;

void Importer::OnSpanAdded(const RemoteSpan& span) {
  std::string serial, label;
  uint32_t blksize = 0;
  std::string why = CheckImportSpan(span.info, &serial, &label, &blksize);
  if (span.info.peer_type != kPeerBlock) return;  // not ours to import, not an error
  if (!why.empty()) {
    XLOG(kWarning, span.link->name(), "not importing span '%s' from '%s': %s",
         span.info.pfs_label.c_str(), span.info.peer_label.c_str(), why.c_str());
    return;
  }
  if (span.info.pfs_label.size() > kMaxName || span.info.peer_label.size() > kMaxName)
    XLOG(kWarning, span.link->name(), "span '%s': names cut to %zu characters", serial.c_str(),
         kMaxName);
  // Once per span; the disk keeps its serno/, by-uuid/ and xaN names (the
  // tree skips the label by the same rule). Log() escapes what the peer sent.
  if (std::string bad = fusedev::DiskTree::LabelProblem(label); !bad.empty())
    XLOG(kWarning, span.link->name(), "span '%s': label '%s' gets no by-label name: %s",
         serial.c_str(), label.c_str(), bad.c_str());
  // The disk is presented with whole blocks only: the remote refuses (or
  // cannot serve) the partial block at the end, and xdisk itself sees
  // bytes / blksize blocks (docs/dmsg-protocol.md §6.4).
  const uint64_t size = span.info.media_bytes - span.info.media_bytes % blksize;
  if (size != span.info.media_bytes)
    XLOG(kInfo, span.link->name(),
         "span '%s': size %" PRIu64 " is not a multiple of its block size %u; presented as %" PRIu64
         " bytes",
         serial.c_str(), span.info.media_bytes, blksize, size);
  auto it = disks_.find(serial);
  if (it != disks_.end()) {
    ImportedDisk& d = *it->second;
    if (d.size() != size || d.block_size() != blksize) {
      XLOG(kWarning, span.link->name(),
           "not importing span '%s': size %" PRIu64
           "/%u differs from the disk already known "
           "under that serial (%" PRIu64 "/%u); two disks claim one serial",
           serial.c_str(), size, blksize, d.size(), d.block_size());
      // Considered again once that disk has no path left (Reconsider).
      refused_.emplace(span.id, span);
      return;
    }
  } else {
    bool refuse = false;
    auto journal = OpenJournalFor(JournalDiskHeader{serial, size, blksize, label}, &refuse);
    if (refuse) return;
    NewDisk(serial, size, blksize, std::move(journal));
    it = disks_.find(serial);
  }
  span_serial_[span.id] = serial;
  fusedev::DiskInfo info;
  info.serial = serial;
  info.label = label;
  info.uuid = IsNil(span.info.pfs_id) ? "" : UuidToString(span.info.pfs_id);
  info.size = size;
  info.blksize = blksize;
  it->second->AddPath(span);
  if (tree_ != nullptr) {
    tree_->AddOrUpdate(info, it->second.get());
    tree_->SetOnline(serial, true);
  }
}

std::unique_ptr<Journal> Importer::OpenJournalFor(const JournalDiskHeader& h, bool* refuse) {
  *refuse = false;
  if (journal_config_.dir.empty()) return nullptr;
  const std::string& serial = h.serial;
  // --sync=remote writes no journal (see importer.h); one left by an
  // earlier version is opened so that its records go out first.
  if (!journal_config_.synced && !Journal::MayHoldRecords(journal_config_.dir, serial))
    return nullptr;
  ReplayReport report;
  auto j = Journal::Open(journal_config_, h, &report);
  if (j.ok()) {
    if (!report.damage.empty() || report.torn_tail)
      XLOG(kWarning, "disk " + serial, "%s", report.ToString().c_str());
    return std::move(*j);
  }
  if (Journal::MayHoldRecords(journal_config_.dir, serial)) {
    // In use by another daemon, written for another size, unreadable:
    // running without it now would let its records be sent later,
    // over whatever is written meanwhile.
    XLOG(kError, "disk " + serial,
         "not imported: its journal %s/%s cannot be used (%s); fix that or move the "
         "directory away (xdisk-fuse --journal-dump shows what it holds); it is tried "
         "again when the disk is announced again (xdiskctl disconnect/connect, or a restart)",
         journal_config_.dir.c_str(), serial.c_str(), j.status().ToString().c_str());
    *refuse = true;
    return nullptr;
  }
  XLOG(kError, "disk " + serial, "running without a journal: %s", j.status().ToString().c_str());
  return nullptr;
}

ImportedDisk* Importer::NewDisk(const std::string& serial, uint64_t size, uint32_t blksize,
                                std::unique_ptr<Journal> journal) {
  auto disk = std::make_unique<ImportedDisk>(loop_, serial, size, blksize, config_);
  ImportedDisk* d = disk.get();
  disks_.emplace(serial, std::move(disk));
  if (journal != nullptr) {
    d->AttachJournal(std::move(journal));
    WatchDrain(d);
  }
  return d;
}

void Importer::RestoreDisks(const std::vector<fusedev::DiskInfo>& disks) {
  for (const fusedev::DiskInfo& info : disks) {
    if (disks_.count(info.serial) || info.size == 0) continue;
    bool refuse = false;
    auto journal = OpenJournalFor(
        JournalDiskHeader{info.serial, info.size, info.blksize, info.label}, &refuse);
    if (refuse) continue;  // logged; its open handles then fail
    ImportedDisk* d = NewDisk(info.serial, info.size, info.blksize, std::move(journal));
    XLOG(kInfo, "disk " + info.serial, "restored after a restart; waiting for its remote");
    // Listed at once: a lookup or an open resent by the kernel finds it.
    if (tree_ != nullptr) tree_->AddOrUpdate(info, d, true);
  }
  if (disks.empty() || !restore_timer_.is_open()) return;
  uv_timer_start(
      restore_timer_.get(),
      [](uv_timer_t* t) {
        auto* self = static_cast<Importer*>(t->data);
        for (auto& [serial, d] : self->disks_)
          if (self->tree_ != nullptr && d->path_count() == 0 && !d->usable_offline() &&
              !d->journal_busy())
            self->tree_->SetOnline(serial, false);
      },
      kRestoreGraceMs, 0);
}

void Importer::WatchDrain(ImportedDisk* disk) {
  // A disk kept in the tree only for its journal's sake leaves it (unless
  // open) once the journal drained and no path is left.
  disk->SetDrainedHook([this, disk] {
    if (tree_ != nullptr && disk->path_count() == 0 && !disk->usable_offline())
      tree_->SetOnline(disk->serial(), false);
  });
}

void Importer::OnSpanRemoved(const RemoteSpan& span, const std::string& why) {
  refused_.erase(span.id);
  auto s = span_serial_.find(span.id);
  if (s == span_serial_.end()) return;
  std::string serial = s->second;
  span_serial_.erase(s);
  auto it = disks_.find(serial);
  if (it == disks_.end()) return;
  it->second->RemovePath(span.id);
  if (it->second->path_count() == 0) {
    XLOG(kInfo, "disk " + serial, "offline (%s)", why.c_str());
    // A disk with journal records still to deliver, or one that works
    // without its remote (write-back), stays in the tree.
    if (tree_ != nullptr && !it->second->journal_busy() && !it->second->usable_offline())
      tree_->SetOnline(serial, false);
    if (!Reconsider(serial) && !shut_down_ && !uv_is_active(reconsider_timer_.handle()))
      uv_timer_start(reconsider_timer_.get(), OnReconsiderTimer, 1000, 1000);
  }
}

bool Importer::Reconsider(const std::string& serial) {
  if (shut_down_) return true;  // spans go as the links close: nothing to replace
  std::vector<RemoteSpan> candidates;
  for (auto& [id, rs] : refused_)
    if (Cut(rs.info.pfs_label) == serial) candidates.push_back(rs);
  if (candidates.empty()) return true;
  auto it = disks_.find(serial);
  if (it == disks_.end()) return true;
  if (it->second->path_count() > 0) return true;  // the disk came back first
  if (!it->second->idle()) return false;          // in use with its size
  XLOG(kInfo, "disk " + serial,
       "its last path is gone; trying the %zu other span(s) of that serial that were refused "
       "for their size",
       candidates.size());
  // Shutdown() closes its handles and removes its (empty) journal, so that
  // the new disk opens one for its own size.
  it->second->Shutdown();
  replaced_.push_back(std::move(it->second));
  disks_.erase(it);
  for (const RemoteSpan& rs : candidates) {
    refused_.erase(rs.id);
    OnSpanAdded(rs);  // the first one makes the disk; a mismatch is refused again
  }
  return true;
}

void Importer::OnReconsiderTimer(uv_timer_t* t) {
  auto* self = static_cast<Importer*>(t->data);
  bool waiting = false;
  std::vector<std::string> serials;
  for (auto& [id, rs] : self->refused_) serials.push_back(Cut(rs.info.pfs_label));
  for (const std::string& serial : serials) waiting |= !self->Reconsider(serial);
  if (!waiting) uv_timer_stop(t);
}

bool Importer::AnyWaitingForPath() const {
  for (const auto& [serial, d] : disks_)
    if (d->waiting_for_path()) return true;
  return false;
}

void Importer::Shutdown() {
  if (!shut_down_) {
    shut_down_ = true;
    reconsider_timer_.Close();
    restore_timer_.Close();
  }
  for (auto& [serial, d] : disks_) d->Shutdown();
}

}  // namespace xdisk
