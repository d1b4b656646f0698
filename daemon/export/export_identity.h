// Export identity: parsing `--export` arguments and filling in the identity an
// exported disk advertises in its LNK_SPAN (docs/dmsg-protocol.md §6.3, §6.4).
//
//   --export PATH[,serno=S][,label=L][,uuid=U][,ro][,blksize=N]
//
// The importing side identifies a remote disk by its serial alone (pfs_label,
// which becomes /dev/serno/<serial> there), so the serial must be stable
// across restarts and unique among everything a host exports. The defaults
// below need no configuration and do not change across restarts:
//
//   serial  the kernel's serial number of the device when it has one (sysfs
//           `serial` attribute of the device or its parent disk, else udev's
//           ID_SERIAL_SHORT), with "-partN" appended for partition N; else
//           "xf-" + 16 hex digits of FNV-1a-64(hostname + ":" + P), where P
//           is realpath(PATH) for a regular file and PATH as given for a
//           block device (kernel names like /dev/dm-3 change across boots,
//           configured names like /dev/mapper/vg-lv do not).
//           The "xf-" prefix keeps derived serials from colliding with real
//           disk serials on the importing host (§6.3).
//   label   "<hostname>/<basename of PATH as given>", cut to 63 bytes.
//   uuid    (pfs_id) random, generated on first use and persisted as text in
//           STATE_DIR/exports/<serial>.uuid.
//   blksize the device's logical sector size (BLKSSZGET), 512 for files.
//
// The host's own uuid (peer_id) is persisted at STATE_DIR/host.uuid the same
// way. Persisted files are replaced with write-temp, fsync, rename, fsync of
// the directory, and never edited in place. A persisted file that does not
// parse is an error, not a reason to make up a new identity.
//
// All functions here are synchronous, touch only the file system, and are
// meant for start-up on the main thread. They are thread-compatible (no
// shared state), but two processes sharing one state directory race on the
// first creation of a uuid file.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/base/export_spec.h"
#include "proto/status.h"

namespace xdisk {

// Default for --state-dir.
inline constexpr const char* kDefaultStateDir = "/var/lib/xdisk-fuse";

// An export with every default filled in.
struct ResolvedExport {
  std::string path;            // As given.
  std::string canonical_path;  // realpath(path).
  std::string serial;
  std::string label;
  std::string uuid_text;  // Lowercase 8-4-4-4-12.
  bool read_only = false;
  uint32_t blksize = 0;  // Never 0.
  bool is_block_device = false;
  // Where the serial came from, for the start-up log: "config", "sysfs",
  // "udev" or "derived".
  std::string serial_source;
};

// Fills in the defaults for `spec`. Stats `spec.path` (following symlinks),
// which must be a regular file or block device readable by us, and writable
// unless `spec.read_only`; errors name the path. May create `state_dir` and
// `state_dir`/exports (mode 0755) and the serial's uuid file.
Result<ResolvedExport> ResolveExport(const ExportSpec& spec, const std::string& state_dir,
                                     const std::string& hostname);

// Error naming both paths if two exports share a serial, a uuid (which would
// make the importer see two disks as one node, §6.3), or a canonical path
// (one target exported twice would be two disks to the importer).
Status CheckUniqueSerials(const std::vector<ResolvedExport>& exports);

// Reads STATE_DIR/host.uuid, creating it with a fresh random uuid first if it
// does not exist. Returns the lowercase text.
Result<std::string> LoadOrCreateHostUuid(const std::string& state_dir);

// ---- Building blocks, exposed for tests and for the start-up log. ----

// A fresh random (version 4) uuid in lowercase text form, from getrandom(2).
Result<std::string> GenerateUuidText();

// "xf-" + 16 lowercase hex digits of FNV-1a-64(hostname + ":" + path).
// Pure and deterministic.
std::string DeriveSerial(std::string_view hostname, std::string_view path);

// "<hostname>/<basename(path)>", truncated to 63 bytes without splitting a
// UTF-8 sequence. Pure.
std::string DefaultLabel(std::string_view hostname, std::string_view path);

// The kernel's serial for block device MAJ:MIN, or "" when it has none.
// Looks under `root` + "/sys" and `root` + "/run/udev", so tests can point
// `root` at a fake tree; "" means the real system. Whitespace inside the
// serial becomes '_', '/' becomes '-', and the result is cut to 63 bytes. Sets
// `*source` to "sysfs" or "udev" when a serial is found.
std::string KernelSerialOf(unsigned major, unsigned minor, const std::string& root = "",
                           std::string* source = nullptr);

// Reads the uuid text stored in `file`, or creates the file holding a fresh
// one (write-temp, fsync, rename, fsync dir). The directory must exist.
Result<std::string> LoadOrCreateUuidFile(const std::string& file);

}  // namespace xdisk
