#include "daemon/import/mount_state.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>

#include "daemon/base/atomic_file.h"
#include "proto/mount_state.pb.h"

namespace xdisk {

namespace {
constexpr uint32_t kVersion = 1;

// FNV-1a: stable across builds and machines, unlike std::hash.
uint64_t Fnv1a(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}
}  // namespace

std::string EncodeMountState(const MountState& st) {
  state::MountState m;
  m.set_version(kVersion);
  m.set_mountpoint(st.mountpoint);
  m.set_mount_dev(st.mount_dev);
  m.set_fuse_init(st.init_request);
  m.set_next_ino(st.identity.next_ino);
  for (const auto& d : st.identity.disks) {
    state::Disk* p = m.add_disks();
    p->set_serial(d.info.serial);
    p->set_ino(d.ino);
    p->set_xa(d.xa);
    p->set_label(d.info.label);
    p->set_uuid(d.info.uuid);
    p->set_size(d.info.size);
    p->set_blksize(d.info.blksize);
    p->set_visible(d.visible);
  }
  for (const auto& d : st.identity.dirs) {
    state::Dir* p = m.add_dirs();
    p->set_path(d.path);
    p->set_ino(d.ino);
    p->set_parent(d.parent);
  }
  for (const auto& [ino, count] : st.handles) {
    state::Handles* h = m.add_handles();
    h->set_ino(ino);
    h->set_count(static_cast<uint32_t>(count));
  }
  m.set_restarts(st.restarts);
  return m.SerializeAsString();
}

Result<MountState> DecodeMountState(std::string_view bytes) {
  state::MountState m;
  if (!m.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())))
    return Status::Corruption("mount state: not a MountState message");
  if (m.version() != kVersion)
    return Status::Corruption("mount state: version " + std::to_string(m.version()) +
                              ", expected " + std::to_string(kVersion));
  MountState st;
  st.mountpoint = m.mountpoint();
  st.mount_dev = m.mount_dev();
  st.init_request = m.fuse_init();
  st.identity.next_ino = m.next_ino();
  for (const state::Disk& p : m.disks()) {
    fusedev::DiskTree::Identity::Disk d;
    d.info.serial = p.serial();
    d.info.label = p.label();
    d.info.uuid = p.uuid();
    d.info.size = p.size();
    d.info.blksize = p.blksize();
    d.ino = p.ino();
    d.xa = p.xa();
    d.visible = p.visible();
    st.identity.disks.push_back(std::move(d));
  }
  for (const state::Dir& p : m.dirs()) st.identity.dirs.push_back({p.path(), p.ino(), p.parent()});
  for (const state::Handles& h : m.handles())
    if (h.count() > 0 && h.count() < (1u << 30)) st.handles[h.ino()] = static_cast<int>(h.count());
  st.restarts = m.restarts();
  return st;
}

std::string MountStatePath(const std::string& state_dir, const std::string& mountpoint) {
  char name[40];
  snprintf(name, sizeof name, "mount-%016llx.state",
           static_cast<unsigned long long>(Fnv1a(mountpoint)));
  return state_dir + "/" + name;
}

Result<MountState> LoadMountState(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return Status::NotFound(path + ": no mount state");
    return Status::FromErrno(errno, path);
  }
  std::string bytes;
  char buf[16384];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) bytes.append(buf, static_cast<size_t>(n));
  int err = n < 0 ? errno : 0;
  close(fd);
  if (err) return Status::FromErrno(err, path);
  auto st = DecodeMountState(bytes);
  if (!st.ok()) return Status::Corruption(path + ": " + st.status().message());
  return st;
}

Status SaveMountState(const std::string& path, const MountState& st) {
  std::string dir = path.substr(0, path.rfind('/'));
  if (!dir.empty() && mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    return Status::FromErrno(errno, dir);
  // The state only has to outlive the process for adoption; the sync keeps
  // the inode numbers and xaN names across a power loss as well.
  return WriteFileAtomically(path, EncodeMountState(st), 0600);
}

}  // namespace xdisk
