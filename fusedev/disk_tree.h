// DiskTree: the name and inode model behind the FUSE tree. Pure bookkeeping:
// no FUSE calls, no loop, no files, so it is unit-tested directly
// (test/unit/disk_tree_test.cc).
//
// The tree shown under the mountpoint:
//
//   /xa0, /xa1, ...               one per disk, N in order of first appearance
//   /serno/<serial>               the disk's serial
//   /by-label/<c1>/.../<cn>       the label split on '/' (normally host/dev)
//   /by-uuid/<uuid>               only when the disk reports a non-empty uuid
//
// All names of one disk are hard links to ONE inode (nlink = number of names).
// serno/, by-label/ and by-uuid/ always exist; directories below by-label/
// exist while some visible disk has a name under them.
//
// Identity and stability:
// - A disk is identified by its serial. Its inode number and its xaN are
//   assigned when the serial is first seen and are never given to another
//   serial, even after the disk disappears; a serial that comes back gets
//   both back. The same holds for directory inodes, keyed by their path.
// - Inode numbers are stable for the life of the DiskTree. A daemon that
//   restarts under a mount it keeps (fusedev/fuse_server.h, ADOPTION) carries
//   them over with identity() / Restore(), so that the kernel's inodes and
//   open files, and the xaN names, mean the same to the new process.
//
// Visibility: a disk is listed and can be looked up while it is online OR
// while it is open (open count > 0, kept by the FUSE server with OpenRef and
// CloseRef). An offline disk disappears when its last open closes; label
// directories that become empty disappear with it. GetAttr keeps answering
// for every inode ever handed out (the kernel may still hold it), reporting
// nlink 0 for a hidden disk.
//
// Name rules (a name that breaks them is skipped; the disk keeps its other
// names):
// - a component must be non-empty, not "." or "..", contain no '/', NUL or
//   other control character (0x01-0x1f, 0x7f), and be at most 255 bytes
//   (NAME_MAX); labels are not truncated.
// - when two visible disks want the same path (cloned filesystems share a
//   uuid; labels may repeat), the disk with the lower xaN gets it; the other
//   gets it when the first one disappears. A path that would need to be both
//   a file and a directory (labels "h" and "h/d") also goes to the lower xaN.
//
// Threading: not thread-safe. In the daemon every call happens on the loop
// thread. The change hook runs synchronously inside the mutating call
// (AddOrUpdate, SetOnline, CloseRef, OpenRef), after the tree is fully
// updated; it must not call mutating methods of this tree.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "fusedev/block_device.h"

namespace xdisk::fusedev {

// Inode numbers; the same values are handed to the kernel as fuse_ino_t.
using Ino = uint64_t;
inline constexpr Ino kRootIno = 1;  // FUSE_ROOT_ID
inline constexpr Ino kSernoIno = 2;
inline constexpr Ino kByLabelIno = 3;
inline constexpr Ino kByUuidIno = 4;

struct DiskInfo {
  std::string serial;  // Identity; must be non-empty.
  std::string label;   // "host/dev"; empty = no by-label name.
  std::string uuid;    // Empty = no by-uuid name.
  uint64_t size = 0;   // Media bytes.
  uint32_t blksize = 512;
};

// Ownership and permissions reported by GetAttr. With the FUSE server's
// default_permissions mount option the kernel enforces them.
struct TreeAttrs {
  mode_t file_mode = 0600;
  mode_t dir_mode = 0755;
  uid_t uid = 0;
  gid_t gid = 0;
};

struct DirEntry {
  std::string name;
  Ino ino = 0;
  bool is_dir = false;
};

// One change the kernel may have cached; the FUSE server turns it into
// fuse_lowlevel_notify_inval_entry / _inval_inode.
struct TreeChange {
  enum class Kind {
    kEntryAdded,    // `name` in directory `parent` now refers to `ino`.
    kEntryRemoved,  // `name` in directory `parent` no longer refers to `ino`.
    kAttrChanged,   // `ino`'s attributes (size, blksize) changed.
  };
  Kind kind;
  Ino parent = 0;
  std::string name;
  Ino ino = 0;
};

class DiskTree {
 public:
  using ChangeFn = std::function<void(const TreeChange&)>;

  explicit DiskTree(TreeAttrs attrs = {});
  DiskTree(const DiskTree&) = delete;
  DiskTree& operator=(const DiskTree&) = delete;

  const TreeAttrs& attrs() const { return attrs_; }

  // Installs the hook that hears every entry added or removed and every
  // attribute change. Replaces any earlier hook; an empty function removes it.
  void SetChangeHook(ChangeFn fn) { hook_ = std::move(fn); }

  // Registers a new disk or updates a known one (matched by serial) and
  // marks it online (or, with online = false, leaves it offline: a disk
  // restored after a restart whose remote is not back yet). Label and uuid
  // changes move its names. Returns the disk's inode, or 0 (and changes
  // nothing) if info.serial is empty.
  // `dev` must stay alive while the disk is in the tree: until the owner
  // replaces it with another AddOrUpdate while the disk is not open, or
  // until the FUSE server using this tree has stopped. A FUSE server that
  // opened the disk keeps using the device it opened until the last release.
  Ino AddOrUpdate(const DiskInfo& info, BlockDevice* dev, bool online = true);

  // What must survive a restart of the daemon for the kernel's inode numbers
  // and the xaN names to keep their meaning: every serial and directory ever
  // given an inode, and the next free inode number.
  struct Identity {
    struct Disk {
      DiskInfo info;
      Ino ino = 0;
      unsigned xa = 0;
      bool visible = false;  // listed when the identity was taken (Restore ignores it)
    };
    struct Dir {
      std::string path;  // "by-label/h"
      Ino ino = 0;
      Ino parent = 0;
    };
    std::vector<Disk> disks;  // in xa order
    std::vector<Dir> dirs;    // below the four fixed ones
    Ino next_ino = 0;
  };
  Identity identity() const;
  // Loads an identity into a tree that has no disk yet: the disks become
  // known (offline, without a device, hidden) under their old inode and xaN.
  // Returns false, changing nothing, if the tree is not empty or the
  // identity is inconsistent (duplicate or reserved inodes or xa numbers,
  // xa numbers with holes, next_ino not above every inode).
  bool Restore(const Identity& id);
  // Runs whenever what identity() returns changed (a new serial or
  // directory got an inode, or the set of visible disks changed), after
  // the change. An empty function removes it.
  void SetIdentityHook(std::function<void()> fn) { identity_hook_ = std::move(fn); }

  // Marks a known disk online or offline. Returns false for an unknown serial.
  bool SetOnline(std::string_view serial, bool online);

  // Open counts, kept by the FUSE server: OpenRef when an open starts (or a
  // handle is restored after a restart: an offline disk becomes visible),
  // CloseRef on its failure or on release. REQUIRES: IsDisk(ino); CloseRef
  // also requires open_count(ino) > 0.
  void OpenRef(Ino ino);
  void CloseRef(Ino ino);

  // Kernel lookup counts (FUSE lookup/forget). Informational: inodes are
  // never freed, but the counts are what a restartable server must carry.
  void AddLookup(Ino ino, uint64_t n);
  void Forget(Ino ino, uint64_t n);
  uint64_t lookup_count(Ino ino) const;

  // Name resolution against the current (visible) tree.
  std::optional<Ino> Lookup(Ino parent, std::string_view name) const;
  // Fills `st` for any inode ever handed out; false for unknown inodes.
  bool GetAttr(Ino ino, struct stat* st) const;
  // Lists "." and ".." followed by the children in name order. False if
  // `dir` is not a directory inode.
  bool ReadDir(Ino dir, std::vector<DirEntry>* out) const;

  bool IsDir(Ino ino) const { return dirs_.count(ino) != 0; }
  bool IsDisk(Ino ino) const { return disks_.count(ino) != 0; }
  // True if the disk is online or open (see "Visibility").
  bool IsVisible(Ino ino) const;
  bool IsOnline(Ino ino) const;
  int open_count(Ino ino) const;
  uint32_t nlink(Ino ino) const;
  // nullptr for unknown inodes.
  BlockDevice* device(Ino ino) const;
  const DiskInfo* info(Ino ino) const;

  // By serial: 0 / empty string when unknown.
  Ino InoOf(std::string_view serial) const;
  std::string XaName(std::string_view serial) const;

  // For statfs: number of visible disks and their total bytes.
  uint64_t visible_disks() const;
  uint64_t visible_bytes() const;

  // True if `c` is usable as one path component (see "Name rules").
  static bool ValidComponent(std::string_view c);
  // Why a non-empty `label` gets no by-label name ("" if it gets one): the
  // exporter refuses such labels and the importer logs them, by this rule.
  static std::string LabelProblem(std::string_view label);

 private:
  struct Disk {
    DiskInfo info;
    BlockDevice* dev = nullptr;
    unsigned xa = 0;
    bool online = false;
    int open = 0;
    uint32_t nlink = 0;
    uint64_t nlookup = 0;
    struct timespec born {};
  };
  struct Dir {
    Ino parent = kRootIno;
    bool live = false;  // Present in the tree now.
    uint32_t subdirs = 0;
    uint64_t nlookup = 0;
    std::map<std::string, Ino, std::less<>> children;
  };
  using Children = std::map<std::string, Ino, std::less<>>;

  static bool Visible(const Disk& d) { return d.online || d.open > 0; }
  // Returns the stable inode of the directory at `path` ("by-label/h"),
  // creating its record on first use.
  Ino DirIno(const std::string& path, Ino parent);
  // Recomputes every directory's children from the visible disks, then
  // reports the differences through the hook.
  void Reconcile();
  void Emit(const TreeChange& c) {
    if (hook_) hook_(c);
  }

  TreeAttrs attrs_;
  ChangeFn hook_;
  std::function<void()> identity_hook_;
  bool identity_changed_ = false;
  std::vector<Ino> last_visible_;  // for the identity hook
  struct timespec born_ {};
  Ino next_ino_ = kByUuidIno + 1;
  std::map<Ino, Disk> disks_;
  std::map<std::string, Ino, std::less<>> by_serial_;
  std::vector<Ino> by_xa_;  // by_xa_[N] is the inode of xaN.
  std::map<Ino, Dir> dirs_;
  std::map<std::string, Ino, std::less<>> dir_by_path_;
};

}  // namespace xdisk::fusedev
