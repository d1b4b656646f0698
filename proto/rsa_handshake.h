// DragonFly's 512-byte RSA link handshake (docs/dmsg-protocol.md §2.2-§2.5;
// byte layout and choices in docs/link-crypto.md).
//
// Pure code: keys come in as PEM text, randomness as bytes from the caller,
// and the results are bytes or a typed error. No sockets, no files, no loop.
// The RSA arithmetic is OpenSSL 3's; nothing here is hand-written
// cryptography.
//
// The handshake, per side (both sides at the same time):
//   1. block = BuildHandshakeBlock(random 512 bytes)   our session material
//   2. wire  = SealHandshake(block, our key, peer key) -> 512 bytes to send
//   3. read exactly 512 bytes from the peer
//   4. peer  = OpenHandshake(those bytes, our key, peer key) -> the peer's
//      session material, or an error that says why it is refused
//   5. session keys: TransmitKey(block.sess), ReceiveKey(peer.sess)
//      (proto/gcm_stream.h)
//
// Thread-safety: RsaKey is immutable after parsing and may be shared between
// threads; the functions keep no state.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "proto/status.h"

typedef struct evp_pkey_st EVP_PKEY;

namespace xdisk::dfcrypto {

// ---- Layout of the 512-byte block (docs/link-crypto.md "Handshake block") ----
inline constexpr size_t kHandshakeBytes = 512;
inline constexpr size_t kOffPad1 = 0x000;
inline constexpr size_t kOffMagic = 0x008;
inline constexpr size_t kOffVersion = 0x00A;
inline constexpr size_t kOffFlags = 0x00C;
inline constexpr size_t kOffSess = 0x010;
inline constexpr size_t kSessBytes = 64;
inline constexpr size_t kOffVerf = 0x050;
inline constexpr size_t kVerfBytes = 16;
inline constexpr size_t kOffQuickmsg = 0x060;
inline constexpr size_t kOffPad2 = 0x100;
inline constexpr uint16_t kHandshakeMagic = 0x4832;
inline constexpr uint16_t kHandshakeMagicSwapped = 0x3248;
inline constexpr uint16_t kHandshakeVersion = 1;

using HandshakeBlock = std::array<uint8_t, kHandshakeBytes>;
using SessionMaterial = std::array<uint8_t, kSessBytes>;

// An RSA key (public, or private with its public part). Movable, not
// copyable; owns its EVP_PKEY.
class RsaKey {
 public:
  RsaKey() = default;
  RsaKey(RsaKey&&) noexcept = default;
  RsaKey& operator=(RsaKey&&) noexcept = default;

  // Parses PEM text. A private key may be PKCS#1 ("BEGIN RSA PRIVATE KEY")
  // or PKCS#8; a public key is SubjectPublicKeyInfo ("BEGIN PUBLIC KEY"),
  // what `openssl rsa -pubout` writes. Anything but an RSA key is an error.
  // `name` (a file name) prefixes error messages.
  static Result<RsaKey> FromPrivatePem(std::string_view pem, const std::string& name);
  static Result<RsaKey> FromPublicPem(std::string_view pem, const std::string& name);

  // The modulus size in bytes (256 for a 2048-bit key); 0 when empty.
  size_t modulus_bytes() const;
  bool has_private() const { return has_private_; }
  // True if both keys have the same modulus and public exponent.
  bool SamePublicKey(const RsaKey& other) const;
  // The SubjectPublicKeyInfo PEM text of the public part.
  std::string PublicPem() const;
  EVP_PKEY* pkey() const { return pkey_.get(); }

  // A fresh key pair (xdisk-fuse keygen). `bits` >= 2048.
  static Result<RsaKey> Generate(int bits);
  // The private key as PKCS#1 PEM, as `openssl genrsa` and hammer2 write it.
  std::string PrivatePem() const;

 private:
  static Result<RsaKey> FromPem(std::string_view pem, const std::string& name, bool is_private);

  struct Free {
    void operator()(EVP_PKEY* p) const;
  };
  std::unique_ptr<EVP_PKEY, Free> pkey_;
  bool has_private_ = false;
};

// Checks that three keys can run the handshake together: own private and
// public key are one pair, all three have the same modulus size B, and B is
// 256 or 512 (2048- or 4096-bit). The error names the file and the sizes
// ("wrong modulus size").
Status CheckHandshakeKeys(const RsaKey& own_private, const RsaKey& own_public,
                          const RsaKey& peer_public);

// The plaintext block we send: `random` (512 bytes from a CSPRNG, copied
// whole) with pad1/pad2 masked, magic, version 1, flags 0, verf folded from
// sess and quickmsg "Testing 1 2 3" set.
HandshakeBlock BuildHandshakeBlock(std::span<const uint8_t, kHandshakeBytes> random);

// Checks a received, already decrypted block: magic, version, verf. Returns
// its sess, or a kProtocol error: "bad handshake: wrong magic (0x....)",
// "... byte-swapped magic (a big-endian peer, unsupported)", "... wrong
// version (N, want 1)", "... verifier mismatch (at byte J)".
Result<SessionMaterial> VerifyHandshakeBlock(const HandshakeBlock& block);

// Encrypts `block` for the wire (§2.4). The retry counters in `block` are
// advanced in place until each first-stage result has its top two bits
// clear, so *block is what the peer will decrypt. REQUIRES: the keys passed
// CheckHandshakeKeys. An error (kProtocol, "RSA failure: ...") is fatal.
Result<HandshakeBlock> SealHandshake(HandshakeBlock* block, const RsaKey& own_private,
                                     const RsaKey& peer_public);

// Decrypts and verifies the peer's 512 bytes. `wire` shorter than 512 is
// "short handshake (N of 512 bytes)". Other errors are kProtocol, read
// "bad handshake: <kind> (a wrong key on either side, or not a handshake)"
// with kind RSA failure, wrong magic, wrong version or verifier mismatch,
// and are the same text for every attempt that fails the same way (the
// details of a random block are dropped), so that callers can log repeats
// once.
Result<SessionMaterial> OpenHandshake(std::span<const uint8_t> wire, const RsaKey& own_private,
                                      const RsaKey& peer_public);

// True if `bytes` start with a whole, valid plaintext dmsg frame (good magic
// and header CRC): what a peer that has us as `.none` sends where we expect
// the handshake. False when there are too few bytes to tell.
bool LooksLikePlaintextDmsg(std::span<const uint8_t> bytes);

}  // namespace xdisk::dfcrypto
