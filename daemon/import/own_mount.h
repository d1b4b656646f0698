// Keeping the loop thread out of its own FUSE mount.
//
// The daemon answers FUSE requests on its loop thread. A system call made on
// that thread on a path inside its own mount (stat, open, readlink of a
// component) waits for a FUSE answer only that thread can give: the daemon
// hangs for good. Operator input (`xdiskctl export add PATH`, a reloaded
// config) is therefore resolved here first, one component at a time, and
// refused before any system call would reach the mount, also through a
// symbolic link or a bind mount of it elsewhere.
//
// Not covered: a path through some other file system that hangs (a dead NFS
// server) still stalls the loop while it hangs.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proto/status.h"

namespace xdisk {

// One line of /proc/self/mountinfo, octal escapes (\040) decoded.
struct MountEntry {
  std::string dev;     // "major:minor"
  std::string point;   // where it is mounted
  std::string fstype;  // "fuse.xdisk", "ext4"
  std::string source;  // "xdisk", "/dev/sda1"
};
std::vector<MountEntry> ParseMountInfo(std::string_view mountinfo);
// The mount on top at `mountpoint` (absolute, normalized), if any.
std::optional<MountEntry> MountAt(std::string_view mountinfo, const std::string& mountpoint);
// Reads /proc/self/mountinfo ("" if it cannot).
std::string ReadMountInfo();

// The mount points of the file system mounted at `mountpoint` (an absolute,
// normalized path), from the text of /proc/self/mountinfo: the mount itself
// and every bind mount of it (same major:minor). Octal escapes (\040) are
// decoded. Empty if `mountpoint` is not a mount point in `mountinfo`.
std::vector<std::string> MountsOfSameDevice(std::string_view mountinfo,
                                            const std::string& mountpoint);

// `path` made absolute (against the current directory) and normalized
// without touching the file system: "." and ".." folded, repeated slashes
// dropped.
std::string LexicalAbsolute(const std::string& path);

// Resolves `path` (absolute, or relative to the current directory) like
// realpath(3), following at most 40 symbolic links, but checks every path
// before the system call on it: a path at or under one of `forbidden`
// (absolute, normalized) is an InvalidArgument error naming the mount and
// the path as given. Returns the resolved absolute path. Errors of lstat and
// readlink (ENOENT, ELOOP, ...) are IoError statuses.
Result<std::string> ResolveAvoiding(const std::string& path,
                                    const std::vector<std::string>& forbidden);

}  // namespace xdisk
