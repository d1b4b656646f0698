// libFuzzer target for FrameDecoder.
//
// Input layout: byte 0 bits 0-2 select how many of the following bytes
// (1..8) form the chunk-size schedule; each schedule byte b feeds b+1 bytes
// (cycled). Bits 3-5 pick the smallest aux received directly (the default
// 64 KiB, out of reach of small inputs, or 1..512 bytes), bit 6 feeds
// through WritableTail/Commit as the link's socket reader does instead of
// Feed. The rest is the byte stream. Every decoded frame is re-encoded with
// EncodeFrame and fed to a second "mirror" decoder, which must return an
// equal frame: this checks that the decoder only accepts what the encoder can
// produce, and that the mirror sees the same sequence numbers. A reference
// decoder (defaults, fed with Feed in the same chunks) must decode the same
// frames and fail the same way: direct aux and tail feeding change where
// bytes land, never what is decoded.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "proto/dmsg.h"
#include "proto/frame_decoder.h"

using namespace xdisk::dmsg;

namespace {

// A plain abort keeps the fuzzer's crash report pointing at the failed check
// even in builds with NDEBUG; stderr, unlike a redirected stdout, is not
// buffered, so the message survives the abort.
#define FUZZ_CHECK(cond)                                                        \
  do {                                                                          \
    if (!(cond)) {                                                              \
      fprintf(stderr, "check failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                             \
    }                                                                           \
  } while (0)

void CheckRoundTrip(const Frame& f, FrameDecoder* mirror) {
  std::vector<uint8_t> wire;
  EncodeFrame(f.hdr, f.ext, f.aux, &wire);
  FUZZ_CHECK(wire.size() == HeaderBytes(f.hdr.cmd) + PaddedAux(f.aux.size()));
  mirror->Feed(wire);
  Frame g;
  DecodeError err = DecodeError::kNone;
  FUZZ_CHECK(mirror->Next(&g, &err) == FrameDecoder::Outcome::kFrame);
  FUZZ_CHECK(mirror->buffered() == 0);
  // Everything but the two CRCs must survive unchanged; those may differ
  // because the original may have had non-zero aux padding (covered by its
  // aux_crc) or a stale aux_crc with no aux (not checked).
  const Header &a = f.hdr, &b = g.hdr;
  FUZZ_CHECK(a.magic == b.magic && a.reserved02 == b.reserved02 && a.salt == b.salt);
  FUZZ_CHECK(a.msgid == b.msgid && a.circuit == b.circuit && a.link_verifier == b.link_verifier);
  FUZZ_CHECK(a.cmd == b.cmd && a.aux_bytes == b.aux_bytes && a.error == b.error);
  FUZZ_CHECK(a.aux_descr == b.aux_descr && a.reserved38 == b.reserved38);
  FUZZ_CHECK(f.ext == g.ext && f.aux == g.aux);
  if (f.aux.empty()) FUZZ_CHECK(b.aux_crc == 0);
}

// Feeds `bytes` the way a socket reader does: into WritableTail's span,
// which during a direct aux may be shorter than asked for.
void FeedTail(FrameDecoder* d, std::span<const uint8_t> bytes) {
  while (!bytes.empty()) {
    std::span<uint8_t> w = d->WritableTail(bytes.size());
    const size_t k = std::min(w.size(), bytes.size());
    FUZZ_CHECK(k > 0);
    memcpy(w.data(), bytes.data(), k);
    d->Commit(k);
    bytes = bytes.subspan(k);
  }
}

bool SameFrame(const Frame& a, const Frame& b) {
  return memcmp(&a.hdr, &b.hdr, sizeof(Header)) == 0 && a.ext == b.ext && a.aux == b.aux;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  size_t nsched = 1 + data[0] % 8;
  if (size < 1 + nsched) return 0;
  std::span<const uint8_t> sched(data + 1, nsched);
  std::span<const uint8_t> stream(data + 1 + nsched, size - 1 - nsched);

  static constexpr size_t kDirectMins[8] = {FrameDecoder::kDirectAuxMin, 1, 4, 16, 64, 512,
                                            FrameDecoder::kDirectAuxMin, 8};
  const size_t direct_min = kDirectMins[(data[0] >> 3) & 7];
  const bool tail_feed = (data[0] >> 6) & 1;

  FrameDecoder dec(direct_min), mirror, ref;
  Frame f, r;
  DecodeError err = DecodeError::kNone, ref_err = DecodeError::kNone;
  std::string detail, ref_detail;
  size_t pos = 0, i = 0;
  uint64_t frames = 0;
  bool failed = false;
  while (pos < stream.size() && !failed) {
    size_t n = std::min<size_t>(sched[i++ % nsched] + 1u, stream.size() - pos);
    if (tail_feed) {
      FeedTail(&dec, stream.subspan(pos, n));
    } else {
      dec.Feed(stream.subspan(pos, n));
    }
    ref.Feed(stream.subspan(pos, n));
    pos += n;
    for (;;) {
      FrameDecoder::Outcome o = dec.Next(&f, &err, &detail);
      FrameDecoder::Outcome ro = ref.Next(&r, &ref_err, &ref_detail);
      FUZZ_CHECK(o == ro);
      FUZZ_CHECK(dec.buffered() == ref.buffered());
      if (o == FrameDecoder::Outcome::kFrame) {
        ++frames;
        FUZZ_CHECK(err == DecodeError::kNone);
        FUZZ_CHECK(SameFrame(f, r));
        CheckRoundTrip(f, &mirror);
        continue;
      }
      if (o == FrameDecoder::Outcome::kError) {
        FUZZ_CHECK(err != DecodeError::kNone && !detail.empty());
        FUZZ_CHECK(err == ref_err && detail == ref_detail);
        failed = true;
      }
      break;
    }
  }
  FUZZ_CHECK(dec.frames_decoded() == frames && mirror.frames_decoded() == frames);
  if (failed) {
    // Poisoned: the same error again, whatever is fed.
    DecodeError again = DecodeError::kNone;
    std::string detail2;
    dec.Feed(stream);
    FUZZ_CHECK(dec.Next(&f, &again, &detail2) == FrameDecoder::Outcome::kError);
    FUZZ_CHECK(again == err && detail2 == detail);
  } else {
    FUZZ_CHECK(dec.buffered() <= stream.size());
  }
  return 0;
}
