#include "daemon/link/link_keys.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>

namespace xdisk {

Result<std::string> ReadKeyFile(const std::string& path) {
  FILE* f = fopen(path.c_str(), "re");
  if (f == nullptr) {
    if (errno == ENOENT) return Status::NotFound(path + " does not exist");
    return Status::FromErrno(errno, path);
  }
  std::string text;
  char buf[4096];
  size_t n;
  // Key files are a few KiB; anything far larger is not a key.
  while ((n = fread(buf, 1, sizeof buf, f)) > 0 && text.size() < (1u << 20)) text.append(buf, n);
  bool failed = ferror(f) != 0;
  fclose(f);
  if (failed) return Status::FromErrno(EIO, path);
  return text;
}

Result<std::shared_ptr<const LinkKeys>> LoadLinkKeys(const std::string& keys_dir,
                                                     const std::string& addr) {
  auto keys = std::make_shared<LinkKeys>();
  const std::string prv_path = keys_dir + "/rsa.prv";
  const std::string pub_path = keys_dir + "/rsa.pub";
  keys->peer_file = keys_dir + "/remote/" + addr + ".pub";

  auto prv_text = ReadKeyFile(prv_path);
  if (!prv_text.ok())
    return Status::NotFound(prv_text.status().message() +
                            " (an encrypted link needs our own keys: xdisk-fuse keygen)");
  auto own_private = dfcrypto::RsaKey::FromPrivatePem(*prv_text, prv_path);
  if (!own_private.ok()) return own_private.status();
  auto pub_text = ReadKeyFile(pub_path);
  if (!pub_text.ok()) return pub_text.status();
  auto own_public = dfcrypto::RsaKey::FromPublicPem(*pub_text, pub_path);
  if (!own_public.ok()) return own_public.status();
  auto peer_text = ReadKeyFile(keys->peer_file);
  if (!peer_text.ok()) return peer_text.status();
  auto peer_public = dfcrypto::RsaKey::FromPublicPem(*peer_text, keys->peer_file);
  if (!peer_public.ok()) return peer_public.status();
  if (Status st = dfcrypto::CheckHandshakeKeys(*own_private, *own_public, *peer_public); !st.ok())
    return Status::InvalidArgument(keys_dir + ": " + st.message());

  // Variant B only when the operator asked for it for this peer: it has no
  // integrity and is unverified against a real DragonFly 6.x host.
  const std::string b_marker = keys_dir + "/remote/" + addr + ".dragonfly-gcm-b";
  if (access(b_marker.c_str(), F_OK) == 0) keys->variant = dfcrypto::StreamVariant::kGcmB;
  // TLS only when asked for by name: a DragonFly peer's file says .pub and
  // nothing more, and DragonFly speaks only its own scheme.
  const std::string tls_marker = keys_dir + "/remote/" + addr + ".tls13";
  if (access(tls_marker.c_str(), F_OK) == 0) keys->tls13 = true;
  keys->own_private = std::move(own_private.value());
  keys->peer_public = std::move(peer_public.value());
  return std::shared_ptr<const LinkKeys>(std::move(keys));
}

}  // namespace xdisk
