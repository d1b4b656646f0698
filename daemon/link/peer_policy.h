// PeerPolicy: who may talk to us, default-deny, in the manner of DragonFly's
// /etc/hammer2/remote directory (spec §2.1):
//
//   KEYS/remote/<addr>.pub   an encrypted link: DragonFly's RSA handshake
//                            and AES-256-GCM stream (daemon/link/link_keys.h,
//                            docs/link-crypto.md)
//   KEYS/remote/<addr>.none  a plaintext link
//   neither                  refused
//
// <addr> is the numeric address as printed by inet_ntop: "192.0.2.7",
// "::1". IPv4-mapped IPv6 addresses are looked up in their IPv4 form. The
// directory is read on every check, so adding a file takes effect at once.
#pragma once

#include <string>

#include "proto/status.h"

struct sockaddr;

namespace xdisk {

class PeerPolicy {
 public:
  enum class Decision { kPlaintext, kEncrypted, kRefused };

  explicit PeerPolicy(std::string keys_dir) : keys_dir_(std::move(keys_dir)) {}

  // `addr` is a numeric address string. `why` explains the decision in a
  // form fit for a log line ("no /etc/xdisk-fuse/remote/1.2.3.4.none or
  // .pub").
  Decision Check(const std::string& addr, std::string* why) const;

  const std::string& keys_dir() const { return keys_dir_; }

 private:
  std::string keys_dir_;
};

// Numeric host of a socket address, IPv4-mapped IPv6 folded to IPv4.
std::string NumericHost(const struct sockaddr* sa);
// "host:port" ("[v6]:port" for IPv6) for logs.
std::string SockaddrToString(const struct sockaddr* sa);

}  // namespace xdisk
