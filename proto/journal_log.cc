#include "proto/journal_log.h"

#include <algorithm>
#include <cstring>

#include "proto/crc32c.h"

namespace xdisk::journal_log {
namespace {

void PutLe32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

uint32_t GetLe32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}

uint64_t LeftInBlock(uint64_t at) { return kBlockSize - at % kBlockSize; }

}  // namespace

uint64_t AppendedBytes(uint64_t segment_length, uint64_t payload_size) {
  // Mirrors AppendRecord's loop without touching bytes. Whole blocks of
  // payload are counted in one step, so this is cheap for large records.
  uint64_t pos = segment_length;
  uint64_t left = payload_size;
  bool first = true;
  while (first || left > 0) {
    first = false;
    if (LeftInBlock(pos) < kHeaderSize) pos += LeftInBlock(pos);
    const uint64_t avail = LeftInBlock(pos) - kHeaderSize;
    const uint64_t frag = std::min(left, avail);
    pos += kHeaderSize + frag;
    left -= frag;
  }
  return pos - segment_length;
}

Framed AppendRecord(uint64_t segment_length, std::span<const std::span<const uint8_t>> pieces,
                    std::vector<uint8_t>* out) {
  // One framing loop (GatherRecord); this variant joins its gather list.
  std::vector<uint8_t> headers;
  std::vector<std::span<const uint8_t>> gather;
  uint64_t total = 0;
  for (const auto& p : pieces) total += p.size();
  const Framed framed = GatherRecord(segment_length, pieces, &headers, &gather);
  out->reserve(out->size() + AppendedBytes(segment_length, total));
  for (const auto& g : gather) out->insert(out->end(), g.begin(), g.end());
  return framed;
}

Framed AppendRecord(uint64_t segment_length, std::span<const uint8_t> payload,
                    std::vector<uint8_t>* out) {
  const std::span<const uint8_t> one[1] = {payload};
  return AppendRecord(segment_length, std::span<const std::span<const uint8_t>>(one), out);
}

Framed GatherRecord(uint64_t segment_length, std::span<const std::span<const uint8_t>> pieces,
                    std::vector<uint8_t>* headers, std::vector<std::span<const uint8_t>>* out) {
  uint64_t total = 0;
  for (const auto& p : pieces) total += p.size();
  // At most one fragment per block touched, each with up to kHeaderSize-1
  // padding bytes before its header: reserve all of it so spans into
  // *headers stay valid.
  const uint64_t frags = total / (kBlockSize - kHeaderSize) + 2;
  headers->clear();
  headers->reserve(frags * (2 * kHeaderSize));
  out->clear();
  size_t piece = 0, piece_off = 0;
  uint64_t pos = segment_length;
  uint64_t left = total;
  Framed framed;
  bool begin = true;
  do {
    const size_t head_at = headers->size();
    if (LeftInBlock(pos) < kHeaderSize) {
      const uint64_t pad = LeftInBlock(pos);
      headers->insert(headers->end(), pad, 0);
      pos += pad;
    }
    if (begin) framed.offset = pos;
    const uint64_t avail = LeftInBlock(pos) - kHeaderSize;
    const uint64_t frag = std::min(left, avail);
    const bool end = frag == left;
    const FragmentType type = begin && end ? FragmentType::kFull
                              : begin      ? FragmentType::kFirst
                              : end        ? FragmentType::kLast
                                           : FragmentType::kMiddle;
    const uint8_t type_byte = static_cast<uint8_t>(type);
    const size_t header_at = headers->size();
    headers->insert(headers->end(), kHeaderSize, 0);
    out->emplace_back(headers->data() + head_at, headers->size() - head_at);
    uint32_t crc = Crc32c(&type_byte, 1);
    uint64_t taken = 0;
    while (taken < frag) {
      while (piece_off == pieces[piece].size()) {
        ++piece;
        piece_off = 0;
      }
      const size_t n = std::min<uint64_t>(frag - taken, pieces[piece].size() - piece_off);
      const uint8_t* src = pieces[piece].data() + piece_off;
      crc = Crc32cExtend(crc, src, n);
      out->emplace_back(src, n);
      taken += n;
      piece_off += n;
    }
    uint8_t* h = headers->data() + header_at;
    PutLe32(h, MaskCrc(crc));
    h[4] = static_cast<uint8_t>(frag & 0xff);
    h[5] = static_cast<uint8_t>(frag >> 8);
    h[6] = type_byte;
    pos += kHeaderSize + frag;
    left -= frag;
    begin = false;
  } while (left > 0);
  framed.framed_length = pos - framed.offset;
  return framed;
}

Reader::Reader(std::span<const uint8_t> input, uint64_t base_offset, uint64_t max_record_bytes)
    : input_(input), base_(base_offset), max_record_(max_record_bytes) {}

void Reader::AddDamage(uint64_t offset, uint64_t bytes, std::string reason) {
  if (!have_damage_) {
    have_damage_ = true;
    damage_ = Damage{offset, bytes, std::move(reason)};
    return;
  }
  // Pending damage always ends where the reader stands, so new damage
  // starts at or after its end: one region from the first offset on.
  const uint64_t end = std::max(damage_.offset + damage_.bytes, offset + bytes);
  damage_.offset = std::min(damage_.offset, offset);
  damage_.bytes = end - damage_.offset;
}

void Reader::Resync(uint64_t at, std::string reason) {
  const uint64_t start = in_record_ ? record_start_ : at;
  in_record_ = false;
  const uint64_t input_end = base_ + input_.size();
  const uint64_t next_block = (at / kBlockSize + 1) * kBlockSize;
  const uint64_t stop = std::min(next_block, input_end);
  AddDamage(start, stop - start, std::move(reason));
  pos_ = stop - base_;
}

bool Reader::ZeroTail(size_t from) const {
  // The end of the last non-zero byte is found once: rescanning the rest of
  // the input at every zero block made replay quadratic in a zero-filled
  // region (a 128 MiB one took minutes).
  if (nonzero_end_ == kUnknown) {
    size_t end = input_.size();
    while (end > 0 && input_[end - 1] == 0) --end;
    nonzero_end_ = end;
  }
  return from >= nonzero_end_;
}

void Reader::EndTorn(uint64_t at) {
  const uint64_t input_end = base_ + input_.size();
  const uint64_t start = in_record_ ? record_start_ : at;
  torn_bytes_ = input_end - start;
  in_record_ = false;
  pos_ = input_.size();
  done_ = true;
}

Reader::Outcome Reader::Next(Record* rec, Damage* damage) {
  for (;;) {
    if (done_) {
      if (have_damage_) {
        have_damage_ = false;
        *damage = std::move(damage_);
        return Outcome::kDamage;
      }
      return Outcome::kEnd;
    }
    const uint64_t at = base_ + pos_;
    const size_t avail = input_.size() - pos_;
    const uint64_t left_in_block = LeftInBlock(at);

    if (left_in_block < kHeaderSize) {
      // A trailer. Its contents are not checked: only the writer's padding
      // can be here, and nothing is lost if it is not zero.
      const size_t skip = std::min<uint64_t>(left_in_block, avail);
      if (have_damage_ && damage_.offset + damage_.bytes == at) damage_.bytes += skip;
      pos_ += skip;
      if (skip == avail) EndTorn(base_ + pos_);
      continue;
    }
    if (avail < kHeaderSize) {
      // Nothing at all (a clean end unless a record is unfinished), or a
      // header cut short: torn either way.
      EndTorn(at);
      continue;
    }

    const uint8_t* h = input_.data() + pos_;
    const uint32_t stored_crc = UnmaskCrc(GetLe32(h));
    const uint64_t length = static_cast<uint64_t>(h[4]) | static_cast<uint64_t>(h[5]) << 8;
    const uint8_t type = h[6];
    if (type < static_cast<uint8_t>(FragmentType::kFull) ||
        type > static_cast<uint8_t>(FragmentType::kLast)) {
      if (ZeroTail(pos_)) {
        EndTorn(at);
      } else {
        Resync(at, "bad fragment type " + std::to_string(type));
      }
      continue;
    }
    if (kHeaderSize + length > left_in_block) {
      Resync(at, "bad fragment length " + std::to_string(length) + " (" +
                     std::to_string(left_in_block - kHeaderSize) + " bytes left in the block)");
      continue;
    }
    if (kHeaderSize + length > avail) {
      // A plausible header whose payload was not all written.
      EndTorn(at);
      continue;
    }
    const uint8_t* payload = h + kHeaderSize;
    const uint32_t actual_crc = Crc32cExtend(Crc32c(&type, 1), payload, length);
    if (actual_crc != stored_crc) {
      Resync(at, "checksum mismatch");
      continue;
    }

    const uint64_t frag_bytes = kHeaderSize + length;
    const auto ftype = static_cast<FragmentType>(type);
    if (ftype == FragmentType::kFull || ftype == FragmentType::kFirst) {
      if (in_record_) {
        // The unfinished record is dropped; this fragment is read again on
        // the next round, after the damage is returned.
        in_record_ = false;
        AddDamage(record_start_, at - record_start_, "record without a last fragment");
      }
      if (have_damage_) {
        have_damage_ = false;
        *damage = std::move(damage_);
        return Outcome::kDamage;
      }
      pos_ += frag_bytes;
      if (ftype == FragmentType::kFull) {
        *rec = Record{at, frag_bytes, std::span<const uint8_t>(payload, length)};
        return Outcome::kRecord;
      }
      in_record_ = true;
      record_start_ = at;
      scratch_.assign(payload, payload + length);
      continue;
    }

    // kMiddle or kLast.
    pos_ += frag_bytes;
    if (!in_record_) {
      AddDamage(at, frag_bytes,
                ftype == FragmentType::kMiddle ? "middle fragment without a first"
                                               : "last fragment without a first");
      continue;
    }
    if (scratch_.size() + length > max_record_) {
      in_record_ = false;
      AddDamage(record_start_, at + frag_bytes - record_start_,
                "record over " + std::to_string(max_record_) + " bytes");
      scratch_.clear();
      continue;
    }
    scratch_.insert(scratch_.end(), payload, payload + length);
    if (ftype == FragmentType::kLast) {
      in_record_ = false;
      *rec = Record{record_start_, at + frag_bytes - record_start_,
                    std::span<const uint8_t>(scratch_)};
      return Outcome::kRecord;
    }
  }
}

}  // namespace xdisk::journal_log
