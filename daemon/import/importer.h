// Importer: turns the spans the daemon learns of into ImportedDisks in the
// FUSE tree (fusedev/disk_tree.h). A disk is identified by its serial (the
// span's pfs_label, as DragonFly's xdisk does, §7.7); every span with that
// serial is one more path to it.
//
// Span validation (each rejection is logged once per span, never fatal):
// only BLOCK spans; a non-empty serial usable as a file name; serials and
// labels longer than 63 bytes are cut, as xdisk cuts them; a zero size or a
// block size that is not a power of two in 512..65536 is refused; a span
// whose size or block size disagrees with the disk already known under its
// serial is refused (two disks claiming one serial). A size that is not a
// multiple of the block size is presented rounded down to whole blocks (the
// partial block at the end cannot be read or written in blocks); a span
// smaller than one block is refused.
//
// Journals: with a journal directory and --sync=journal (write-back), every
// disk gets a journal (daemon/import/journal.h) keyed by its serial when it is
// first seen; a journal that cannot be opened is logged and the disk runs
// without one. With --sync=remote no journal is written: what a dead daemon
// never answered, the kernel resends to the next one (fusedev/fuse_server.h,
// ADOPTION); a journal left by an earlier version is still replayed and
// then removed.
//
// Restarts: RestoreDisks() puts the disks the kernel still holds open into
// the tree before any span is known, offline, under their old inode and
// xaN; their I/O waits for the remote as in an outage.
//
// When the last path of a disk goes, it is marked offline: the tree keeps it
// while it is open and its I/O blocks (ImportedDisk); it returns online with
// the next span of that serial.
//
// Spans refused because their size disagrees with the disk known under
// their serial are remembered while they stay advertised. Once the disk has
// no path left and is idle (ImportedDisk::idle(): not open, nothing queued,
// no journal records), it is replaced by a disk built from the oldest such
// span, and the others are considered again as paths to it; a disk that is
// still busy is looked at again every second until it is idle or returns.
// The replaced ImportedDisk is kept (shut down) until the Importer goes, as
// the FUSE server may still hold its pointer.
//
// Threading: loop thread only. The Importer must outlive the SpanRegistry's
// links and the FUSE server.
#pragma once

#include <uv.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "daemon/base/uv_handle.h"
#include "daemon/import/imported_disk.h"
#include "daemon/link/span_registry.h"
#include "fusedev/disk_tree.h"

namespace xdisk {

// Why a span cannot be imported, or "" if it can. Pure; unit tested.
// `serial` and `label` receive the cleaned-up names.
std::string CheckImportSpan(const dmsg::LnkSpan& span, std::string* serial, std::string* label,
                            uint32_t* blksize);

class Importer : public SpanObserver {
 public:
  // `journal.dir` empty: no journals.
  Importer(uv_loop_t* loop, fusedev::DiskTree* tree, ImportedDisk::Config config,
           JournalConfig journal = {});
  ~Importer() override;
  Importer(const Importer&) = delete;
  Importer& operator=(const Importer&) = delete;

  // Puts every disk with pending journal records in the tree (visible,
  // without a path) before any span is known: their I/O resumes when they return (and
  // works at once in write-back mode). Damage is logged; with
  // --journal-strict a damaged journal is an error (the daemon exits).
  Status RecoverJournals();

  // After a restart: registers each disk (not yet known) in the tree,
  // listed, with an ImportedDisk whose I/O and opens wait until a span of
  // its serial arrives, as in an outage. A restored disk that has no path
  // kRestoreGraceMs later is taken offline (hidden unless open). Call after
  // RecoverJournals and before the FUSE server starts.
  static constexpr uint64_t kRestoreGraceMs = 30000;
  void RestoreDisks(const std::vector<fusedev::DiskInfo>& disks);

  void OnSpanAdded(const RemoteSpan& span) override;
  void OnSpanRemoved(const RemoteSpan& span, const std::string& why) override;

  // Fails blocked I/O and closes the disks' handles (shutdown).
  void Shutdown();

  const std::map<std::string, std::unique_ptr<ImportedDisk>>& disks() const { return disks_; }
  // True if any disk has requests waiting for a path.
  bool AnyWaitingForPath() const;

 private:
  uv_loop_t* loop_;
  fusedev::DiskTree* tree_;
  void WatchDrain(ImportedDisk* disk);
  // Opens the journal a new disk gets (see "Journals"). nullptr without
  // one; *refuse is set when the disk must stay out of the tree because a
  // journal that may hold records cannot be used.
  std::unique_ptr<Journal> OpenJournalFor(const JournalDiskHeader& h, bool* refuse);
  ImportedDisk* NewDisk(const std::string& serial, uint64_t size, uint32_t blksize,
                        std::unique_ptr<Journal> journal);
  // Replaces the disk of `serial` with one built from the refused spans of
  // that serial if it has no path and is idle; true if nothing is left to
  // wait for (replaced, or nothing to replace it with).
  bool Reconsider(const std::string& serial);
  static void OnReconsiderTimer(uv_timer_t* t);

  ImportedDisk::Config config_;
  JournalConfig journal_config_;
  std::map<std::string, std::unique_ptr<ImportedDisk>> disks_;
  std::map<uint64_t, std::string> span_serial_;
  // Spans refused for their size, by span id (ids grow: oldest first).
  std::map<uint64_t, RemoteSpan> refused_;
  std::vector<std::unique_ptr<ImportedDisk>> replaced_;
  UvHandle<uv_timer_t> reconsider_timer_;
  UvHandle<uv_timer_t> restore_timer_;  // ends the grace of restored disks
  bool shut_down_ = false;
};

}  // namespace xdisk
