// FrameDecoder: the incremental dmsg frame decoder. Pure code: it is fed
// bytes in any chunking and answers with a frame, "need more bytes", or a
// typed error naming what was wrong. See docs/dmsg-wire.md, "Validation".
//
// Checks, in the order a byte stream reveals them:
//   1. magic == 0x4832 (a byte-swapped sender is rejected as kBadMagic);
//   2. header size units in 1..32;
//   3. aux_bytes: padded size <= 1 MiB;
//   4. aux_descr == 0;
//   5. hdr_crc over the whole padded header (field zeroed);
//   6. the low byte of salt equals the expected receive sequence number,
//      which starts at 0 and increments per frame (mod 256);
//   7. aux_crc over the padded aux data (when aux_bytes > 0).
// Checks 1-4 run as soon as the 64-byte base header is buffered, so garbage
// is rejected without waiting for more input. After an error the decoder is
// poisoned: every later Next() returns the same error. A link that gets an
// error must be dropped (the stream cannot be resynchronised).
//
// Thread safety: none; one decoder per link.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "proto/dmsg.h"

namespace xdisk::dmsg {

enum class DecodeError {
  kNone = 0,
  kBadMagic,
  kBadHeaderSize,  // size units outside 1..32
  kAuxTooLarge,    // padded aux over 1 MiB
  kAuxDescr,       // aux_descr not 0 (out-of-band aux is not supported)
  kHeaderCrc,
  kAuxCrc,
  kSequence,  // salt low byte is not the expected sequence number
};

// "bad magic", "header crc", ...
const char* DecodeErrorName(DecodeError e);

class FrameDecoder {
 public:
  enum class Outcome { kFrame, kNeedMore, kError };

  // Auxes of `direct_aux_min` bytes or more may be received directly (see
  // WritableTail); the fuzzer lowers it to reach that path with small
  // inputs.
  explicit FrameDecoder(size_t direct_aux_min = kDirectAuxMin) : direct_aux_min_(direct_aux_min) {}
  FrameDecoder(const FrameDecoder&) = delete;
  FrameDecoder& operator=(const FrameDecoder&) = delete;

  // Appends `bytes` to the internal buffer. Cheap; decoding happens in Next().
  void Feed(std::span<const uint8_t> bytes);

  // Decodes the next complete frame from the buffered bytes. On kFrame, *out
  // holds the frame (ext copied out of the buffer; aux copied, or moved if
  // it was received directly, see WritableTail). On kError, *err
  // names the problem and *detail has a human-readable explanation with the
  // offending values. kNeedMore means: feed more bytes.
  Outcome Next(Frame* out, DecodeError* err, std::string* detail = nullptr);

  // Zero-copy feeding, for a socket reader: returns writable space of at
  // least `min` bytes at the end of the buffer; after reading n bytes into
  // it, call Commit(n). Equivalent to Feed() of those bytes. The span is
  // valid until the next call on the decoder.
  //
  // Direct aux: once Next() has checked a frame's header and a large aux
  // (direct_aux_min or more, by default kDirectAuxMin) is still incomplete, the span is instead the
  // rest of that aux in the frame's own buffer, possibly shorter than
  // `min`: the socket's bytes land where Next() hands them out, with no
  // copy through the internal buffer.
  std::span<uint8_t> WritableTail(size_t min);
  void Commit(size_t n);
  static constexpr size_t kDirectAuxMin = 64 * 1024;

  // Bytes buffered but not yet consumed by a returned frame.
  size_t buffered() const { return end_ - pos_ + direct_filled_; }
  // Number of frames returned so far (the next expected sequence number is
  // frames_decoded() & 0xFF).
  uint64_t frames_decoded() const { return frames_; }

 private:
  // Which part of the frame at pos_ is still awaited; the checks for the
  // earlier parts have passed and cur_ holds its parsed base header.
  enum class Stage { kBase, kHeader, kAux };

  Outcome Fail(DecodeError e, std::string detail, DecodeError* err, std::string* detail_out);

  void Compact();
  void Reserve(size_t min);

  // Raw storage (not zero-initialised on growth): bytes [pos_, end_) are
  // buffered input, [end_, cap_) free space.
  std::unique_ptr<uint8_t[]> buf_;
  size_t cap_ = 0;
  size_t end_ = 0;
  size_t pos_ = 0;  // start of unconsumed bytes in buf_
  uint64_t frames_ = 0;
  DecodeError poisoned_ = DecodeError::kNone;
  std::string poisoned_detail_;
  Stage stage_ = Stage::kBase;
  Header cur_;
  size_t hdr_bytes_ = 0;   // padded header size of the frame at pos_
  size_t aux_padded_ = 0;  // padded aux size of the frame at pos_
  // Direct aux (stage kAux only): the frame's header stays in buf_ at pos_
  // (and buf_ ends there); its aux arrives in direct_, of which the first
  // direct_filled_ of aux_padded_ bytes are received.
  size_t direct_aux_min_;
  bool direct_ = false;
  ByteBuffer direct_buf_;
  size_t direct_filled_ = 0;
};

}  // namespace xdisk::dmsg
