// BlockDevice: the small interface between the FUSE tree and whatever serves
// a disk's blocks. fusedev/ knows disks, not the wire: the importer
// (daemon/import/imported_disk.h) implements this over dmsg, and the tests implement
// it in memory.
//
// Errors are positive errno values (0 = success): this interface sits at the
// FUSE edge, where errno is the currency.
//
// Threading and callbacks: every method is called on the loop thread, and
// every callback runs on the loop thread, exactly once. A callback may run
// before the method returns (an in-memory device) or much later (a remote
// disk whose peer is away: I/O then blocks until the disk returns, or fails
// with EIO after the importer's --io-timeout). Data passed to Write() stays
// valid until its callback runs, and longer while a copy of its BufferHold
// lives. Data handed to a ReadFn is valid only during the call.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>

namespace xdisk::fusedev {

class BlockDevice {
 public:
  using DoneFn = std::function<void(int err)>;
  using ReadFn = std::function<void(int err, std::span<const uint8_t> data)>;
  // Keeps a write's bytes alive: a device that hands them on to something
  // that may outlive the write (a socket's send queue) keeps a copy instead
  // of copying the bytes. The memory is reused once the last copy is gone.
  // Copies are made and dropped on the loop thread only.
  using BufferHold = std::shared_ptr<const void>;

  virtual ~BlockDevice() = default;

  // Media size in bytes and logical block size. Constant while the device is
  // in a DiskTree.
  virtual uint64_t size() const = 0;
  virtual uint32_t block_size() const = 0;

  // Called on the first FUSE open of the disk and after the last release.
  // Open() may complete later (a remote BLK_OPEN); I/O is only issued after
  // Open() completed with 0. Close() is fire-and-forget.
  virtual void Open(DoneFn done) = 0;
  virtual void Close() = 0;

  // REQUIRES: offset + length <= size(). The FUSE layer clamps requests past
  // the end before calling. Reads return exactly `length` bytes on success.
  virtual void Read(uint64_t offset, uint32_t length, ReadFn done) = 0;
  // `data` stays valid until `done` runs and while a copy of `hold` lives
  // (`hold` may be empty: then only until `done` runs).
  virtual void Write(uint64_t offset, std::span<const uint8_t> data, BufferHold hold,
                     DoneFn done) = 0;
  // Completes once every write that completed before Flush() was called is
  // on stable storage on the remote side.
  virtual void Flush(DoneFn done) = 0;
  // Discards [offset, offset + length); reads of it then return zeros.
  virtual void Trim(uint64_t offset, uint64_t length, DoneFn done) = 0;
};

}  // namespace xdisk::fusedev
