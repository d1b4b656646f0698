#include "fusedev/disk_tree.h"

#include <algorithm>
#include <cassert>
#include <ctime>
#include <utility>

namespace xdisk::fusedev {

namespace {

constexpr size_t kNameMax = 255;

struct timespec Now() {
  struct timespec ts {};
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts;
}

// Splits `s` on '/'. Returns false if any component is unusable, so that a
// malformed label loses its by-label name instead of landing somewhere odd.
bool SplitPath(std::string_view s, std::vector<std::string>* out) {
  size_t start = 0;
  while (true) {
    size_t slash = s.find('/', start);
    std::string_view c =
        s.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (!DiskTree::ValidComponent(c)) return false;
    out->emplace_back(c);
    if (slash == std::string_view::npos) return true;
    start = slash + 1;
  }
}

std::string Join(const std::vector<std::string>& comps, size_t n) {
  std::string p;
  for (size_t i = 0; i < n; i++) {
    if (i) p += '/';
    p += comps[i];
  }
  return p;
}

}  // namespace

DiskTree::DiskTree(TreeAttrs attrs) : attrs_(attrs), born_(Now()) {
  dirs_[kRootIno].parent = kRootIno;
  dirs_[kSernoIno].parent = kRootIno;
  dirs_[kByLabelIno].parent = kRootIno;
  dirs_[kByUuidIno].parent = kRootIno;
  dir_by_path_["serno"] = kSernoIno;
  dir_by_path_["by-label"] = kByLabelIno;
  dir_by_path_["by-uuid"] = kByUuidIno;
  Reconcile();
}

bool DiskTree::ValidComponent(std::string_view c) {
  if (c.empty() || c == "." || c == ".." || c.size() > kNameMax) return false;
  // Names come from peers: a newline or an escape sequence in a file name
  // would reach every `ls` and every script that reads one name per line.
  for (unsigned char ch : c)
    if (ch < 0x20 || ch == 0x7f || ch == '/') return false;
  return true;
}

std::string DiskTree::LabelProblem(std::string_view label) {
  if (label.empty()) return "";
  std::vector<std::string> comps;
  if (SplitPath(label, &comps)) return "";
  return "a component is empty, '.', '..', longer than 255 bytes or holds a control character";
}

Ino DiskTree::AddOrUpdate(const DiskInfo& info, BlockDevice* dev, bool online) {
  if (info.serial.empty()) return 0;
  auto it = by_serial_.find(info.serial);
  Ino ino;
  bool attr_changed = false;
  if (it == by_serial_.end()) {
    ino = next_ino_++;
    by_serial_.emplace(info.serial, ino);
    Disk& d = disks_[ino];
    d.xa = static_cast<unsigned>(by_xa_.size());
    d.born = Now();
    by_xa_.push_back(ino);
    identity_changed_ = true;
  } else {
    ino = it->second;
    const DiskInfo& old = disks_[ino].info;
    attr_changed = old.size != info.size || old.blksize != info.blksize;
  }
  Disk& d = disks_[ino];
  // A restored disk learns its label and uuid again from its span.
  attr_changed = attr_changed || (d.info.size != 0 && d.info.size != info.size);
  d.info = info;
  d.dev = dev;
  d.online = online;
  Reconcile();
  if (attr_changed) Emit({TreeChange::Kind::kAttrChanged, 0, {}, ino});
  return ino;
}

DiskTree::Identity DiskTree::identity() const {
  Identity id;
  for (Ino ino : by_xa_) {
    const Disk& d = disks_.at(ino);
    id.disks.push_back({d.info, ino, d.xa, Visible(d)});
  }
  for (const auto& [path, ino] : dir_by_path_) {
    if (ino <= kByUuidIno) continue;
    id.dirs.push_back({path, ino, dirs_.at(ino).parent});
  }
  id.next_ino = next_ino_;
  return id;
}

bool DiskTree::Restore(const Identity& id) {
  if (!disks_.empty() || dir_by_path_.size() != 3) return false;
  // Validate everything before changing anything.
  std::set<Ino> inos = {kRootIno, kSernoIno, kByLabelIno, kByUuidIno};
  std::set<std::string, std::less<>> serials, paths = {"serno", "by-label", "by-uuid"};
  std::vector<bool> xa_seen(id.disks.size(), false);
  std::set<Ino> disk_inos;
  for (const Identity::Disk& d : id.disks) {
    disk_inos.insert(d.ino);
    if (d.info.serial.empty() || !inos.insert(d.ino).second || d.ino >= id.next_ino ||
        d.xa >= id.disks.size() || xa_seen[d.xa] || !serials.insert(d.info.serial).second)
      return false;
    xa_seen[d.xa] = true;
  }
  for (const Identity::Dir& d : id.dirs) {
    if (!inos.insert(d.ino).second || d.ino >= id.next_ino || !paths.insert(d.path).second)
      return false;
  }
  for (const Identity::Dir& d : id.dirs)
    if (!inos.count(d.parent) || disk_inos.count(d.parent)) return false;
  by_xa_.assign(id.disks.size(), 0);
  for (const Identity::Disk& d : id.disks) {
    Disk& disk = disks_[d.ino];
    disk.info = d.info;
    disk.xa = d.xa;
    disk.born = Now();
    by_serial_.emplace(d.info.serial, d.ino);
    by_xa_[d.xa] = d.ino;
  }
  for (const Identity::Dir& d : id.dirs) {
    dir_by_path_.emplace(d.path, d.ino);
    dirs_[d.ino].parent = d.parent;
  }
  next_ino_ = id.next_ino;
  Reconcile();
  return true;
}

bool DiskTree::SetOnline(std::string_view serial, bool online) {
  auto it = by_serial_.find(serial);
  if (it == by_serial_.end()) return false;
  Disk& d = disks_[it->second];
  if (d.online == online) return true;
  d.online = online;
  Reconcile();
  return true;
}

void DiskTree::OpenRef(Ino ino) {
  auto it = disks_.find(ino);
  assert(it != disks_.end());
  if (it == disks_.end()) return;
  // An open starts on a visible disk and changes nothing, except for a
  // handle restored after a restart on a disk whose remote is not back:
  // that one becomes visible.
  if (it->second.open++ == 0 && !it->second.online) Reconcile();
}

void DiskTree::CloseRef(Ino ino) {
  auto it = disks_.find(ino);
  assert(it != disks_.end() && it->second.open > 0);
  if (it == disks_.end() || it->second.open <= 0) return;
  if (--it->second.open == 0 && !it->second.online) Reconcile();
}

void DiskTree::AddLookup(Ino ino, uint64_t n) {
  if (auto d = disks_.find(ino); d != disks_.end()) d->second.nlookup += n;
  if (auto d = dirs_.find(ino); d != dirs_.end()) d->second.nlookup += n;
}

void DiskTree::Forget(Ino ino, uint64_t n) {
  // The kernel never forgets more than it looked up; clamp anyway so a bug
  // elsewhere cannot wrap the counter.
  auto dec = [n](uint64_t& c) { c = c >= n ? c - n : 0; };
  if (auto d = disks_.find(ino); d != disks_.end()) dec(d->second.nlookup);
  if (auto d = dirs_.find(ino); d != dirs_.end()) dec(d->second.nlookup);
}

uint64_t DiskTree::lookup_count(Ino ino) const {
  if (auto d = disks_.find(ino); d != disks_.end()) return d->second.nlookup;
  if (auto d = dirs_.find(ino); d != dirs_.end()) return d->second.nlookup;
  return 0;
}

std::optional<Ino> DiskTree::Lookup(Ino parent, std::string_view name) const {
  auto d = dirs_.find(parent);
  if (d == dirs_.end()) return std::nullopt;
  if (name == ".") return parent;
  if (name == "..") return d->second.parent;
  auto c = d->second.children.find(name);
  if (c == d->second.children.end()) return std::nullopt;
  return c->second;
}

bool DiskTree::GetAttr(Ino ino, struct stat* st) const {
  *st = {};
  st->st_ino = ino;
  st->st_uid = attrs_.uid;
  st->st_gid = attrs_.gid;
  if (auto d = disks_.find(ino); d != disks_.end()) {
    const Disk& disk = d->second;
    st->st_mode = S_IFREG | (attrs_.file_mode & 07777);
    st->st_nlink = disk.nlink;
    st->st_size = static_cast<off_t>(disk.info.size);
    st->st_blksize = disk.info.blksize ? disk.info.blksize : 512;
    // st_blocks counts 512-byte units; report the media as fully allocated.
    st->st_blocks = static_cast<blkcnt_t>((disk.info.size + 511) / 512);
    st->st_atim = st->st_mtim = st->st_ctim = disk.born;
    return true;
  }
  if (auto d = dirs_.find(ino); d != dirs_.end()) {
    st->st_mode = S_IFDIR | (attrs_.dir_mode & 07777);
    st->st_nlink = 2 + d->second.subdirs;
    st->st_size = static_cast<off_t>(d->second.children.size());
    st->st_blksize = 4096;
    st->st_atim = st->st_mtim = st->st_ctim = born_;
    return true;
  }
  return false;
}

bool DiskTree::ReadDir(Ino dir, std::vector<DirEntry>* out) const {
  auto d = dirs_.find(dir);
  if (d == dirs_.end()) return false;
  out->clear();
  out->push_back({".", dir, true});
  out->push_back({"..", d->second.parent, true});
  for (const auto& [name, ino] : d->second.children) out->push_back({name, ino, IsDir(ino)});
  return true;
}

bool DiskTree::IsVisible(Ino ino) const {
  auto d = disks_.find(ino);
  return d != disks_.end() && Visible(d->second);
}

bool DiskTree::IsOnline(Ino ino) const {
  auto d = disks_.find(ino);
  return d != disks_.end() && d->second.online;
}

int DiskTree::open_count(Ino ino) const {
  auto d = disks_.find(ino);
  return d == disks_.end() ? 0 : d->second.open;
}

uint32_t DiskTree::nlink(Ino ino) const {
  struct stat st;
  return GetAttr(ino, &st) ? static_cast<uint32_t>(st.st_nlink) : 0;
}

BlockDevice* DiskTree::device(Ino ino) const {
  auto d = disks_.find(ino);
  return d == disks_.end() ? nullptr : d->second.dev;
}

const DiskInfo* DiskTree::info(Ino ino) const {
  auto d = disks_.find(ino);
  return d == disks_.end() ? nullptr : &d->second.info;
}

Ino DiskTree::InoOf(std::string_view serial) const {
  auto it = by_serial_.find(serial);
  return it == by_serial_.end() ? 0 : it->second;
}

std::string DiskTree::XaName(std::string_view serial) const {
  Ino ino = InoOf(serial);
  if (!ino) return {};
  return "xa" + std::to_string(disks_.at(ino).xa);
}

uint64_t DiskTree::visible_disks() const {
  uint64_t n = 0;
  for (const auto& [ino, d] : disks_) n += Visible(d) ? 1 : 0;
  return n;
}

uint64_t DiskTree::visible_bytes() const {
  uint64_t n = 0;
  for (const auto& [ino, d] : disks_) n += Visible(d) ? d.info.size : 0;
  return n;
}

Ino DiskTree::DirIno(const std::string& path, Ino parent) {
  auto it = dir_by_path_.find(path);
  if (it != dir_by_path_.end()) return it->second;
  Ino ino = next_ino_++;
  dir_by_path_.emplace(path, ino);
  dirs_[ino].parent = parent;
  identity_changed_ = true;
  return ino;
}

// Rebuilding the whole tree on each change is O(disks) and keeps collision
// and "who gets the name back" rules in one place; a daemon imports tens of
// disks, not millions.
void DiskTree::Reconcile() {
  std::map<Ino, Children> want;
  want[kRootIno] = {{"serno", kSernoIno}, {"by-label", kByLabelIno}, {"by-uuid", kByUuidIno}};
  want[kSernoIno];
  want[kByLabelIno];
  want[kByUuidIno];
  std::set<std::string, std::less<>> files, dirs = {"serno", "by-label", "by-uuid"};

  auto claim = [&](const std::vector<std::string>& comps, Ino disk) -> bool {
    std::string full = Join(comps, comps.size());
    if (files.count(full) || dirs.count(full)) return false;
    for (size_t n = 1; n < comps.size(); n++) {
      if (files.count(Join(comps, n))) return false;
    }
    Ino parent = kRootIno;
    for (size_t n = 1; n < comps.size(); n++) {
      std::string p = Join(comps, n);
      Ino dir = DirIno(p, parent);
      want[parent][comps[n - 1]] = dir;
      want[dir];
      dirs.insert(p);
      parent = dir;
    }
    want[parent][comps.back()] = disk;
    files.insert(full);
    return true;
  };

  // Lower xaN first: that order decides collisions.
  std::map<Ino, uint32_t> links;
  for (Ino ino : by_xa_) {
    const Disk& d = disks_.at(ino);
    if (!Visible(d)) continue;
    uint32_t n = 0;
    n += claim({"xa" + std::to_string(d.xa)}, ino);
    if (ValidComponent(d.info.serial)) n += claim({"serno", d.info.serial}, ino);
    if (!d.info.label.empty()) {
      std::vector<std::string> comps = {"by-label"};
      if (SplitPath(d.info.label, &comps)) n += claim(comps, ino);
    }
    if (!d.info.uuid.empty() && ValidComponent(d.info.uuid)) {
      n += claim({"by-uuid", d.info.uuid}, ino);
    }
    links[ino] = n;
  }

  // Install the new state first so the hook sees it, then report the diff.
  std::vector<TreeChange> changes;
  for (auto& [ino, dir] : dirs_) {
    auto w = want.find(ino);
    static const Children kEmpty;
    const Children& next = w == want.end() ? kEmpty : w->second;
    for (const auto& [name, child] : dir.children) {
      auto n = next.find(name);
      if (n == next.end() || n->second != child) {
        changes.push_back({TreeChange::Kind::kEntryRemoved, ino, name, child});
      }
    }
    for (const auto& [name, child] : next) {
      auto o = dir.children.find(name);
      if (o == dir.children.end() || o->second != child) {
        changes.push_back({TreeChange::Kind::kEntryAdded, ino, name, child});
      }
    }
    dir.children = next;
    dir.live = w != want.end();
    dir.subdirs = 0;
    for (const auto& [name, child] : next) dir.subdirs += dirs_.count(child) ? 1 : 0;
  }
  for (auto& [ino, d] : disks_) {
    auto l = links.find(ino);
    d.nlink = l == links.end() ? 0 : l->second;
  }
  // Removals first: a name that moves from one disk to another is then
  // seen as gone before it is seen as new.
  std::stable_partition(changes.begin(), changes.end(), [](const TreeChange& c) {
    return c.kind == TreeChange::Kind::kEntryRemoved;
  });
  for (const TreeChange& c : changes) Emit(c);
  std::vector<Ino> visible;
  for (Ino ino : by_xa_)
    if (Visible(disks_.at(ino))) visible.push_back(ino);
  if (visible != last_visible_) {
    last_visible_ = std::move(visible);
    identity_changed_ = true;
  }
  if (identity_changed_) {
    identity_changed_ = false;
    if (identity_hook_) identity_hook_();
  }
}

}  // namespace xdisk::fusedev
