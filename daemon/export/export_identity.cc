#include "daemon/export/export_identity.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>

#include "daemon/base/atomic_file.h"
#include "fusedev/disk_tree.h"

namespace xdisk {

namespace {

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (IsSpace(s.front()) || s.front() == '\0')) s.remove_prefix(1);
  while (!s.empty() && (IsSpace(s.back()) || s.back() == '\0')) s.remove_suffix(1);
  return s;
}

// Cuts `s` to at most `max` bytes, backing off so that a multi-byte UTF-8
// sequence is never split: a label cut mid-character would show up as
// garbage in the importer's device tree.
std::string TruncateUtf8(std::string s, size_t max) {
  if (s.size() <= max) return s;
  size_t n = max;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  s.resize(n);
  return s;
}

// Reads a small text file whole. Returns false if it cannot be read.
bool ReadSmallFile(const std::string& path, std::string* out) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  out->clear();
  char buf[512];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out->append(buf, static_cast<size_t>(n));
    if (out->size() > 4096) break;  // sysfs attributes are tiny; stop at junk.
  }
  close(fd);
  return true;
}

// Makes a kernel-reported serial safe for our rules: drops the padding that
// ATA and SCSI serials often carry, and replaces characters the serial may
// not contain instead of rejecting a real disk.
std::string SanitizeSerial(std::string_view raw) {
  std::string s(Trim(raw));
  for (char& c : s) {
    unsigned char u = static_cast<unsigned char>(c);
    if (c == '/') {
      c = '-';
    } else if (u <= 0x20 || u >= 0x7F) {
      c = '_';
    }
  }
  return s;
}

std::string ReadUdevSerial(const std::string& root, const std::string& majmin) {
  std::string text;
  if (!ReadSmallFile(root + "/run/udev/data/b" + majmin, &text)) return "";
  constexpr std::string_view kKey = "E:ID_SERIAL_SHORT=";
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string::npos) eol = text.size();
    std::string_view line(text.data() + pos, eol - pos);
    if (line.substr(0, kKey.size()) == kKey) return SanitizeSerial(line.substr(kKey.size()));
    pos = eol + 1;
  }
  return "";
}

Status MakeDirs(const std::string& path) {
  if (path.empty()) return Status::InvalidArgument("empty state directory");
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    std::string prefix = path.substr(0, pos);
    if (prefix.empty()) continue;
    if (mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      return Status::FromErrno(errno, "state directory " + prefix + ": mkdir");
    }
  }
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return Status::FromErrno(errno, "state directory " + path + ": stat");
  }
  if (!S_ISDIR(st.st_mode)) {
    return Status::InvalidArgument("state directory " + path + ": not a directory");
  }
  return Status::Ok();
}

}  // namespace

Result<std::string> GenerateUuidText() {
  uint8_t b[16];
  size_t got = 0;
  while (got < sizeof b) {
    ssize_t n = getrandom(b + got, sizeof b - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "getrandom for a new uuid");
    }
    got += static_cast<size_t>(n);
  }
  // RFC 4122 version 4 (random) and variant 10xx.
  b[6] = static_cast<uint8_t>((b[6] & 0x0F) | 0x40);
  b[8] = static_cast<uint8_t>((b[8] & 0x3F) | 0x80);
  char text[37];
  std::snprintf(text, sizeof text,
                "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
                b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
                b[15]);
  return std::string(text);
}

std::string DeriveSerial(std::string_view hostname, std::string_view canonical_path) {
  // FNV-1a 64 rather than CRC-32C: one pass gives 64 bits, which keeps the
  // chance of two exports on a network colliding negligible, and the
  // algorithm is frozen, so serials stay the same across versions.
  uint64_t h = 14695981039346656037ull;
  auto mix = [&h](std::string_view s) {
    for (char c : s) {
      h ^= static_cast<unsigned char>(c);
      h *= 1099511628211ull;
    }
  };
  mix(hostname);
  mix(":");
  mix(canonical_path);
  char buf[20];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return std::string("xf-") + buf;
}

std::string DefaultLabel(std::string_view hostname, std::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  size_t slash = path.rfind('/');
  std::string_view base = slash == std::string_view::npos ? path : path.substr(slash + 1);
  std::string label(hostname);
  label += '/';
  label += base;
  return TruncateUtf8(std::move(label), kMaxIdentityLength);
}

std::string KernelSerialOf(unsigned major, unsigned minor, const std::string& root,
                           std::string* source) {
  const std::string majmin = std::to_string(major) + ":" + std::to_string(minor);
  // /sys/dev/block/MAJ:MIN is a symlink into /sys/devices/.../block/DISK[/PART];
  // ".." after it resolves against the link target, i.e. the parent disk.
  const std::string base = root + "/sys/dev/block/" + majmin;
  std::string text;
  std::string suffix;
  std::string disk_dir = base;
  std::string disk_majmin = majmin;
  if (ReadSmallFile(base + "/partition", &text)) {
    // Partitions share their disk's serial; the suffix (udev's convention)
    // keeps two exported partitions of one disk distinct.
    std::string_view part = Trim(text);
    if (part.empty()) return "";
    suffix = "-part" + std::string(part);
    disk_dir = base + "/..";
    if (ReadSmallFile(disk_dir + "/dev", &text)) disk_majmin = std::string(Trim(text));
  }

  std::string serial;
  const char* from = nullptr;
  // device/serial: NVMe controllers, USB and some SCSI HBAs. serial: virtio
  // and mmc disks put it on the disk itself.
  for (const char* attr : {"/device/serial", "/serial"}) {
    if (ReadSmallFile(disk_dir + attr, &text)) {
      serial = SanitizeSerial(text);
      if (!serial.empty()) {
        from = "sysfs";
        break;
      }
    }
  }
  // ATA disks behind libata expose no serial attribute; udev reads it with
  // an INQUIRY/IDENTIFY and records it in its database.
  if (serial.empty()) {
    serial = ReadUdevSerial(root, disk_majmin);
    if (!serial.empty()) from = "udev";
  }
  if (serial.empty()) return "";
  serial = serial.substr(0, kMaxIdentityLength - suffix.size()) + suffix;
  if (source) *source = from;
  return serial;
}

Result<std::string> LoadOrCreateUuidFile(const std::string& file) {
  std::string text;
  if (ReadSmallFile(file, &text)) {
    std::string canonical;
    if (!ParseUuidText(Trim(text), &canonical)) {
      // Generating a new one would silently change the identity importers
      // know this disk by; make the operator look instead.
      return Status::Corruption(file + ": does not hold a uuid (expected 8-4-4-4-12 hex text)");
    }
    return canonical;
  }
  if (errno != ENOENT) return Status::FromErrno(errno, file + ": read");
  Result<std::string> fresh = GenerateUuidText();
  if (!fresh.ok()) return fresh.status();
  Status s = WriteFileAtomically(file, *fresh + "\n", 0644);
  if (!s.ok()) return s;
  return fresh;
}

Result<std::string> LoadOrCreateHostUuid(const std::string& state_dir) {
  Status s = MakeDirs(state_dir);
  if (!s.ok()) return s;
  return LoadOrCreateUuidFile(state_dir + "/host.uuid");
}

Result<ResolvedExport> ResolveExport(const ExportSpec& spec, const std::string& state_dir,
                                     const std::string& hostname) {
  const std::string what = "export " + spec.path;
  if (hostname.empty()) return Status::InvalidArgument(what + ": empty hostname");
  ResolvedExport r;
  r.path = spec.path;
  r.read_only = spec.read_only;

  struct stat st;
  if (stat(spec.path.c_str(), &st) != 0) return Status::FromErrno(errno, what + ": stat");
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
    return Status::InvalidArgument(what + ": not a regular file or block device");
  }
  r.is_block_device = S_ISBLK(st.st_mode);

  // Opening read-only proves readability and gives the sector size. We do
  // not open read-write here: closing a block device opened for writing
  // makes udev re-probe it, which is noise at start-up.
  int fd = open(spec.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, what + ": open for reading");
  uint32_t device_blksize = 512;
  if (r.is_block_device) {
    int ssz = 0;
    if (ioctl(fd, BLKSSZGET, &ssz) != 0) {
      Status s = Status::FromErrno(errno, what + ": ioctl BLKSSZGET");
      close(fd);
      return s;
    }
    if (ssz > 0) device_blksize = static_cast<uint32_t>(ssz);
  }
  close(fd);
  if (!spec.read_only && access(spec.path.c_str(), W_OK) != 0) {
    return Status::FromErrno(errno, what + ": not writable (add ,ro to export it read-only)");
  }

  char* real = realpath(spec.path.c_str(), nullptr);
  if (!real) return Status::FromErrno(errno, what + ": realpath");
  r.canonical_path = real;
  std::free(real);

  if (!spec.serial.empty()) {
    r.serial = spec.serial;
    r.serial_source = "config";
  } else {
    if (r.is_block_device) {
      std::string source;
      r.serial = KernelSerialOf(major(st.st_rdev), minor(st.st_rdev), "", &source);
      if (!r.serial.empty()) r.serial_source = source;
    }
    if (r.serial.empty()) {
      // Files are hashed by their real path, which is stable. Device nodes
      // behind symlinks (/dev/dm-3, /dev/sdb) are numbered at boot, while the
      // names people configure (/dev/mapper/vg-lv, /dev/disk/by-id/...) are
      // stable, so a device without a serial is hashed by the path as given.
      r.serial = DeriveSerial(hostname, r.is_block_device ? spec.path : r.canonical_path);
      r.serial_source = "derived";
    }
  }

  r.label = spec.label.empty() ? DefaultLabel(hostname, spec.path) : spec.label;
  // A default label from an odd file name falls under the importer's rule too.
  if (std::string bad = fusedev::DiskTree::LabelProblem(r.label); !bad.empty())
    return Status::InvalidArgument(what + ": label '" + r.label +
                                   "' is not usable as a by-label path on importers (" + bad +
                                   "); set label=");
  r.blksize = spec.blksize != 0 ? spec.blksize : device_blksize;

  if (!spec.uuid_text.empty()) {
    r.uuid_text = spec.uuid_text;
  } else {
    // Keyed by serial because the serial is what importers know the disk by;
    // the uuid should follow it, not the path.
    const std::string dir = state_dir + "/exports";
    Status s = MakeDirs(dir);
    if (!s.ok()) return s;
    Result<std::string> uuid = LoadOrCreateUuidFile(dir + "/" + r.serial + ".uuid");
    if (!uuid.ok()) return uuid.status();
    r.uuid_text = *uuid;
  }
  return r;
}

Status CheckUniqueSerials(const std::vector<ResolvedExport>& exports) {
  for (size_t i = 0; i < exports.size(); ++i) {
    for (size_t j = i + 1; j < exports.size(); ++j) {
      const ResolvedExport& a = exports[i];
      const ResolvedExport& b = exports[j];
      if (a.serial == b.serial) {
        return Status::InvalidArgument("exports " + a.path + " and " + b.path +
                                       " have the same serial '" + a.serial +
                                       "' (set serno= on one of them)");
      }
      if (a.uuid_text == b.uuid_text) {
        return Status::InvalidArgument("exports " + a.path + " and " + b.path +
                                       " have the same uuid " + a.uuid_text);
      }
      if (!a.canonical_path.empty() && a.canonical_path == b.canonical_path) {
        return Status::InvalidArgument("exports " + a.path + " and " + b.path +
                                       " are the same target " + a.canonical_path);
      }
    }
  }
  return Status::Ok();
}

}  // namespace xdisk
