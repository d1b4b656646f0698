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
// serial is refused (two disks claiming one serial).
//
// Journals: with a journal directory and --sync=journal (write-back), every
// disk gets a journal (daemon/journal.h) keyed by its serial when it is
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
// Threading: loop thread only. The Importer must outlive the SpanRegistry's
// links and the FUSE server.
#pragma once

#include <uv.h>

#include <map>
#include <memory>
#include <string>

#include "daemon/imported_disk.h"
#include "daemon/span_registry.h"
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
  // offline, with an ImportedDisk that blocks until a span of its serial
  // arrives. Call after RecoverJournals and before the FUSE server starts.
  void RestoreDisks(const std::vector<fusedev::DiskInfo>& disks);

  void OnSpanAdded(const RemoteSpan& span) override;
  void OnSpanRemoved(const RemoteSpan& span, const std::string& why) override;

  // Fails blocked I/O and closes the disks' handles (shutdown).
  void Shutdown();

  const std::map<std::string, std::unique_ptr<ImportedDisk>>& disks() const { return disks_; }

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

  ImportedDisk::Config config_;
  JournalConfig journal_config_;
  std::map<std::string, std::unique_ptr<ImportedDisk>> disks_;
  std::map<uint64_t, std::string> span_serial_;
};

}  // namespace xdisk
