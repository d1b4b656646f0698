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
//
// Kernel TLS (docs/link-crypto.md, "Kernel TLS offload"): once the
// handshake is done, ExportKeys() hands one direction's record protection
// (key, IV, next sequence number) to whoever carries on with it, the kernel
// in practice. The stream itself does no I/O; the link decides when.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "proto/plain_sink.h"
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
  // Application data is decrypted straight into *plain's space (one copy
  // less than through a buffer of ours).
  Status Receive(std::span<const uint8_t> wire, PlainSink* plain, std::vector<uint8_t>* to_send);
  Status Receive(std::span<const uint8_t> wire, std::vector<uint8_t>* plain,
                 std::vector<uint8_t>* to_send) {
    VectorSink sink(plain);
    return Receive(wire, &sink, to_send);
  }
  // Encrypts application data. REQUIRES: handshake_done().
  Status Seal(std::span<const uint8_t> plain, std::vector<uint8_t>* wire);
  bool handshake_done() const { return done_; }

  // One direction's TLS 1.3 record protection after the handshake (RFC 8446
  // §7.3 keys from the traffic secret, §5.3 sequence number): what Linux's
  // kTLS takes in struct tls12_crypto_info_aes_gcm_{128,256}.
  struct TrafficKeys {
    size_t key_bytes = 0;  // 16 (TLS_AES_128_GCM_SHA256) or 32 (TLS_AES_256_GCM_SHA384)
    std::array<uint8_t, 32> key{};
    std::array<uint8_t, 12> iv{};  // the write IV; the kernel's salt is its first 4 bytes
    uint64_t seq = 0;              // the sequence number of the next record
  };
  enum class Direction { kSend, kReceive };
  // REQUIRES: handshake_done(). The keys for records we send from now on
  // (kSend), or for records received after every byte passed to Receive()
  // so far (kReceive; meaningful only at_record_boundary()). Fails with
  // for a suite other than AES-GCM (the kernel would take
  // ChaCha20 too; we never offer it to ourselves, see Create) and if the
  // traffic secrets were not captured. After handing a direction over,
  // the caller must not Seal() (kSend) or Receive() (kReceive) again.
  Result<TrafficKeys> ExportKeys(Direction dir) const;
  // True when every wire byte given to Receive() belongs to records that
  // were processed whole: the socket's next byte starts a record, so the
  // kernel can take over reading there.
  bool at_record_boundary() const;
  // Wipes the captured traffic secrets (once both directions are handed
  // over, or never will be).
  void ForgetSecrets();
  // Records sealed and opened since the handshake ended (the sequence
  // numbers ExportKeys reports).
  uint64_t records_sent() const { return tx_records_; }
  uint64_t records_received() const { return rx_records_; }

  struct Io;  // the BIO's view of the current call (tls_stream.cc)

 private:
  TlsStream() = default;
  Status Drive(PlainSink* plain, std::vector<uint8_t>* to_send);

  static int OnVerify(int preverify_ok, X509_STORE_CTX* store);
  static void OnKeylog(const SSL* ssl, const char* line);
  static void OnRecord(int write_p, int version, int content_type, const void* buf, size_t len,
                       SSL* ssl, void* arg);

  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  std::unique_ptr<Io> io_;
  EVP_PKEY* peer_public_ = nullptr;  // a reference of our own
  bool done_ = false;
  bool key_mismatch_ = false;
  Status failed_;
  Role role_ = Role::kClient;
  // The application traffic secrets (RFC 8446 §7.1), captured from
  // OpenSSL's key log for ExportKeys; wiped by ForgetSecrets/destructor.
  std::vector<uint8_t> client_secret_, server_secret_;
  uint64_t tx_records_ = 0, rx_records_ = 0;
};

}  // namespace xdisk::dfcrypto
