#include "proto/frame_decoder.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "proto/crc32c.h"

namespace xdisk::dmsg {
namespace {

std::string Format(const char* fmt, auto... args) {
  char buf[160];
  std::snprintf(buf, sizeof(buf), fmt, args...);
  return buf;
}

}  // namespace

const char* DecodeErrorName(DecodeError e) {
  switch (e) {
    case DecodeError::kNone:
      return "none";
    case DecodeError::kBadMagic:
      return "bad magic";
    case DecodeError::kBadHeaderSize:
      return "bad header size";
    case DecodeError::kAuxTooLarge:
      return "aux too large";
    case DecodeError::kAuxDescr:
      return "aux descriptor";
    case DecodeError::kHeaderCrc:
      return "header crc";
    case DecodeError::kAuxCrc:
      return "aux crc";
    case DecodeError::kSequence:
      return "sequence";
  }
  return "unknown";
}

void FrameDecoder::Compact() {
  // Compacting only once the consumed prefix is at least half the buffered
  // bytes makes each byte move at most once on average, so feeding many
  // small frames stays linear.
  if (pos_ == end_) {
    pos_ = end_ = 0;
  } else if (pos_ > 0 && pos_ >= end_ / 2) {
    memmove(buf_.get(), buf_.get() + pos_, end_ - pos_);
    end_ -= pos_;
    pos_ = 0;
  }
}

void FrameDecoder::Reserve(size_t min) {
  if (cap_ - end_ >= min) return;
  size_t cap = std::max(cap_ * 2, end_ + min);
  std::unique_ptr<uint8_t[]> grown(new uint8_t[cap]);
  if (end_ > pos_) memcpy(grown.get(), buf_.get() + pos_, end_ - pos_);
  end_ -= pos_;
  pos_ = 0;
  buf_ = std::move(grown);
  cap_ = cap;
}

void FrameDecoder::Feed(std::span<const uint8_t> bytes) {
  // A poisoned decoder ignores input: it will never look at those bytes
  // again.
  if (poisoned_ != DecodeError::kNone || bytes.empty()) return;
  if (direct_) {
    size_t n = std::min(bytes.size(), aux_padded_ - direct_filled_);
    memcpy(direct_buf_.data() + direct_filled_, bytes.data(), n);
    direct_filled_ += n;
    bytes = bytes.subspan(n);
    if (bytes.empty()) return;
    // The rest follows the frame: buffered behind its header, where Next()
    // finds it once the direct aux is handed out.
  }
  Compact();
  Reserve(bytes.size());
  memcpy(buf_.get() + end_, bytes.data(), bytes.size());
  end_ += bytes.size();
}

std::span<uint8_t> FrameDecoder::WritableTail(size_t min) {
  if (direct_ && direct_filled_ < aux_padded_)
    return {direct_buf_.data() + direct_filled_, aux_padded_ - direct_filled_};
  Compact();
  Reserve(min);
  return {buf_.get() + end_, cap_ - end_};
}

void FrameDecoder::Commit(size_t n) {
  if (poisoned_ != DecodeError::kNone) return;
  if (direct_ && direct_filled_ < aux_padded_) {
    direct_filled_ += std::min(n, aux_padded_ - direct_filled_);
    return;
  }
  end_ += std::min(n, cap_ - end_);
}

FrameDecoder::Outcome FrameDecoder::Fail(DecodeError e, std::string detail, DecodeError* err,
                                         std::string* detail_out) {
  poisoned_ = e;
  poisoned_detail_ = std::move(detail);
  if (err) *err = poisoned_;
  if (detail_out) *detail_out = poisoned_detail_;
  return Outcome::kError;
}

FrameDecoder::Outcome FrameDecoder::Next(Frame* out, DecodeError* err, std::string* detail) {
  if (poisoned_ != DecodeError::kNone) {
    if (err) *err = poisoned_;
    if (detail) *detail = poisoned_detail_;
    return Outcome::kError;
  }
  if (err) *err = DecodeError::kNone;
  const uint8_t* p = buf_.get() + pos_;
  const size_t avail = end_ - pos_;

  // Stage 1: the base header. Checks 1-4 need nothing beyond it, so garbage
  // is rejected after 64 bytes instead of after up to 2 KiB + 1 MiB. The
  // parsed header is kept across kNeedMore returns so that a slowly arriving
  // frame is parsed once, not once per Next().
  if (stage_ == Stage::kBase) {
    if (avail < kBaseHeaderBytes) return Outcome::kNeedMore;
    cur_ = DecodeBaseHeader(std::span<const uint8_t>(p, kBaseHeaderBytes));
    if (cur_.magic != kMagic) {
      // libdmsg would accept 0x3248 from a big-endian sender, but no such
      // DragonFly platform exists and extended headers are never swapped,
      // so a swapped magic is treated as loss of sync like any other.
      return Fail(DecodeError::kBadMagic,
                  Format("magic 0x%04x, expected 0x%04x%s", cur_.magic, kMagic,
                         cur_.magic == kMagicSwapped ? " (byte-swapped sender)" : ""),
                  err, detail);
    }
    uint32_t units = HeaderUnits(cur_.cmd);
    if (units < 1 || units > kHeaderMaxUnits) {
      return Fail(DecodeError::kBadHeaderSize,
                  Format("header size %u units (cmd 0x%08x), allowed 1..%u", units, cur_.cmd,
                         kHeaderMaxUnits),
                  err, detail);
    }
    // 64-bit arithmetic: aux_bytes near 4 GiB must not wrap when padded.
    uint64_t aux_padded = PaddedAux(uint64_t{cur_.aux_bytes});
    if (aux_padded > kAuxMax) {
      return Fail(DecodeError::kAuxTooLarge,
                  Format("aux_bytes %u (padded %llu) over the %zu byte limit", cur_.aux_bytes,
                         static_cast<unsigned long long>(aux_padded), kAuxMax),
                  err, detail);
    }
    if (cur_.aux_descr != 0) {
      return Fail(DecodeError::kAuxDescr,
                  Format("aux_descr 0x%llx, out-of-band aux is not supported",
                         static_cast<unsigned long long>(cur_.aux_descr)),
                  err, detail);
    }
    hdr_bytes_ = HeaderBytes(cur_.cmd);
    aux_padded_ = static_cast<size_t>(aux_padded);
    stage_ = Stage::kHeader;
  }

  // Stage 2: the whole padded header, for its CRC and the sequence number.
  // The sequence is checked after the CRC so that a corrupted salt byte is
  // reported as corruption, not as a lost message.
  if (stage_ == Stage::kHeader) {
    if (avail < hdr_bytes_) return Outcome::kNeedMore;
    static constexpr uint8_t kZeroCrc[4] = {};
    uint32_t crc = Crc32c(p, kBaseHeaderBytes - 4);
    crc = Crc32cExtend(crc, kZeroCrc, sizeof(kZeroCrc));
    crc = Crc32cExtend(crc, p + kBaseHeaderBytes, hdr_bytes_ - kBaseHeaderBytes);
    if (crc != cur_.hdr_crc) {
      return Fail(DecodeError::kHeaderCrc,
                  Format("%s: hdr_crc 0x%08x, computed 0x%08x over %zu bytes",
                         CommandName(cur_.cmd).c_str(), cur_.hdr_crc, crc, hdr_bytes_),
                  err, detail);
    }
    uint32_t want = static_cast<uint32_t>(frames_ & 0xFF);
    if ((cur_.salt & 0xFF) != want) {
      return Fail(DecodeError::kSequence,
                  Format("%s: sequence %u, expected %u (frame %llu)", CommandName(cur_.cmd).c_str(),
                         cur_.salt & 0xFF, want, static_cast<unsigned long long>(frames_)),
                  err, detail);
    }
    stage_ = Stage::kAux;
  }

  // Stage 3: the padded aux data. A large aux that is not all here yet is
  // received directly into the buffer that becomes the frame's aux: what
  // is buffered moves there once, the socket fills in the rest.
  if (!direct_ && avail < hdr_bytes_ + aux_padded_) {
    if (aux_padded_ < direct_aux_min_) return Outcome::kNeedMore;
    direct_ = true;
    direct_buf_.resize(aux_padded_);
    direct_filled_ = avail - hdr_bytes_;
    memcpy(direct_buf_.data(), p + hdr_bytes_, direct_filled_);
    end_ = pos_ + hdr_bytes_;
  }
  if (direct_ && direct_filled_ < aux_padded_) return Outcome::kNeedMore;
  const uint8_t* aux = direct_ ? direct_buf_.data() : p + hdr_bytes_;
  if (cur_.aux_bytes > 0) {
    // The CRC covers the pad bytes as received, which need not be zero.
    uint32_t crc = Crc32c(aux, aux_padded_);
    if (crc != cur_.aux_crc) {
      return Fail(DecodeError::kAuxCrc,
                  Format("%s msgid 0x%llx: aux_crc 0x%08x, computed 0x%08x over %zu bytes",
                         CommandName(cur_.cmd).c_str(), static_cast<unsigned long long>(cur_.msgid),
                         cur_.aux_crc, crc, aux_padded_),
                  err, detail);
    }
  }
  out->hdr = cur_;
  out->aux_crc_reusable = cur_.aux_bytes > 0;
  for (size_t i = cur_.aux_bytes; i < aux_padded_ && out->aux_crc_reusable; ++i)
    out->aux_crc_reusable = aux[i] == 0;
  out->ext.assign(p + kBaseHeaderBytes, p + hdr_bytes_);
  if (direct_) {
    direct_buf_.resize(cur_.aux_bytes);
    out->aux = std::move(direct_buf_);
    direct_buf_ = ByteBuffer();
    direct_ = false;
    direct_filled_ = 0;
    pos_ += hdr_bytes_;
  } else {
    out->aux.assign(aux, aux + cur_.aux_bytes);
    pos_ += hdr_bytes_ + aux_padded_;
  }
  ++frames_;
  stage_ = Stage::kBase;
  return Outcome::kFrame;
}

}  // namespace xdisk::dmsg
