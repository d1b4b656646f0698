#include "daemon/link/keygen.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string_view>

#include "daemon/base/options.h"
#include "daemon/link/link_keys.h"
#include "proto/rsa_handshake.h"

namespace xdisk {

namespace {

constexpr int kKeyBits = 2048;  // what hammer2 rsainit makes; see docs/link-crypto.md

const char kKeygenUsage[] =
    "Usage: xdisk-fuse keygen [--keys DIR]\n"
    "\n"
    "Creates DIR/rsa.prv (mode 0400) and DIR/rsa.pub (0444), a 2048-bit RSA key\n"
    "pair for encrypted links, like DragonFly's 'hammer2 rsainit'. Existing keys\n"
    "are never overwritten. DIR defaults to /etc/xdisk-fuse.\n";

Status MakeDir(const std::string& path) {
  if (mkdir(path.c_str(), 0700) == 0 || errno == EEXIST) return Status::Ok();
  return Status::FromErrno(errno, "mkdir " + path);
}

// Writes `text` to `path` with `mode`, never replacing an existing file:
// the bytes go to a temporary file first and are synced, then link(2) puts
// them in place or fails with EEXIST. A crash leaves at worst the
// temporary file, never a half-written key under the real name.
Status WriteNewFile(const std::string& path, const std::string& text, mode_t mode) {
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) return Status::FromErrno(errno, tmp);
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      close(fd);
      unlink(tmp.c_str());
      return Status::FromErrno(e, tmp);
    }
    done += static_cast<size_t>(n);
  }
  // open() applied the umask; the mode must be exactly `mode`.
  if (fchmod(fd, mode) != 0 || fsync(fd) != 0) {
    int e = errno;
    close(fd);
    unlink(tmp.c_str());
    return Status::FromErrno(e, tmp);
  }
  close(fd);
  int rc = link(tmp.c_str(), path.c_str());
  int e = errno;
  unlink(tmp.c_str());
  if (rc != 0) return Status::FromErrno(e, path);
  return Status::Ok();
}

Status SyncDir(const std::string& dir) {
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, dir);
  int rc = fsync(fd);
  int e = errno;
  close(fd);
  return rc == 0 ? Status::Ok() : Status::FromErrno(e, "fsync " + dir);
}

Status Keygen(const std::string& dir, std::string* out) {
  if (Status st = MakeDir(dir); !st.ok()) return st;
  if (Status st = MakeDir(dir + "/remote"); !st.ok()) return st;
  const std::string prv_path = dir + "/rsa.prv";
  const std::string pub_path = dir + "/rsa.pub";

  dfcrypto::RsaKey key;
  auto prv_text = ReadKeyFile(prv_path);
  if (prv_text.ok()) {
    auto existing = dfcrypto::RsaKey::FromPrivatePem(*prv_text, prv_path);
    if (!existing.ok()) return existing.status();
    key = std::move(existing.value());
    *out += prv_path + " exists: kept\n";
  } else if (prv_text.status().kind() == Status::Kind::kNotFound) {
    auto fresh = dfcrypto::RsaKey::Generate(kKeyBits);
    if (!fresh.ok()) return fresh.status();
    key = std::move(fresh.value());
    if (Status st = WriteNewFile(prv_path, key.PrivatePem(), 0400); !st.ok()) return st;
    *out += "created " + prv_path + " (" + std::to_string(kKeyBits) + "-bit RSA, mode 0400)\n";
  } else {
    return prv_text.status();
  }

  auto pub_text = ReadKeyFile(pub_path);
  if (pub_text.ok()) {
    auto existing = dfcrypto::RsaKey::FromPublicPem(*pub_text, pub_path);
    if (!existing.ok()) return existing.status();
    if (!existing->SamePublicKey(key))
      return Status::InvalidArgument(pub_path + " is not the public half of " + prv_path +
                                     "; not touching either");
    *out += pub_path + " exists: kept\n";
  } else if (pub_text.status().kind() == Status::Kind::kNotFound) {
    if (Status st = WriteNewFile(pub_path, key.PublicPem(), 0444); !st.ok()) return st;
    *out += "created " + pub_path + " (mode 0444)\n";
  } else {
    return pub_text.status();
  }
  if (Status st = SyncDir(dir); !st.ok()) return st;

  *out +=
      "\nOn each peer, install this host's public key as REMOTE/ADDR.pub, where\n"
      "REMOTE is the peer's keys directory plus /remote (/etc/hammer2/remote on\n"
      "DragonFly) and ADDR this host's address as the peer sees it, e.g.\n"
      "  scp " +
      pub_path +
      " peer:/etc/hammer2/remote/192.0.2.7.pub\n"
      "and put the peer's rsa.pub into " +
      dir + "/remote/PEER-ADDR.pub here.\n\n" + key.PublicPem();
  return Status::Ok();
}

}  // namespace

int KeygenMain(int argc, char** argv) {
  std::string dir = DaemonOptions().keys_dir;
  for (int i = 1; i < argc; ++i) {
    SplitOption o = SplitLongOption(argv[i]);
    if (o.name == "-h" || o.name == "--help") {
      fputs(kKeygenUsage, stdout);
      return 0;
    }
    if (o.name == "--keys") {
      if (o.has_inline) {
        dir = std::string(o.value);
      } else if (i + 1 < argc) {
        dir = argv[++i];
      } else {
        fprintf(stderr, "xdisk-fuse keygen: --keys needs a directory\n");
        return 2;
      }
      if (dir.empty()) {
        fprintf(stderr, "xdisk-fuse keygen: --keys needs a directory\n");
        return 2;
      }
      continue;
    }
    fprintf(stderr, "xdisk-fuse keygen: unknown argument '%s'\n%s", argv[i], kKeygenUsage);
    return 2;
  }
  std::string out;
  Status st = Keygen(dir, &out);
  fputs(out.c_str(), stdout);
  if (!st.ok()) {
    fprintf(stderr, "xdisk-fuse keygen: %s\n", st.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace xdisk
