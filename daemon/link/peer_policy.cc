#include "daemon/link/peer_policy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

namespace xdisk {

PeerPolicy::Decision PeerPolicy::Check(const std::string& addr, std::string* why) const {
  // The address comes from the kernel (inet_ntop), never from the peer's
  // bytes, but refuse anything that could walk out of the directory anyway.
  if (addr.empty() || addr.find('/') != std::string::npos || addr[0] == '.') {
    *why = "unusable peer address '" + addr + "'";
    return Decision::kRefused;
  }
  const std::string base = keys_dir_ + "/remote/" + addr;
  // .pub wins over .none, as in DragonFly: a key on file means the operator
  // wants encryption, and silently downgrading would be wrong.
  if (access((base + ".pub").c_str(), F_OK) == 0) {
    *why = base + ".pub asks for an encrypted link";
    return Decision::kEncrypted;
  }
  if (access((base + ".none").c_str(), F_OK) == 0) {
    *why = base + ".none allows plaintext";
    return Decision::kPlaintext;
  }
  *why = "neither " + base + ".none nor " + base + ".pub exists";
  return Decision::kRefused;
}

std::string NumericHost(const struct sockaddr* sa) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (sa->sa_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, buf, sizeof buf);
  } else if (sa->sa_family == AF_INET6) {
    const auto* s6 = reinterpret_cast<const sockaddr_in6*>(sa);
    if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
      inet_ntop(AF_INET, &s6->sin6_addr.s6_addr[12], buf, sizeof buf);
    } else {
      inet_ntop(AF_INET6, &s6->sin6_addr, buf, sizeof buf);
    }
  }
  return buf;
}

std::string SockaddrToString(const struct sockaddr* sa) {
  std::string host = NumericHost(sa);
  int port = 0;
  bool v6 = false;
  if (sa->sa_family == AF_INET) {
    port = ntohs(reinterpret_cast<const sockaddr_in*>(sa)->sin_port);
  } else if (sa->sa_family == AF_INET6) {
    port = ntohs(reinterpret_cast<const sockaddr_in6*>(sa)->sin6_port);
    v6 = host.find(':') != std::string::npos;
  }
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

}  // namespace xdisk
