#include "daemon/export/local_disk.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <string>
#include <utility>

#include "daemon/base/io_kind.h"

namespace xdisk {

namespace {

// Zero-filling writes come from this buffer. It lives in .bss, so untouched
// pages cost nothing and the worker threads can share it without locking.
constexpr size_t kZeroChunk = 256 * 1024;
const uint8_t kZeros[kZeroChunk] = {};

// Errors that mean "this way of discarding is not available here", as
// opposed to a real I/O failure. Linux reports missing fallocate/ioctl support
// with any of these depending on the kernel version and the driver; EINVAL
// also covers a device that rejects the alignment of the range.
bool IsUnsupported(int err) {
  return err == EOPNOTSUPP || err == ENOTSUP || err == ENOSYS || err == ENOTTY || err == EINVAL ||
         err == ENODEV;
}

int FallocateNoEintr(int fd, int mode, uint64_t offset, uint64_t length) {
  int rc;
  do {
    rc = fallocate(fd, mode, static_cast<off_t>(offset), static_cast<off_t>(length));
  } while (rc != 0 && errno == EINTR);
  return rc == 0 ? 0 : errno;
}

}  // namespace

struct LocalDisk::Op {
  uv_work_t req{};
  LocalDisk* disk = nullptr;
  IoKind kind = IoKind::kRead;
  uint64_t offset = 0;
  uint64_t length = 0;
  // Set when the operation failed before reaching the disk; the worker then
  // does nothing and the operation takes no part in ordering.
  bool failed_early = false;
  dmsg::ByteBuffer data;
  Status status;
  ReadCallback read_cb;
  DoneCallback done_cb;
  // Ordering bookkeeping (loop thread only): the number of earlier
  // conflicting operations still incomplete, and the later operations that
  // wait for this one.
  size_t blockers = 0;
  std::vector<Op*> waiters;
  std::list<std::unique_ptr<Op>>::iterator self;

  // The rule of daemon/base/io_kind.h (read/read overlap stays concurrent).
  // Flush has no range and is deliberately not ordered: its promise only
  // covers writes that completed before it was issued. An operation that
  // failed before reaching the disk takes no part.
  bool ConflictsWith(const Op& o) const {
    if (failed_early || o.failed_early) return false;
    return MustKeepOrder(kind, offset, length, o.kind, o.offset, o.length);
  }
};

void LocalDisk::SetDefaultThreadpoolSize() {
  // overwrite=0: an operator's explicit UV_THREADPOOL_SIZE wins.
  setenv("UV_THREADPOOL_SIZE", std::to_string(kSuggestedThreadpoolSize).c_str(), 0);
}

Result<std::unique_ptr<LocalDisk>> LocalDisk::Open(uv_loop_t* loop, const std::string& path,
                                                   bool read_only) {
  const int flags = (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  int fd;
  do {
    fd = open(path.c_str(), flags);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    return Status::FromErrno(
        errno, "local disk " + path + ": open" + (read_only ? " read-only" : " read-write"));
  }
  // Every early return below must close the descriptor.
  auto fail = [fd](Status s) -> Result<std::unique_ptr<LocalDisk>> {
    close(fd);
    return s;
  };

  struct stat st;
  if (fstat(fd, &st) != 0) return fail(Status::FromErrno(errno, "local disk " + path + ": fstat"));

  uint64_t size = 0;
  uint32_t block_size = 512;
  bool is_block = false;
  if (S_ISREG(st.st_mode)) {
    size = static_cast<uint64_t>(st.st_size);
  } else if (S_ISBLK(st.st_mode)) {
    is_block = true;
    if (ioctl(fd, BLKGETSIZE64, &size) != 0) {
      return fail(Status::FromErrno(errno, "local disk " + path + ": ioctl BLKGETSIZE64"));
    }
    int ssz = 0;
    if (ioctl(fd, BLKSSZGET, &ssz) != 0) {
      return fail(Status::FromErrno(errno, "local disk " + path + ": ioctl BLKSSZGET"));
    }
    // A sector size that is not a positive power of two would break the
    // alignment arithmetic in Trim; no real driver reports one.
    if (ssz <= 0 || (ssz & (ssz - 1)) != 0) {
      return fail(Status::InvalidArgument("local disk " + path + ": odd logical block size " +
                                          std::to_string(ssz)));
    }
    block_size = static_cast<uint32_t>(ssz);
  } else {
    return fail(
        Status::InvalidArgument("local disk " + path + ": not a regular file or block device"));
  }
  return std::unique_ptr<LocalDisk>(
      new LocalDisk(loop, path, fd, read_only, is_block, size, block_size));
}

LocalDisk::LocalDisk(uv_loop_t* loop, std::string path, int fd, bool read_only,
                     bool is_block_device, uint64_t size, uint32_t block_size)
    : loop_(loop),
      path_(std::move(path)),
      fd_(fd),
      read_only_(read_only),
      is_block_device_(is_block_device),
      size_(size),
      block_size_(block_size) {
  struct statfs fs;
  if (!is_block_device && fstatfs(fd, &fs) == 0)
    memory_backed_ = fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC;
}

Status LocalDisk::ReadNow(uint64_t offset, uint32_t length, dmsg::ByteBuffer* out) const {
  out->resize(length);
  uint64_t done = 0;
  while (done < length) {
    ssize_t n = pread(fd_, out->data() + done, length - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, Context("read", offset, length));
    }
    if (n == 0) {
      // A file that shrank underneath us reads as zeros past its end.
      std::fill(out->begin() + static_cast<std::ptrdiff_t>(done), out->end(), 0);
      break;
    }
    done += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

Status LocalDisk::WriteNow(uint64_t offset, std::span<const uint8_t> data) const {
  uint64_t done = 0;
  while (done < data.size()) {
    ssize_t n =
        pwrite(fd_, data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, Context("write", offset, data.size()));
    }
    done += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

LocalDisk::~LocalDisk() {
  if (in_flight_ != 0) {
    // Worker threads may still be using fd_ and the Op records; carrying on
    // would be a use-after-free on another thread, so stop here loudly.
    std::fprintf(stderr, "xdisk-fuse: LocalDisk %s destroyed with %zu operations in flight\n",
                 path_.c_str(), in_flight_);
    std::abort();
  }
  close(fd_);
}

std::string LocalDisk::Context(const char* what, uint64_t offset, uint64_t length) const {
  char buf[96];
  std::snprintf(buf, sizeof buf, ": %s offset=%" PRIu64 " length=%" PRIu64, what, offset, length);
  return "local disk " + path_ + buf;
}

void LocalDisk::Read(uint64_t offset, uint32_t length, ReadCallback cb) {
  auto op = NewIoOp<Op>(IoKind::kRead, offset, length);
  op->read_cb = std::move(cb);
  Submit(std::move(op));
}

void LocalDisk::Write(uint64_t offset, dmsg::ByteBuffer data, DoneCallback cb) {
  auto op = NewIoOp<Op>(IoKind::kWrite, offset, data.size());
  op->data = std::move(data);
  op->done_cb = std::move(cb);
  Submit(std::move(op));
}

void LocalDisk::Flush(DoneCallback cb) {
  auto op = NewIoOp<Op>(IoKind::kFlush, 0, 0);
  op->done_cb = std::move(cb);
  Submit(std::move(op));
}

void LocalDisk::Trim(uint64_t offset, uint64_t length, DoneCallback cb) {
  auto op = NewIoOp<Op>(IoKind::kTrim, offset, length);
  op->done_cb = std::move(cb);
  Submit(std::move(op));
}

void LocalDisk::CloseWhenIdle(CloseCallback cb) {
  if (closing_) {
    std::fprintf(stderr, "xdisk-fuse: LocalDisk %s: CloseWhenIdle called twice\n", path_.c_str());
    std::abort();
  }
  closing_ = true;
  close_cb_ = std::move(cb);
  if (in_flight_ == 0) {
    // The callback must not run from inside this call (the caller may still
    // be using the object), and LocalDisk owns no handle to defer with. A
    // no-op threadpool job gives us a completion on a later loop iteration,
    // and Complete() fires the close callback once it sees the disk idle.
    // Submit() marks it failed_early because closing_ is set, so the job
    // does nothing, takes no part in ordering and has no user callback.
    Submit(std::make_unique<Op>());
  }
}

void LocalDisk::Submit(std::unique_ptr<Op> op) {
  op->disk = this;
  op->req.data = op.get();

  // Early failures still travel through the threadpool so that their
  // callbacks run later, on the loop thread, like every other completion.
  if (closing_) {
    op->failed_early = true;
    op->status = Status::Unavailable("local disk " + path_ + ": closing");
  } else if (Modifies(op->kind) && read_only_) {
    op->failed_early = true;
    op->status = Status::FromErrno(
        EROFS, Context(op->kind == IoKind::kWrite ? "write" : "trim", op->offset, op->length));
  } else if (op->kind != IoKind::kFlush &&
             (op->offset > size_ || op->length > size_ - op->offset)) {
    op->failed_early = true;
    op->status =
        Status::InvalidArgument(Context("range outside the device", op->offset, op->length) +
                                " size=" + std::to_string(size_));
  }
  if (op->failed_early) op->data.clear();

  ++in_flight_;
  Op* raw = op.get();
  // Scanning every incomplete operation is O(n), but n is bounded by the
  // importer's tag pool (63 per BLK_OPEN, §7.3), so a sorted interval
  // structure would not pay for itself.
  for (auto& earlier : pending_) {
    if (earlier->ConflictsWith(*raw)) {
      earlier->waiters.push_back(raw);
      ++raw->blockers;
    }
  }
  pending_.push_back(std::move(op));
  raw->self = std::prev(pending_.end());
  if (raw->blockers == 0) MakeReady(raw);
  Pump();
}

void LocalDisk::MakeReady(Op* op) { ready_.push_back(op); }

void LocalDisk::Pump() {
  while (running_ < kMaxJobsPerDisk && !ready_.empty()) {
    Op* op = ready_.front();
    ready_.pop_front();
    ++running_;
    // uv_queue_work only fails when work_cb is NULL, which it never is here.
    int rc = uv_queue_work(loop_, &op->req, &LocalDisk::WorkCb, &LocalDisk::AfterWorkCb);
    if (rc != 0) {
      std::fprintf(stderr, "xdisk-fuse: uv_queue_work: %s\n", uv_strerror(rc));
      std::abort();
    }
  }
}

void LocalDisk::WorkCb(uv_work_t* req) {
  Op* op = static_cast<Op*>(req->data);
  if (op->failed_early) return;
  const LocalDisk* disk = op->disk;
  switch (op->kind) {
    case IoKind::kRead:
      disk->DoRead(op);
      break;
    case IoKind::kWrite:
      disk->DoWrite(op);
      break;
    case IoKind::kFlush:
      disk->DoFlush(op);
      break;
    case IoKind::kTrim:
      disk->DoTrim(op);
      break;
  }
}

void LocalDisk::AfterWorkCb(uv_work_t* req, int /*status*/) {
  // status is only ever UV_ECANCELED, and nothing here calls uv_cancel.
  Op* op = static_cast<Op*>(req->data);
  op->disk->Complete(op);
}

void LocalDisk::Complete(Op* op) {
  --running_;
  // Release the operations that were waiting for this one before running any
  // user code, so a callback that submits more work sees consistent state.
  for (Op* w : op->waiters) {
    if (--w->blockers == 0) MakeReady(w);
  }
  std::unique_ptr<Op> owned = std::move(*op->self);
  pending_.erase(op->self);
  --in_flight_;
  Pump();

  // From here on `this` may be destroyed by the user callback (allowed when
  // in_flight() is 0), so check `alive` before touching members again.
  std::weak_ptr<int> alive = alive_;
  if (owned->kind == IoKind::kRead) {
    if (owned->read_cb) owned->read_cb(std::move(owned->status), std::move(owned->data));
  } else if (owned->done_cb) {
    owned->done_cb(std::move(owned->status));
  }
  if (alive.expired()) return;
  if (closing_ && in_flight_ == 0 && close_cb_) {
    CloseCallback cb = std::move(close_cb_);
    close_cb_ = nullptr;
    cb();  // May destroy `this`; nothing follows.
  }
}

void LocalDisk::DoRead(Op* op) const {
  // resize() leaves the bytes uninitialised (ByteBuffer): pread fills them,
  // and a short read at the end of a file that shrank underneath us is
  // completed with zeros below; the range was checked against the size
  // seen at Open().
  op->data.resize(op->length);
  uint64_t done = 0;
  while (done < op->length) {
    ssize_t n = pread(fd_, op->data.data() + done, op->length - done,
                      static_cast<off_t>(op->offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      op->status = Status::FromErrno(errno, Context("read", op->offset, op->length));
      op->data.clear();
      return;
    }
    if (n == 0) {  // End of file: the rest reads as zeros.
      std::fill(op->data.begin() + static_cast<std::ptrdiff_t>(done), op->data.end(), 0);
      break;
    }
    done += static_cast<uint64_t>(n);
  }
}

void LocalDisk::DoWrite(Op* op) const {
  uint64_t done = 0;
  while (done < op->length) {
    ssize_t n = pwrite(fd_, op->data.data() + done, op->length - done,
                       static_cast<off_t>(op->offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      op->status = Status::FromErrno(errno, Context("write", op->offset, op->length));
      return;
    }
    if (n == 0) {
      // pwrite returning 0 for a non-empty buffer would loop forever; the
      // kernel does this only at the end of a block device.
      op->status = Status::FromErrno(ENOSPC, Context("write", op->offset, op->length));
      return;
    }
    done += static_cast<uint64_t>(n);
  }
  // The buffer is not needed any more; free it on the worker thread rather
  // than on the loop thread.
  dmsg::ByteBuffer().swap(op->data);
}

void LocalDisk::DoFlush(Op* op) const {
  // Nothing we wrote can be dirty on a read-only descriptor.
  if (read_only_) return;
  // fdatasync skips pure metadata such as mtime, which is all a file export
  // needs. On a block device the two are equivalent in effect; fsync is used
  // because some drivers historically only wired up the fsync path.
  int rc = is_block_device_ ? fsync(fd_) : fdatasync(fd_);
  if (rc != 0) op->status = Status::FromErrno(errno, Context("flush", 0, 0));
}

Status LocalDisk::ZeroFill(uint64_t offset, uint64_t length) const {
  uint64_t done = 0;
  while (done < length) {
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(length - done, kZeroChunk));
    ssize_t n = pwrite(fd_, kZeros, chunk, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, Context("trim (writing zeros)", offset, length));
    }
    if (n == 0) return Status::FromErrno(ENOSPC, Context("trim (writing zeros)", offset, length));
    done += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

void LocalDisk::DoTrim(Op* op) const {
  const uint64_t offset = op->offset;
  const uint64_t length = op->length;
  if (length == 0) return;

  if (!is_block_device_) {
    // Punching keeps the file size and frees the blocks; reads of a hole
    // return zeros. File systems without hole support (or tmpfs on old
    // kernels) get ZERO_RANGE and then plain zero writes.
    int err = FallocateNoEintr(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
    if (err == 0) return;
    if (!IsUnsupported(err)) {
      op->status = Status::FromErrno(err, Context("trim (punch hole)", offset, length));
      return;
    }
    err = FallocateNoEintr(fd_, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length);
    if (err == 0) return;
    if (!IsUnsupported(err)) {
      op->status = Status::FromErrno(err, Context("trim (zero range)", offset, length));
      return;
    }
    op->status = ZeroFill(offset, length);
    return;
  }

  // Block devices. BLKDISCARD is not used: since Linux 4.12 nothing promises
  // that discarded sectors read back as zeros (discard_zeroes_data is always
  // 0), and the exporter needs them to. fallocate(PUNCH_HOLE) on a block
  // device is the kernel's "write zeroes, unmapping if the device can, and
  // fail rather than write the zeros by hand" operation, which is exactly a
  // discard that guarantees zeros. On a loop device it punches a hole in the
  // backing file. Both fallocate and BLKZEROOUT also drop the page cache for
  // the range, so our buffered reads see the zeros.
  //
  // Both need the range aligned to the logical block size, so the unaligned
  // head and tail are zeroed with pwrite (through the page cache, consistent
  // with our other buffered I/O).
  const uint64_t bs = block_size_;
  const uint64_t end = offset + length;
  const uint64_t a = (offset + bs - 1) / bs * bs;
  const uint64_t b = end / bs * bs;
  if (a >= b) {
    op->status = ZeroFill(offset, length);
    return;
  }
  if (a > offset) {
    op->status = ZeroFill(offset, a - offset);
    if (!op->status.ok()) return;
  }
  if (end > b) {
    op->status = ZeroFill(b, end - b);
    if (!op->status.ok()) return;
  }
  int err = FallocateNoEintr(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, a, b - a);
  if (err == 0) return;
  if (!IsUnsupported(err)) {
    op->status = Status::FromErrno(err, Context("trim (punch hole)", a, b - a));
    return;
  }
  // BLKZEROOUT may fall back to the kernel writing zero pages itself, which
  // is still cheaper than copying our buffer through the page cache.
  uint64_t range[2] = {a, b - a};
  int rc;
  do {
    rc = ioctl(fd_, BLKZEROOUT, range);
  } while (rc != 0 && errno == EINTR);
  if (rc == 0) return;
  err = errno;
  if (!IsUnsupported(err)) {
    op->status = Status::FromErrno(err, Context("trim (BLKZEROOUT)", a, b - a));
    return;
  }
  op->status = ZeroFill(a, b - a);
}

}  // namespace xdisk
