// LinkKeys: what an encrypted link needs from the keys directory, loaded
// for one peer (docs/link-crypto.md, "Key files"; docs/dmsg-protocol.md
// §2.1-§2.2).
//
// LoadLinkKeys reads, for the peer's numeric address ADDR:
//   KEYS/rsa.prv                       our private key
//   KEYS/rsa.pub                       our public key (must match rsa.prv)
//   KEYS/remote/ADDR.pub               the peer's public key
//   KEYS/remote/ADDR.dragonfly-gcm-b   if present: stream variant B
//   KEYS/remote/ADDR.tls13             if present: TLS 1.3 instead (for
//                                      xdisk-fuse peers only)
// and checks that the three keys can run the handshake together. It is
// called for every new link, after PeerPolicy said kEncrypted, so replacing
// a key file takes effect with the next link. Errors name the file and say
// what is wrong; they refuse that one link only.
//
// Threading: any thread; it only reads files. The result is immutable and
// shared by the link that uses it.
#pragma once

#include <memory>
#include <string>

#include "proto/gcm_stream.h"
#include "proto/rsa_handshake.h"
#include "proto/status.h"

namespace xdisk {

struct LinkKeys {
  dfcrypto::StreamVariant variant = dfcrypto::StreamVariant::kGcmA;
  // TLS 1.3 pinned to the same keys instead of DragonFly's scheme.
  bool tls13 = false;
  dfcrypto::RsaKey own_private;
  dfcrypto::RsaKey peer_public;
  std::string peer_file;  // KEYS/remote/ADDR.pub, for log lines
};

// REQUIRES: `addr` was accepted by PeerPolicy::Check (no '/', not empty).
Result<std::shared_ptr<const LinkKeys>> LoadLinkKeys(const std::string& keys_dir,
                                                     const std::string& addr);

// Reads a whole (small) file; kNotFound when it does not exist.
Result<std::string> ReadKeyFile(const std::string& path);

}  // namespace xdisk
