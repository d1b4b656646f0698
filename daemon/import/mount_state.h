// MountState: what must survive a restart of the daemon for a new process to
// take its FUSE mount over (fusedev/fuse_server.h, ADOPTION), named in one
// place:
//   - the kernel's FUSE_INIT request, which the kernel sends only once;
//   - the DiskTree's identity: every serial's inode and xaN, every
//     directory's inode (the kernel's cached inodes and the names users
//     scripted keep their meaning, also for a disk whose remote is away when
//     the daemon comes back);
//   - the open file handles the kernel holds, by disk inode (such a disk must
//     be in the tree, open, even before its remote is back);
//   - how many times a daemon took the mount over (xdiskctl status).
// The /dev/fuse descriptor itself survives in a keeper process
// (daemon/import/keeper.h) or systemd's fd store (daemon/import/fd_store.h), not here.
// Outstanding I/O needs no state of ours: the kernel resends what the dead
// daemon never answered, and the write-back journal keeps what was answered
// but not yet remote (docs/journal-format.md).
//
// The file STATE_DIR/mount-<16 hex digits>.state (a hash of the mountpoint)
// holds one protobuf MountState (proto/mount_state.proto; docs/mount-state.md).
// Encode/Decode are pure; Load/Save do the file I/O (Save: temporary file,
// fsync, rename, so a crash leaves the old or the new state, never a torn one).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "fusedev/disk_tree.h"
#include "proto/status.h"

namespace xdisk {

struct MountState {
  std::string mountpoint;    // absolute, normalized
  std::string mount_dev;     // "major:minor" of the mount described
  std::string init_request;  // raw FUSE_INIT; empty before the kernel sent it
  fusedev::DiskTree::Identity identity;
  std::map<fusedev::Ino, int> handles;
  uint32_t restarts = 0;
};

std::string EncodeMountState(const MountState& st);
// A Corruption error for bytes that are not a MountState of version 1.
Result<MountState> DecodeMountState(std::string_view bytes);

std::string MountStatePath(const std::string& state_dir, const std::string& mountpoint);
// NotFound when there is no file.
Result<MountState> LoadMountState(const std::string& path);
// Creates the directory if needed.
Status SaveMountState(const std::string& path, const MountState& st);

}  // namespace xdisk
