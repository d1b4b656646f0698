// DragonFly's AES-256-GCM link stream, variants A and B
// (docs/dmsg-protocol.md §2.5-§2.6; byte layout in docs/link-crypto.md).
//
// Pure code: plaintext in, ciphertext out and back, keys from the handshake
// (proto/rsa_handshake.h). No sockets, no loop. OpenSSL 3 does the AES-GCM.
//
// StreamSealer turns the plaintext dmsg stream into wire bytes and
// StreamOpener the reverse. Both accept their input in any chunking: a
// partial 64-byte chunk (or 80-byte wire chunk) is kept until the rest
// arrives, so feeding a stream byte by byte gives the same output as feeding
// it whole. Each object is one direction of one link; it is not thread-safe.
//
// Variant A: each 64-byte chunk is one GCM operation with IV fixed||counter
// and travels as 64 ciphertext bytes plus its 16-byte tag; the opener checks
// every tag before releasing the chunk's plaintext, and after a bad tag the
// opener stays failed.
// Variant B: one GCM keystream per direction, no tags, no integrity; the
// keystream is the spec's inference and is UNCONFIRMED against a real
// DragonFly 6.x host.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "proto/plain_sink.h"
#include "proto/status.h"

typedef struct evp_cipher_ctx_st EVP_CIPHER_CTX;

namespace xdisk::dfcrypto {

inline constexpr size_t kChunkBytes = 64;   // plaintext per chunk
inline constexpr size_t kTagBytes = 16;     // variant A only
inline constexpr size_t kKeyBytes = 32;     // AES-256
inline constexpr size_t kFixedIvBytes = 4;  // IV = fixed(4) || counter(8, BE)

enum class StreamVariant {
  kGcmA,  // 80 wire bytes per 64: ciphertext + tag
  kGcmB,  // 64 wire bytes per 64: continuous keystream, no tag
};
// "dragonfly-gcm-a" / "dragonfly-gcm-b": the names xdiskctl shows.
const char* StreamVariantName(StreamVariant v);

// One direction's key: AES key and the fixed part of the IV.
struct StreamKey {
  std::array<uint8_t, kKeyBytes> key{};
  std::array<uint8_t, kFixedIvBytes> fixed_iv{};
};
// sess[0..31] is the key, sess[32..35] the fixed IV (§2.5). The sender uses
// its own sess, the receiver the sender's.
StreamKey StreamKeyFromSess(std::span<const uint8_t, 64> sess);

// Wire bytes for `plaintext_bytes` (a multiple of 64) under `v`.
size_t SealedBytes(StreamVariant v, size_t plaintext_bytes);

class StreamSealer {
 public:
  // Fails only if OpenSSL cannot set up the cipher.
  static Result<std::unique_ptr<StreamSealer>> Create(StreamVariant v, const StreamKey& k);
  ~StreamSealer();
  StreamSealer(const StreamSealer&) = delete;
  StreamSealer& operator=(const StreamSealer&) = delete;

  // Appends the wire bytes of every chunk completed by `plaintext` to *out;
  // a trailing partial chunk waits for the next call. An error (OpenSSL
  // failure, variant B's 64 GiB limit) is final: the link must be dropped.
  Status Seal(std::span<const uint8_t> plaintext, std::vector<uint8_t>* out);
  // Plaintext bytes of an incomplete chunk held back (0 after a whole
  // number of messages).
  size_t pending() const { return partial_len_; }
  uint64_t chunks() const { return counter_; }

 private:
  StreamSealer(StreamVariant v, const StreamKey& k);
  StreamVariant variant_;
  StreamKey key_;
  EVP_CIPHER_CTX* ctx_ = nullptr;
  uint64_t counter_ = 0;
  std::array<uint8_t, kChunkBytes> partial_{};
  size_t partial_len_ = 0;
};

class StreamOpener {
 public:
  static Result<std::unique_ptr<StreamOpener>> Create(StreamVariant v, const StreamKey& k);
  ~StreamOpener();
  StreamOpener(const StreamOpener&) = delete;
  StreamOpener& operator=(const StreamOpener&) = delete;

  // Puts the plaintext of every wire chunk completed by `wire` into *out,
  // decrypting straight into its space (no copy on the way).
  // Variant A: a chunk whose tag does not verify is a kCorruption error
  // ("bad tag on chunk N"); its plaintext is not committed, and every later
  // call fails the same way.
  Status Open(std::span<const uint8_t> wire, PlainSink* out);
  // The same, appending to a vector.
  Status Open(std::span<const uint8_t> wire, std::vector<uint8_t>* out) {
    VectorSink sink(out);
    return Open(wire, &sink);
  }
  // Wire bytes of an incomplete chunk held back: non-zero at EOF means the
  // stream was cut inside a chunk.
  size_t pending() const { return partial_len_; }
  uint64_t chunks() const { return counter_; }

 private:
  StreamOpener(StreamVariant v, const StreamKey& k);
  Status OpenChunk(const uint8_t* wire, PlainSink* out);
  StreamVariant variant_;
  StreamKey key_;
  EVP_CIPHER_CTX* ctx_ = nullptr;
  uint64_t counter_ = 0;
  std::array<uint8_t, kChunkBytes + kTagBytes> partial_{};
  size_t partial_len_ = 0;
  Status failed_;
};

}  // namespace xdisk::dfcrypto
