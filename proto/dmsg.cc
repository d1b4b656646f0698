#include "proto/dmsg.h"

#include <algorithm>
#include <cassert>
#include <cstdio>
#include <cstring>
#include <type_traits>

#include "proto/crc32c.h"

namespace xdisk::dmsg {
namespace {

// Explicit byte-wise little-endian access keeps the codec independent of
// host byte order and alignment; compilers reduce these to plain loads and
// stores on x86.
template <typename T>
T Get(std::span<const uint8_t> b, size_t off) {
  T v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(T{b[off + i]} << (8 * i));
  return v;
}

template <typename T>
void Put(std::span<uint8_t> b, size_t off, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) b[off + i] = static_cast<uint8_t>(v >> (8 * i));
}

// Offsets of the base header fields (§3.2).
constexpr size_t kOffMagic = 0x00;
constexpr size_t kOffReserved02 = 0x02;
constexpr size_t kOffSalt = 0x04;
constexpr size_t kOffMsgid = 0x08;
constexpr size_t kOffCircuit = 0x10;
constexpr size_t kOffLinkVerifier = 0x18;
constexpr size_t kOffCmd = 0x20;
constexpr size_t kOffAuxCrc = 0x24;
constexpr size_t kOffAuxBytes = 0x28;
constexpr size_t kOffError = 0x2C;
constexpr size_t kOffAuxDescr = 0x30;
constexpr size_t kOffReserved38 = 0x38;
constexpr size_t kOffHdrCrc = 0x3C;

// Extended-header offsets below are relative to the end of the base header,
// i.e. wire offset minus 64, because Encode()/Decode() see only that part.

// LNK_CONN, E2/E3 (§6.2).
constexpr size_t kConnExt = HeaderBytes(kLnkConn) - kBaseHeaderBytes;
constexpr size_t kConnOffMediaId = 0x00;
constexpr size_t kConnOffPeerId = 0x10;
constexpr size_t kConnOffPeerMask = 0x30;
constexpr size_t kConnOffPeerType = 0x38;
constexpr size_t kConnOffProtoVersion = 0x3A;
constexpr size_t kConnOffStatus = 0x3C;
constexpr size_t kConnOffRnss = 0x40;
constexpr size_t kConnOffPeerLabel = 0x84;

// LNK_SPAN (§6.3).
constexpr size_t kSpanExt = HeaderBytes(kLnkSpan) - kBaseHeaderBytes;
constexpr size_t kSpanOffPeerId = 0x00;
constexpr size_t kSpanOffPfsId = 0x10;
constexpr size_t kSpanOffPfsType = 0x20;
constexpr size_t kSpanOffPeerType = 0x21;
constexpr size_t kSpanOffProtoVersion = 0x22;
constexpr size_t kSpanOffStatus = 0x24;
constexpr size_t kSpanOffDist = 0x30;
constexpr size_t kSpanOffRnss = 0x34;
constexpr size_t kSpanOffMediaBytes = 0x38;
constexpr size_t kSpanOffBlksize = 0x40;
constexpr size_t kSpanOffPeerLabel = 0x70;
constexpr size_t kSpanOffPfsLabel = 0xF0;

// BLK (§7.2).
constexpr size_t kBlkOpenExt = HeaderBytes(kBlkOpen) - kBaseHeaderBytes;
constexpr size_t kBlkIoExt = HeaderBytes(kBlkRead) - kBaseHeaderBytes;
constexpr size_t kBlkErrorExt = HeaderBytes(kBlkError) - kBaseHeaderBytes;

static_assert(kConnExt == 320 && kSpanExt == 384);
static_assert(kBlkOpenExt == 64 && kBlkIoExt == 64 && kBlkErrorExt == 128);
static_assert(kConnOffPeerLabel + kLabelBytes <= kConnExt);
static_assert(kSpanOffPfsLabel + kLabelBytes <= kSpanExt);

// Decode() is specified only for exactly-sized input. A mis-sized span in a
// release build is copied into a zero-filled buffer of the right size so that
// a caller bug reads zeros instead of memory it does not own.
template <size_t N>
class Sized {
 public:
  explicit Sized(std::span<const uint8_t> ext) : view_(ext) {
    assert(ext.size() == N);
    if (ext.size() != N) {
      if (!ext.empty()) std::memcpy(copy_.data(), ext.data(), std::min(N, ext.size()));
      view_ = copy_;
    }
  }
  std::span<const uint8_t> view() const { return view_; }

 private:
  std::array<uint8_t, N> copy_{};
  std::span<const uint8_t> view_;
};

Uuid GetUuid(std::span<const uint8_t> b, size_t off) {
  Uuid u;
  std::memcpy(u.data(), b.data() + off, u.size());
  return u;
}

void PutUuid(std::span<uint8_t> b, size_t off, const Uuid& u) {
  std::memcpy(b.data() + off, u.data(), u.size());
}

// DragonFly receivers force byte 127 to NUL, so at most 127 bytes of a label
// survive; we truncate on encode rather than send bytes that will be dropped.
void PutLabel(std::span<uint8_t> b, size_t off, const std::string& s) {
  size_t n = std::min(s.size(), kLabelBytes - 1);
  std::memcpy(b.data() + off, s.data(), n);
  std::memset(b.data() + off + n, 0, kLabelBytes - n);
}

std::string GetLabel(std::span<const uint8_t> b, size_t off) {
  const char* p = reinterpret_cast<const char*>(b.data() + off);
  return std::string(p, strnlen(p, kLabelBytes - 1));
}

// Each layout names its fields once, as (offset, member) pairs in
// Layout<T>::Fields, which both directions run: FieldWriter stores the
// members, FieldReader loads them. Integers are little-endian, uuids are
// copied as bytes, strings are 128-byte labels.
struct FieldWriter {
  std::span<uint8_t> b;
  template <typename T>
  void operator()(size_t off, const T& v) const {
    if constexpr (std::is_same_v<T, Uuid>) {
      PutUuid(b, off, v);
    } else if constexpr (std::is_same_v<T, std::string>) {
      PutLabel(b, off, v);
    } else {
      Put(b, off, v);
    }
  }
};

struct FieldReader {
  std::span<const uint8_t> b;
  template <typename T>
  void operator()(size_t off, T& v) const {
    if constexpr (std::is_same_v<T, Uuid>) {
      v = GetUuid(b, off);
    } else if constexpr (std::is_same_v<T, std::string>) {
      v = GetLabel(b, off);
    } else {
      v = Get<T>(b, off);
    }
  }
};

template <typename T>
struct Layout;

template <>
struct Layout<Header> {
  template <typename H, typename F>
  static void Fields(H& h, F&& f) {
    f(kOffMagic, h.magic);
    f(kOffReserved02, h.reserved02);
    f(kOffSalt, h.salt);
    f(kOffMsgid, h.msgid);
    f(kOffCircuit, h.circuit);
    f(kOffLinkVerifier, h.link_verifier);
    f(kOffCmd, h.cmd);
    f(kOffAuxCrc, h.aux_crc);
    f(kOffAuxBytes, h.aux_bytes);
    f(kOffError, h.error);
    f(kOffAuxDescr, h.aux_descr);
    f(kOffReserved38, h.reserved38);
    f(kOffHdrCrc, h.hdr_crc);
  }
};

template <>
struct Layout<LnkConn> {
  static constexpr size_t kExt = kConnExt;
  template <typename C, typename F>
  static void Fields(C& c, F&& f) {
    f(kConnOffMediaId, c.media_id);
    f(kConnOffPeerId, c.peer_id);
    f(kConnOffPeerMask, c.peer_mask);
    f(kConnOffPeerType, c.peer_type);
    f(kConnOffProtoVersion, c.proto_version);
    f(kConnOffStatus, c.status);
    f(kConnOffRnss, c.rnss);
    f(kConnOffPeerLabel, c.peer_label);
  }
};

template <>
struct Layout<LnkSpan> {
  static constexpr size_t kExt = kSpanExt;
  template <typename S, typename F>
  static void Fields(S& s, F&& f) {
    f(kSpanOffPeerId, s.peer_id);
    f(kSpanOffPfsId, s.pfs_id);
    f(kSpanOffPfsType, s.pfs_type);
    f(kSpanOffPeerType, s.peer_type);
    f(kSpanOffProtoVersion, s.proto_version);
    f(kSpanOffStatus, s.status);
    f(kSpanOffDist, s.dist);
    f(kSpanOffRnss, s.rnss);
    f(kSpanOffMediaBytes, s.media_bytes);
    f(kSpanOffBlksize, s.blksize);
    f(kSpanOffPeerLabel, s.peer_label);
    f(kSpanOffPfsLabel, s.pfs_label);
  }
};

template <>
struct Layout<BlkOpen> {
  static constexpr size_t kExt = kBlkOpenExt;
  template <typename O, typename F>
  static void Fields(O& o, F&& f) {
    f(0x00, o.modes);
  }
};

template <>
struct Layout<BlkIo> {
  static constexpr size_t kExt = kBlkIoExt;
  template <typename I, typename F>
  static void Fields(I& io, F&& f) {
    f(0x00, io.keyid);
    f(0x08, io.offset);
    f(0x10, io.bytes);
    f(0x14, io.flags);
  }
};

template <>
struct Layout<BlkError> {
  static constexpr size_t kExt = kBlkErrorExt;
  template <typename E, typename F>
  static void Fields(E& e, F&& f) {
    f(0x00, e.keyid);
    f(0x08, e.resid);
  }
};

template <typename T>
std::vector<uint8_t> EncodeExt(const T& t) {
  std::vector<uint8_t> v(Layout<T>::kExt);
  Layout<T>::Fields(t, FieldWriter{v});
  return v;
}

template <typename T>
T DecodeExt(std::span<const uint8_t> ext) {
  Sized<Layout<T>::kExt> sized(ext);
  T t;
  Layout<T>::Fields(t, FieldReader{sized.view()});
  return t;
}

struct Named {
  uint32_t value;
  const char* name;
};

constexpr Named kCommands[] = {
    {kLnkPad, "LNK_PAD"},     {kLnkPing, "LNK_PING"},         {kLnkAuth, "LNK_AUTH"},
    {kLnkConn, "LNK_CONN"},   {kLnkSpan, "LNK_SPAN"},         {kLnkVolconf, "LNK_VOLCONF"},
    {kLnkError, "LNK_ERROR"}, {kDbgShell, "DBG_SHELL"},       {kBlkOpen, "BLK_OPEN"},
    {kBlkClose, "BLK_CLOSE"}, {kBlkRead, "BLK_READ"},         {kBlkWrite, "BLK_WRITE"},
    {kBlkFlush, "BLK_FLUSH"}, {kBlkFreeblks, "BLK_FREEBLKS"}, {kBlkError, "BLK_ERROR"},
};

constexpr Named kFlags[] = {
    {kFlagCreate, "CREATE"}, {kFlagDelete, "DELETE"},     {kFlagReply, "REPLY"},
    {kFlagAbort, "ABORT"},   {kFlagRevTrans, "REVTRANS"}, {kFlagRevCirc, "REVCIRC"},
};

std::string Hex(uint32_t v, int width) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%0*x", width, v);
  return buf;
}

// Writes the padded header: base header, ext, zero padding, then the two
// CRCs. aux_crc must be known first because it lies inside the header.
void BuildHeader(Header hdr, std::span<const uint8_t> ext, uint32_t aux_crc, size_t aux_bytes,
                 std::span<uint8_t> out) {
  size_t hdr_bytes = HeaderBytes(hdr.cmd);
  assert(HeaderUnits(hdr.cmd) >= 1 && HeaderUnits(hdr.cmd) <= kHeaderMaxUnits);
  assert(ext.size() <= hdr_bytes - kBaseHeaderBytes);
  assert(aux_bytes <= kAuxMax);
  assert(out.size() >= hdr_bytes);
  hdr.aux_bytes = static_cast<uint32_t>(aux_bytes);
  hdr.aux_crc = aux_crc;
  hdr.hdr_crc = 0;
  EncodeBaseHeader(hdr, out);
  if (!ext.empty()) std::memcpy(out.data() + kBaseHeaderBytes, ext.data(), ext.size());
  std::memset(out.data() + kBaseHeaderBytes + ext.size(), 0,
              hdr_bytes - kBaseHeaderBytes - ext.size());
  Put<uint32_t>(out, kOffHdrCrc, Crc32c(out.data(), hdr_bytes));
}

// CRC of the aux data as if padded with zeros to 64 bytes, without needing
// the padded copy (EncodeHeader's caller sends aux from its own buffer).
uint32_t PaddedAuxCrc(std::span<const uint8_t> aux) {
  if (aux.empty()) return 0;
  static constexpr uint8_t kZeros[kAlign] = {};
  uint32_t crc = Crc32c(aux.data(), aux.size());
  return Crc32cExtend(crc, kZeros, PaddedAux(aux.size()) - aux.size());
}

}  // namespace

std::string CommandName(uint32_t cmd) {
  std::string out;
  uint32_t base = BaseCmd(cmd);
  for (const Named& c : kCommands) {
    if (c.value == base) out = c.name;
  }
  if (out.empty()) out = Hex(base, 6);
  for (const Named& f : kFlags) {
    if (cmd & f.value) {
      out += '|';
      out += f.name;
    }
  }
  if (cmd & kFlagUnused) {
    out += '|';
    out += Hex(cmd & kFlagUnused, 8);
  }
  return out;
}

std::string ErrorName(uint32_t error) {
  switch (error) {
    case 0:
      return "OK";
    case kErrNoSupp:
      return "NOSUPP";
    case kErrLostLink:
      return "LOSTLINK";
    case kErrIo:
      return "IO";
    case kErrParam:
      return "PARAM";
    case kErrCantCirc:
      return "CANTCIRC";
    default:
      return Hex(error, 2);
  }
}

Header DecodeBaseHeader(std::span<const uint8_t> b) {
  assert(b.size() >= kBaseHeaderBytes);
  Header h;
  Layout<Header>::Fields(h, FieldReader{b});
  return h;
}

void EncodeBaseHeader(const Header& h, std::span<uint8_t> b) {
  assert(b.size() >= kBaseHeaderBytes);
  Layout<Header>::Fields(h, FieldWriter{b});
}

bool IsNil(const Uuid& u) {
  return std::all_of(u.begin(), u.end(), [](uint8_t b) { return b == 0; });
}

std::string UuidToString(const Uuid& u) {
  // The first three fields are little-endian integers in DragonFly's struct
  // uuid, so they print byte-reversed; the rest prints in memory order.
  char buf[40];
  std::snprintf(buf, sizeof(buf),
                "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[3], u[2],
                u[1], u[0], u[5], u[4], u[7], u[6], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
                u[15]);
  return buf;
}

Result<Uuid> UuidFromString(std::string_view text) {
  // Memory position of each printed byte, in printing order (see above).
  static constexpr int kOrder[16] = {3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15};
  auto bad = [&] { return Status::InvalidArgument("bad uuid \"" + std::string(text) + "\""); };
  if (text.size() != 36) return bad();
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  Uuid u{};
  size_t pos = 0;
  for (int i = 0; i < 16; ++i) {
    if (pos == 8 || pos == 13 || pos == 18 || pos == 23) {
      if (text[pos] != '-') return bad();
      ++pos;
    }
    int hi = nibble(text[pos]);
    int lo = nibble(text[pos + 1]);
    if (hi < 0 || lo < 0) return bad();
    u[kOrder[i]] = static_cast<uint8_t>(hi << 4 | lo);
    pos += 2;
  }
  return u;
}

std::vector<uint8_t> LnkConn::Encode() const { return EncodeExt(*this); }

LnkConn LnkConn::Decode(std::span<const uint8_t> ext) { return DecodeExt<LnkConn>(ext); }

std::vector<uint8_t> LnkSpan::Encode() const { return EncodeExt(*this); }

LnkSpan LnkSpan::Decode(std::span<const uint8_t> ext) {
  LnkSpan s = DecodeExt<LnkSpan>(ext);
  s.received.assign(ext.begin(), ext.end());
  return s;
}

std::vector<uint8_t> LnkSpan::Relayed(std::span<const uint8_t> received, uint32_t dist,
                                      uint32_t rnss) {
  std::vector<uint8_t> v(received.begin(), received.end());
  if (v.size() < kSpanExt) v.resize(kSpanExt, 0);
  std::span<uint8_t> b(v);
  Put(b, kSpanOffDist, dist);
  Put(b, kSpanOffRnss, rnss);
  return v;
}

std::vector<uint8_t> BlkOpen::Encode() const { return EncodeExt(*this); }

BlkOpen BlkOpen::Decode(std::span<const uint8_t> ext) { return DecodeExt<BlkOpen>(ext); }

std::vector<uint8_t> BlkIo::Encode() const { return EncodeExt(*this); }

BlkIo BlkIo::Decode(std::span<const uint8_t> ext) { return DecodeExt<BlkIo>(ext); }

std::vector<uint8_t> BlkError::Encode() const { return EncodeExt(*this); }

BlkError BlkError::Decode(std::span<const uint8_t> ext) { return DecodeExt<BlkError>(ext); }

void EncodeFrame(Header hdr, std::span<const uint8_t> ext, std::span<const uint8_t> aux,
                 std::vector<uint8_t>* out) {
  size_t hdr_bytes = HeaderBytes(hdr.cmd);
  size_t aux_padded = PaddedAux(aux.size());
  out->clear();
  out->resize(hdr_bytes + aux_padded);  // zero-filled, so the aux padding is zero
  std::span<uint8_t> buf(*out);
  if (!aux.empty()) std::memcpy(buf.data() + hdr_bytes, aux.data(), aux.size());
  // The padded aux is already in place, so checksum it directly.
  uint32_t aux_crc = aux.empty() ? 0 : Crc32c(buf.data() + hdr_bytes, aux_padded);
  BuildHeader(hdr, ext, aux_crc, aux.size(), buf);
}

void EncodeHeader(Header hdr, std::span<const uint8_t> ext, std::span<const uint8_t> aux,
                  std::vector<uint8_t>* out) {
  out->clear();
  out->resize(HeaderBytes(hdr.cmd));
  BuildHeader(hdr, ext, PaddedAuxCrc(aux), aux.size(), std::span<uint8_t>(*out));
}

void EncodeHeaderWithAuxCrc(Header hdr, std::span<const uint8_t> ext, size_t aux_bytes,
                            uint32_t aux_crc, std::vector<uint8_t>* out) {
  out->clear();
  out->resize(HeaderBytes(hdr.cmd));
  BuildHeader(hdr, ext, aux_bytes ? aux_crc : 0, aux_bytes, std::span<uint8_t>(*out));
}

}  // namespace xdisk::dmsg
