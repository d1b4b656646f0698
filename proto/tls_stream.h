// TlsStream: TLS 1.3 between two xdisk-fuse daemons over memory buffers,
// authenticated by the same RSA key files as DragonFly's scheme
// (docs/link-crypto.md, "TLS 1.3 between xdisk-fuse daemons").
//
// Pure code: wire bytes in, plaintext and wire bytes out; OpenSSL 3 does
// the TLS. Each side presents a self-signed certificate made at Create()
// from its own rsa.prv, and accepts the peer only if the peer's certificate
// carries exactly the public key on file for it (KEYS/remote/ADDR.pub):
// mutual pinning, no certificate authority. TLS 1.3 only (forward secrecy
// by ECDHE), no session tickets, no resumption.
//
// Use: the connecting side is kClient, the accepting side kServer.
//   Start(&to_send)                      the client's first flight
//   Receive(wire, &plain, &to_send)      until handshake_done(); send
//                                        to_send after every call
//   Seal(plain, &wire) / Receive(...)    afterwards, application data
// Any error is final for the link. Not thread-safe; one object per link.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "proto/rsa_handshake.h"
#include "proto/status.h"

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct x509_store_ctx_st X509_STORE_CTX;

namespace xdisk::dfcrypto {

class TlsStream {
 public:
  enum class Role { kClient, kServer };

  // REQUIRES: own_private holds a private key. Fails if OpenSSL cannot set
  // up the context or the certificate.
  static Result<std::unique_ptr<TlsStream>> Create(Role role, const RsaKey& own_private,
                                                   const RsaKey& peer_public);
  ~TlsStream();
  TlsStream(const TlsStream&) = delete;
  TlsStream& operator=(const TlsStream&) = delete;

  // The client's ClientHello (nothing for a server).
  Status Start(std::vector<uint8_t>* to_send);
  // Takes received wire bytes. Appends decrypted application data to
  // *plain and bytes that must be sent (handshake messages, alerts) to
  // *to_send. Errors: "TLS handshake failed: ..." (kProtocol), "key
  // mismatch: ..." (the peer's certificate has another key),
  // "TLS record failed: ..." (kCorruption: a record did not authenticate).
  Status Receive(std::span<const uint8_t> wire, std::vector<uint8_t>* plain,
                 std::vector<uint8_t>* to_send);
  // Encrypts application data. REQUIRES: handshake_done().
  Status Seal(std::span<const uint8_t> plain, std::vector<uint8_t>* wire);
  bool handshake_done() const { return done_; }

 private:
  TlsStream() = default;
  Status Drive(std::vector<uint8_t>* plain, std::vector<uint8_t>* to_send);
  void DrainOutput(std::vector<uint8_t>* to_send);

  static int OnVerify(int preverify_ok, X509_STORE_CTX* store);

  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  EVP_PKEY* peer_public_ = nullptr;  // a reference of our own
  bool done_ = false;
  bool key_mismatch_ = false;
  Status failed_;
};

}  // namespace xdisk::dfcrypto
