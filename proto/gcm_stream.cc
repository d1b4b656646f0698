#include "proto/gcm_stream.h"

#include <openssl/evp.h>

#include <cstring>

namespace xdisk::dfcrypto {

namespace {

constexpr size_t kIvBytes = 12;

std::array<uint8_t, kIvBytes> ChunkIv(const StreamKey& k, uint64_t counter) {
  std::array<uint8_t, kIvBytes> iv{};
  memcpy(iv.data(), k.fixed_iv.data(), kFixedIvBytes);
  // The counter is big-endian (§2.6), unlike every other integer on the link.
  for (int i = 0; i < 8; ++i) iv[4 + i] = static_cast<uint8_t>(counter >> (56 - 8 * i));
  return iv;
}

size_t WireChunkBytes(StreamVariant v) {
  return v == StreamVariant::kGcmA ? kChunkBytes + kTagBytes : kChunkBytes;
}

// Sets the cipher and key once. Variant A then sets only the IV per chunk,
// which keeps the AES key schedule; variant B starts its one keystream at
// counter 0 here.
Status InitContext(EVP_CIPHER_CTX* ctx, StreamVariant v, const StreamKey& k, bool encrypt) {
  std::array<uint8_t, kIvBytes> iv0 = ChunkIv(k, 0);
  const uint8_t* iv = v == StreamVariant::kGcmB ? iv0.data() : nullptr;
  int ok = EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), nullptr, nullptr, nullptr, encrypt ? 1 : 0);
  if (ok == 1) ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, kIvBytes, nullptr);
  if (ok == 1) ok = EVP_CipherInit_ex(ctx, nullptr, nullptr, k.key.data(), iv, encrypt ? 1 : 0);
  if (ok != 1) return Status::Protocol("AES-256-GCM setup failed in OpenSSL");
  return Status::Ok();
}

}  // namespace

const char* StreamVariantName(StreamVariant v) {
  return v == StreamVariant::kGcmA ? "dragonfly-gcm-a" : "dragonfly-gcm-b";
}

StreamKey StreamKeyFromSess(std::span<const uint8_t, 64> sess) {
  StreamKey k;
  memcpy(k.key.data(), sess.data(), kKeyBytes);
  memcpy(k.fixed_iv.data(), sess.data() + kKeyBytes, kFixedIvBytes);
  return k;
}

size_t SealedBytes(StreamVariant v, size_t plaintext_bytes) {
  return plaintext_bytes / kChunkBytes * WireChunkBytes(v);
}

// ---- StreamSealer ----

StreamSealer::StreamSealer(StreamVariant v, const StreamKey& k) : variant_(v), key_(k) {}

StreamSealer::~StreamSealer() { EVP_CIPHER_CTX_free(ctx_); }

Result<std::unique_ptr<StreamSealer>> StreamSealer::Create(StreamVariant v, const StreamKey& k) {
  std::unique_ptr<StreamSealer> s(new StreamSealer(v, k));
  s->ctx_ = EVP_CIPHER_CTX_new();
  if (s->ctx_ == nullptr) return Status::Protocol("out of memory for a cipher context");
  if (Status st = InitContext(s->ctx_, v, k, true); !st.ok()) return st;
  return s;
}

Status StreamSealer::Seal(std::span<const uint8_t> plaintext, std::vector<uint8_t>* out) {
  const size_t wire_chunk = WireChunkBytes(variant_);
  out->reserve(out->size() + SealedBytes(variant_, partial_len_ + plaintext.size()));
  size_t pos = 0;
  while (pos < plaintext.size()) {
    const uint8_t* chunk;
    if (partial_len_ > 0 || plaintext.size() - pos < kChunkBytes) {
      size_t take = std::min(kChunkBytes - partial_len_, plaintext.size() - pos);
      memcpy(partial_.data() + partial_len_, plaintext.data() + pos, take);
      partial_len_ += take;
      pos += take;
      if (partial_len_ < kChunkBytes) break;
      chunk = partial_.data();
      partial_len_ = 0;
    } else {
      chunk = plaintext.data() + pos;
      pos += kChunkBytes;
    }
    size_t at = out->size();
    out->resize(at + wire_chunk);
    uint8_t* dst = out->data() + at;
    int n = 0;
    if (variant_ == StreamVariant::kGcmA) {
      std::array<uint8_t, kIvBytes> iv = ChunkIv(key_, counter_);
      int fin = 0;
      if (EVP_EncryptInit_ex(ctx_, nullptr, nullptr, nullptr, iv.data()) != 1 ||
          EVP_EncryptUpdate(ctx_, dst, &n, chunk, kChunkBytes) != 1 ||
          EVP_EncryptFinal_ex(ctx_, dst + n, &fin) != 1 ||
          EVP_CIPHER_CTX_ctrl(ctx_, EVP_CTRL_GCM_GET_TAG, kTagBytes, dst + kChunkBytes) != 1) {
        return Status::Protocol("AES-256-GCM encryption failed on chunk " +
                                std::to_string(counter_));
      }
    } else if (EVP_EncryptUpdate(ctx_, dst, &n, chunk, kChunkBytes) != 1 ||
               n != static_cast<int>(kChunkBytes)) {
      // OpenSSL refuses to run one GCM keystream past 2^36 - 32 bytes.
      return Status::Protocol("AES-256-GCM keystream exhausted after chunk " +
                              std::to_string(counter_) + " (variant B)");
    }
    ++counter_;
  }
  return Status::Ok();
}

// ---- StreamOpener ----

StreamOpener::StreamOpener(StreamVariant v, const StreamKey& k) : variant_(v), key_(k) {}

StreamOpener::~StreamOpener() { EVP_CIPHER_CTX_free(ctx_); }

Result<std::unique_ptr<StreamOpener>> StreamOpener::Create(StreamVariant v, const StreamKey& k) {
  std::unique_ptr<StreamOpener> o(new StreamOpener(v, k));
  o->ctx_ = EVP_CIPHER_CTX_new();
  if (o->ctx_ == nullptr) return Status::Protocol("out of memory for a cipher context");
  if (Status st = InitContext(o->ctx_, v, k, false); !st.ok()) return st;
  return o;
}

Status StreamOpener::Open(std::span<const uint8_t> wire, std::vector<uint8_t>* out) {
  if (!failed_.ok()) return failed_;
  const size_t wire_chunk = WireChunkBytes(variant_);
  out->reserve(out->size() + (partial_len_ + wire.size()) / wire_chunk * kChunkBytes);
  size_t pos = 0;
  while (pos < wire.size()) {
    const uint8_t* chunk;
    if (partial_len_ > 0 || wire.size() - pos < wire_chunk) {
      size_t take = std::min(wire_chunk - partial_len_, wire.size() - pos);
      memcpy(partial_.data() + partial_len_, wire.data() + pos, take);
      partial_len_ += take;
      pos += take;
      if (partial_len_ < wire_chunk) break;
      chunk = partial_.data();
      partial_len_ = 0;
    } else {
      chunk = wire.data() + pos;
      pos += wire_chunk;
    }
    if (Status st = OpenChunk(chunk, out); !st.ok()) {
      failed_ = st;
      return st;
    }
  }
  return Status::Ok();
}

Status StreamOpener::OpenChunk(const uint8_t* wire, std::vector<uint8_t>* out) {
  int n = 0;
  if (variant_ == StreamVariant::kGcmB) {
    size_t at = out->size();
    out->resize(at + kChunkBytes);
    if (EVP_DecryptUpdate(ctx_, out->data() + at, &n, wire, kChunkBytes) != 1 ||
        n != static_cast<int>(kChunkBytes)) {
      out->resize(at);
      return Status::Protocol("AES-256-GCM keystream exhausted after chunk " +
                              std::to_string(counter_) + " (variant B)");
    }
    ++counter_;
    return Status::Ok();
  }
  // Variant A: decrypt aside and release the plaintext only once the tag
  // verified; a forged chunk must never reach the frame decoder.
  std::array<uint8_t, kChunkBytes> plain;
  std::array<uint8_t, kIvBytes> iv = ChunkIv(key_, counter_);
  std::array<uint8_t, kTagBytes> tag;
  memcpy(tag.data(), wire + kChunkBytes, kTagBytes);
  int fin = 0;
  if (EVP_DecryptInit_ex(ctx_, nullptr, nullptr, nullptr, iv.data()) != 1 ||
      EVP_DecryptUpdate(ctx_, plain.data(), &n, wire, kChunkBytes) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx_, EVP_CTRL_GCM_SET_TAG, kTagBytes, tag.data()) != 1 ||
      EVP_DecryptFinal_ex(ctx_, plain.data() + n, &fin) != 1) {
    return Status::Corruption("bad tag on chunk " + std::to_string(counter_) +
                              " (the stream was altered on the way, or the keys differ)");
  }
  out->insert(out->end(), plain.begin(), plain.end());
  ++counter_;
  return Status::Ok();
}

}  // namespace xdisk::dfcrypto
