// PlainSink: where a decrypting reader (proto/gcm_stream.h StreamOpener,
// proto/tls_stream.h TlsStream) puts the plaintext it releases.
//
// The reader asks for writable space, decrypts into it, and commits what it
// wrote; bytes written but not committed were never released (a variant A
// chunk whose tag failed is written, then not committed). A link passes a
// sink over its frame decoder (FrameDecoder::WritableTail/Commit), so
// plaintext lands where frames are decoded, with no copy in between; tests
// pass a VectorSink.
//
// Not thread-safe; a sink is used by one reader call at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace xdisk::dfcrypto {

class PlainSink {
 public:
  virtual ~PlainSink() = default;
  // Writable space at the end of the consumer's data: at least one byte,
  // and usually `want` bytes or more (a consumer may return less, e.g. the
  // rest of a frame's aux buffer). Valid until the next call on the sink.
  virtual std::span<uint8_t> Space(size_t want) = 0;
  // The first n bytes of the last Space() hold plaintext now.
  // REQUIRES: n <= the last Space()'s size.
  virtual void Commit(size_t n) = 0;
};

// Appends to a vector (tests, and the few bytes that come with a TLS
// handshake). Space() grows the vector; Commit() trims it to what was
// written.
class VectorSink final : public PlainSink {
 public:
  explicit VectorSink(std::vector<uint8_t>* out) : out_(out), used_(out->size()) {}
  ~VectorSink() override { out_->resize(used_); }
  std::span<uint8_t> Space(size_t want) override {
    out_->resize(used_ + (want > 0 ? want : 1));
    return {out_->data() + used_, out_->size() - used_};
  }
  void Commit(size_t n) override {
    used_ += n;
    out_->resize(used_);
  }

 private:
  std::vector<uint8_t>* out_;
  size_t used_;
};

}  // namespace xdisk::dfcrypto
