// Exporter: serves local disks to dmsg peers as a DragonFly disk server does
// (spec §6.4, §7).
//
// Each export is one ExportedDisk: a LocalDisk (daemon/export/local_disk.h) plus a
// LNK_SPAN advertised through the SpanRegistry on every admitted link. The
// ExportedDisk is the TransactionHandler of everything a peer stacks under
// that span: BLK_OPEN (answered with an open result, whatever the modes say)
// and BLK_READ / BLK_WRITE / BLK_FLUSH / BLK_FREEBLKS, under the open or
// directly under the span. Each I/O gets exactly one final reply
// (LNK_ERROR|REPLY|CREATE|DELETE, read data as aux).
//
// Validation before dispatch (ValidateBlkRequest, pure and unit-tested):
// zero length, misalignment to blksize, a range past the end, or more than
// 1 MiB -> DMSG_ERR_PARAM; a write to a read-only export -> DMSG_ERR_IO;
// device errors -> DMSG_ERR_IO (a DragonFly client retries forever on other
// codes while open, §7.6).
//
// Backpressure: a link whose requests in flight exceed kLinkBudgetBytes (16 MiB) stops
// being read until they drop below half of it. Overlapping writes run in
// arrival order (LocalDisk guarantees it), so replays after a reconnect never
// reorder data.
//
// Threading: loop thread only. The Exporter must outlive the registry's
// links; destroy it after the loop has run dry (no disk I/O in flight).
#pragma once

#include <uv.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "daemon/export/export_identity.h"
#include "daemon/export/local_disk.h"
#include "daemon/link/span_registry.h"
#include "proto/dmsg.h"

namespace xdisk {

// The outcome of validating one BLK request: 0 to run it, else the dmsg
// error to answer with.
struct BlkCheck {
  uint32_t error = 0;
  std::string why;  // for the debug log
};
// `base_cmd` is one of BLK_READ/WRITE/FLUSH/FREEBLKS.
BlkCheck ValidateBlkRequest(uint32_t base_cmd, const dmsg::BlkIo& io, uint64_t media_bytes,
                            uint32_t blksize, bool read_only);
// Status of a finished disk operation -> dmsg error.
uint32_t DmsgErrorFor(const Status& s);

class Exporter;

class ExportedDisk : public TransactionHandler {
 public:
  ExportedDisk(Exporter* owner, ResolvedExport res, std::unique_ptr<LocalDisk> disk);
  ~ExportedDisk() override;

  const ResolvedExport& resolved() const { return res_; }
  const dmsg::LnkSpan& span() const { return span_; }
  LocalDisk& disk() { return *disk_; }
  // Closes the file once its I/O drained (after the span was withdrawn);
  // later requests get DMSG_ERR_IO.
  void CloseDisk();
  uint64_t span_id = 0;

  // Takes f.aux of a BLK_WRITE (moves the data to the disk write).
  void OnMessage(Link& link, Transaction& t, dmsg::Frame& f) override;
  TransactionHandler* OnChildCreate(Link& link, Transaction& parent, Transaction& child,
                                    const dmsg::Frame& f) override;
  void OnFreed(Link& link, Transaction& t) override;

 private:
  struct Request;
  void Serve(Link& link, Transaction& t, dmsg::Frame& f);
  void Finish(Request* r, const Status& s, dmsg::ByteBuffer&& data);

  Exporter* owner_;
  ResolvedExport res_;
  std::unique_ptr<LocalDisk> disk_;
  bool closing_ = false;
  dmsg::LnkSpan span_;
  uint64_t media_bytes_;
};

class Exporter {
 public:
  static constexpr size_t kLinkBudgetBytes = 16u << 20;

  Exporter(uv_loop_t* loop, SpanRegistry* registry, const dmsg::Uuid& host_uuid);
  ~Exporter();
  Exporter(const Exporter&) = delete;
  Exporter& operator=(const Exporter&) = delete;

  // Opens the disk and advertises it. Errors name the path. A disk smaller
  // than one block is refused (InvalidArgument): importers refuse zero-size
  // spans.
  Status Add(const ResolvedExport& res);
  // Withdraws and closes the export with `serial` (once its I/O drained).
  bool Remove(const std::string& serial);
  const std::map<std::string, std::unique_ptr<ExportedDisk>>& disks() const { return disks_; }

  // Per-link accounting of bytes in flight, for backpressure.
  void Charge(Link& link, size_t bytes);
  void Release(Link& link, size_t bytes);

  uv_loop_t* loop() const { return loop_; }

 private:
  uv_loop_t* loop_;
  SpanRegistry* registry_;
  dmsg::Uuid host_uuid_;
  std::map<std::string, std::unique_ptr<ExportedDisk>> disks_;
  std::vector<std::unique_ptr<ExportedDisk>> retiring_;
  std::map<Link*, size_t> inflight_;
};

}  // namespace xdisk
