#include "daemon/link/link_ktls.h"

#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#ifndef SOL_TLS
#define SOL_TLS 282
#endif

namespace xdisk::ktls {

namespace {

bool Probe() {
  // XDISK_KTLS=off keeps TLS in user space (to compare the two on one
  // kernel, or to rule the offload out).
  const char* env = getenv("XDISK_KTLS");
  if (env != nullptr && strcmp(env, "off") == 0) return false;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  // The kernel looks the upper layer up (and may load its module) before
  // the layer itself objects to the unconnected socket.
  int rc = setsockopt(fd, IPPROTO_TCP, TCP_ULP, "tls", sizeof "tls");
  int err = errno;
  close(fd);
  return rc == 0 || err == ENOTCONN;
}

// Fills the kernel's crypto_info for TLS 1.3 AES-GCM: the 12-byte write IV
// is split into the 4-byte salt and the 8-byte "iv"; the record sequence
// number is big-endian.
template <typename Info>
void Fill(Info* info, uint16_t cipher, const dfcrypto::TlsStream::TrafficKeys& k) {
  memset(info, 0, sizeof *info);
  info->info.version = TLS_1_3_VERSION;
  info->info.cipher_type = cipher;
  memcpy(info->salt, k.iv.data(), sizeof info->salt);
  memcpy(info->iv, k.iv.data() + sizeof info->salt, sizeof info->iv);
  memcpy(info->key, k.key.data(), sizeof info->key);
  for (size_t i = 0; i < sizeof info->rec_seq; ++i)
    info->rec_seq[i] = static_cast<unsigned char>(k.seq >> (8 * (sizeof info->rec_seq - 1 - i)));
}

}  // namespace

bool Available() {
  static const bool available = Probe();
  return available;
}

Status Attach(int fd) {
  if (setsockopt(fd, IPPROTO_TCP, TCP_ULP, "tls", sizeof "tls") != 0)
    return Status::FromErrno(errno, "setsockopt(TCP_ULP, tls)");
  return Status::Ok();
}

Status Install(int fd, dfcrypto::TlsStream::Direction dir,
               const dfcrypto::TlsStream::TrafficKeys& keys) {
  int opt = dir == dfcrypto::TlsStream::Direction::kSend ? TLS_TX : TLS_RX;
  const char* what = opt == TLS_TX ? "setsockopt(SOL_TLS, TLS_TX)" : "setsockopt(SOL_TLS, TLS_RX)";
  int rc;
  int err = 0;
  if (keys.key_bytes == 32) {
    tls12_crypto_info_aes_gcm_256 info;
    Fill(&info, TLS_CIPHER_AES_GCM_256, keys);
    rc = setsockopt(fd, SOL_TLS, opt, &info, sizeof info);
    err = errno;
    OPENSSL_cleanse(&info, sizeof info);
  } else if (keys.key_bytes == 16) {
    tls12_crypto_info_aes_gcm_128 info;
    Fill(&info, TLS_CIPHER_AES_GCM_128, keys);
    rc = setsockopt(fd, SOL_TLS, opt, &info, sizeof info);
    err = errno;
    OPENSSL_cleanse(&info, sizeof info);
  } else {
    return Status::Unavailable("kTLS: no AES-GCM key");
  }
  if (rc != 0) return Status::FromErrno(err, what);
  return Status::Ok();
}

}  // namespace xdisk::ktls
