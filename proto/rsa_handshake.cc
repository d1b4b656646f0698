#include "proto/rsa_handshake.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <cstdio>
#include <cstring>

#include "proto/frame_decoder.h"
#include "proto/openssl_error.h"

namespace xdisk::dfcrypto {

namespace {

// Encrypted private keys are not supported: without this callback OpenSSL
// would prompt on the daemon's terminal.
int NoPassphrase(char*, int, int, void*) { return 0; }

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;

struct CtxFree {
  void operator()(EVP_PKEY_CTX* c) const { EVP_PKEY_CTX_free(c); }
};
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, CtxFree>;

BioPtr ReadBio(std::string_view text) {
  return BioPtr(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

std::string BioText(BIO* b) {
  char* data = nullptr;
  long n = BIO_get_mem_data(b, &data);
  return n > 0 ? std::string(data, static_cast<size_t>(n)) : std::string();
}

uint16_t GetU16(const HandshakeBlock& b, size_t off) {
  return static_cast<uint16_t>(b[off] | (b[off + 1] << 8));
}

// m^d mod n with `k`'s private key, or m^e mod n with its public key, on one
// B-byte big-endian block. §2.4's "private encrypt" and "private decrypt"
// are the same exponentiation without padding, as are "public encrypt" and
// "public decrypt"; OpenSSL refuses a block that is not below the modulus.
Status RawRsa(const RsaKey& k, bool use_private, const uint8_t* in, uint8_t* out) {
  const size_t b = k.modulus_bytes();
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new(k.pkey(), nullptr));
  if (!ctx) return Status::Protocol("RSA failure: " + TakeOpenSslError());
  int ok = use_private ? EVP_PKEY_decrypt_init(ctx.get()) : EVP_PKEY_encrypt_init(ctx.get());
  if (ok == 1) ok = EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_NO_PADDING);
  size_t outlen = b;
  if (ok == 1)
    ok = use_private ? EVP_PKEY_decrypt(ctx.get(), out, &outlen, in, b)
                     : EVP_PKEY_encrypt(ctx.get(), out, &outlen, in, b);
  if (ok != 1 || outlen != b) return Status::Protocol("RSA failure: " + TakeOpenSslError());
  return Status::Ok();
}

constexpr char kWrongKey[] = " (a wrong key on either side, or not a handshake)";

}  // namespace

// ---- RsaKey ----

void RsaKey::Free::operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }

Result<RsaKey> RsaKey::FromPem(std::string_view pem, const std::string& name, bool is_private) {
  BioPtr bio = ReadBio(pem);
  EVP_PKEY* p = nullptr;
  if (bio) {
    p = is_private ? PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr)
                   : PEM_read_bio_PUBKEY(bio.get(), nullptr, NoPassphrase, nullptr);
  }
  if (p == nullptr) {
    return Status::InvalidArgument(name + ": not a PEM " + (is_private ? "private" : "public") +
                                   " key (" + TakeOpenSslError() + ")");
  }
  RsaKey k;
  k.pkey_.reset(p);
  k.has_private_ = is_private;
  if (EVP_PKEY_get_base_id(p) != EVP_PKEY_RSA)
    return Status::InvalidArgument(name + ": not an RSA key");
  return k;
}

Result<RsaKey> RsaKey::FromPrivatePem(std::string_view pem, const std::string& name) {
  return FromPem(pem, name, true);
}

Result<RsaKey> RsaKey::FromPublicPem(std::string_view pem, const std::string& name) {
  return FromPem(pem, name, false);
}

size_t RsaKey::modulus_bytes() const {
  return pkey_ ? static_cast<size_t>(EVP_PKEY_get_size(pkey_.get())) : 0;
}

bool RsaKey::SamePublicKey(const RsaKey& other) const {
  return pkey_ && other.pkey_ && EVP_PKEY_eq(pkey_.get(), other.pkey_.get()) == 1;
}

std::string RsaKey::PublicPem() const {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || !pkey_ || PEM_write_bio_PUBKEY(bio.get(), pkey_.get()) != 1) return "";
  return BioText(bio.get());
}

std::string RsaKey::PrivatePem() const {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || !pkey_ || !has_private_ ||
      PEM_write_bio_PrivateKey_traditional(bio.get(), pkey_.get(), nullptr, nullptr, 0, nullptr,
                                           nullptr) != 1)
    return "";
  return BioText(bio.get());
}

Result<RsaKey> RsaKey::Generate(int bits) {
  if (bits < 2048) return Status::InvalidArgument("RSA keys must have at least 2048 bits");
  EVP_PKEY* p = EVP_RSA_gen(static_cast<unsigned>(bits));
  if (p == nullptr) return Status::Protocol("RSA key generation failed: " + TakeOpenSslError());
  RsaKey k;
  k.pkey_.reset(p);
  k.has_private_ = true;
  return k;
}

// ---- Keys ----

Status CheckHandshakeKeys(const RsaKey& own_private, const RsaKey& own_public,
                          const RsaKey& peer_public) {
  if (!own_private.has_private()) return Status::InvalidArgument("rsa.prv holds no private key");
  if (!own_private.SamePublicKey(own_public))
    return Status::InvalidArgument("rsa.pub is not the public half of rsa.prv");
  const size_t b = own_private.modulus_bytes();
  // 1024-bit keys pass DragonFly's own check but only by luck (§2.2): the
  // unmasked first bytes of the 128-byte blocks at 0x080 and 0x180 can
  // exceed the modulus. We accept the two sizes that always work.
  if (b != 256 && b != 512)
    return Status::InvalidArgument("wrong modulus size: our key has " + std::to_string(b * 8) +
                                   " bits, want 2048 or 4096");
  if (peer_public.modulus_bytes() != b)
    return Status::InvalidArgument("wrong modulus size: the peer's key has " +
                                   std::to_string(peer_public.modulus_bytes() * 8) +
                                   " bits, ours " + std::to_string(b * 8) +
                                   " (both sides need the same size)");
  return Status::Ok();
}

// ---- The block ----

HandshakeBlock BuildHandshakeBlock(std::span<const uint8_t, kHandshakeBytes> random) {
  HandshakeBlock b;
  memcpy(b.data(), random.data(), kHandshakeBytes);
  // Masking the first byte of each 256-byte half keeps each block below any
  // 2048-bit modulus for the first RSA step (§2.3).
  b[kOffPad1] &= 0x3F;
  b[kOffPad2] &= 0x3F;
  b[kOffMagic] = kHandshakeMagic & 0xFF;
  b[kOffMagic + 1] = kHandshakeMagic >> 8;
  b[kOffVersion] = kHandshakeVersion & 0xFF;
  b[kOffVersion + 1] = kHandshakeVersion >> 8;
  memset(b.data() + kOffFlags, 0, 4);
  for (size_t j = 0; j < kVerfBytes; ++j) {
    const uint8_t* s = b.data() + kOffSess + 4 * j;
    b[kOffVerf + j] = s[0] ^ s[1] ^ s[2] ^ s[3];
  }
  static constexpr char kQuick[] = "Testing 1 2 3";
  memcpy(b.data() + kOffQuickmsg, kQuick, sizeof kQuick);  // with its NUL
  return b;
}

Result<SessionMaterial> VerifyHandshakeBlock(const HandshakeBlock& b) {
  char buf[160];
  const uint16_t magic = GetU16(b, kOffMagic);
  if (magic == kHandshakeMagicSwapped)
    return Status::Protocol("bad handshake: byte-swapped magic (a big-endian peer, unsupported)");
  if (magic != kHandshakeMagic) {
    snprintf(buf, sizeof buf, "bad handshake: wrong magic (0x%04x)", magic);
    return Status::Protocol(buf);
  }
  const uint16_t version = GetU16(b, kOffVersion);
  if (version != kHandshakeVersion) {
    snprintf(buf, sizeof buf, "bad handshake: wrong version (%u, want %u)", version,
             kHandshakeVersion);
    return Status::Protocol(buf);
  }
  for (size_t j = 0; j < kVerfBytes; ++j) {
    const uint8_t* s = b.data() + kOffSess + 4 * j;
    if ((s[0] ^ s[1] ^ s[2] ^ s[3]) != b[kOffVerf + j]) {
      snprintf(buf, sizeof buf, "bad handshake: verifier mismatch (at byte %zu)", j);
      return Status::Protocol(buf);
    }
  }
  SessionMaterial sess;
  memcpy(sess.data(), b.data() + kOffSess, kSessBytes);
  return sess;
}

// ---- The exchange ----

Result<HandshakeBlock> SealHandshake(HandshakeBlock* block, const RsaKey& own_private,
                                     const RsaKey& peer_public) {
  const size_t b = own_private.modulus_bytes();
  HandshakeBlock wire;
  std::array<uint8_t, kHandshakeBytes> t;
  for (size_t off = 0; off < kHandshakeBytes; off += b) {
    uint8_t* blk = block->data() + off;
    // The counter in bytes 4..7 of the block changes the first-stage result
    // until its top two bits are clear, which puts it below the peer's
    // modulus. Each try succeeds with probability >= 1/4; 256 failures in a
    // row mean something else is wrong.
    bool found = false;
    for (int tries = 0; tries < 256 && !found; ++tries) {
      uint32_t ctr;
      memcpy(&ctr, blk + 4, 4);  // host order, as DragonFly does (x86: LE)
      ++ctr;
      memcpy(blk + 4, &ctr, 4);
      if (Status st = RawRsa(own_private, true, blk, t.data()); !st.ok()) return st;
      found = (t[0] & 0xC0) == 0;
    }
    if (!found) return Status::Protocol("RSA failure: no retry counter gave a usable block");
    if (Status st = RawRsa(peer_public, false, t.data(), wire.data() + off); !st.ok()) return st;
  }
  return wire;
}

Result<SessionMaterial> OpenHandshake(std::span<const uint8_t> wire, const RsaKey& own_private,
                                      const RsaKey& peer_public) {
  if (wire.size() < kHandshakeBytes)
    return Status::Protocol("short handshake (" + std::to_string(wire.size()) + " of " +
                            std::to_string(kHandshakeBytes) + " bytes)");
  const size_t b = own_private.modulus_bytes();
  HandshakeBlock block;
  std::array<uint8_t, kHandshakeBytes> t;
  for (size_t off = 0; off < kHandshakeBytes; off += b) {
    Status st = RawRsa(own_private, true, wire.data() + off, t.data());
    if (st.ok()) st = RawRsa(peer_public, false, t.data(), block.data() + off);
    // OpenSSL's reason ("data too large for modulus") is left out: the
    // message stays the same from one attempt to the next, so that a
    // retrying peer is logged once.
    if (!st.ok()) return Status::Protocol(std::string("bad handshake: RSA failure") + kWrongKey);
  }
  Result<SessionMaterial> sess = VerifyHandshakeBlock(block);
  if (!sess.ok() && sess.status().message().find("swapped") == std::string::npos) {
    // A random block (what a wrong key decrypts to) fails with random
    // details; keep only the kind of failure.
    const std::string& m = sess.status().message();
    return Status::Protocol(m.substr(0, m.find(" (")) + kWrongKey);
  }
  return sess;
}

bool LooksLikePlaintextDmsg(std::span<const uint8_t> bytes) {
  dmsg::FrameDecoder d;
  d.Feed(bytes);
  dmsg::Frame f;
  dmsg::DecodeError err;
  return d.Next(&f, &err) == dmsg::FrameDecoder::Outcome::kFrame;
}

}  // namespace xdisk::dfcrypto
