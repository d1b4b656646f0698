// The dmsg wire format: constants, the 64-byte base header, the extended
// headers xdisk-fuse uses, and frame encoding. Pure code: no sockets, no loop,
// no files. The byte layouts are documented in docs/dmsg-wire.md; section
// numbers below (§N) refer to docs/dmsg-protocol.md.
//
// All integers are little-endian on the wire. The structs below hold decoded
// host-order values; Encode*/Decode* convert. We implement the E2/E3 era
// (6-unit LNK_CONN).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "proto/status.h"

namespace xdisk::dmsg {

// ---- Framing limits (§3.5) ----
inline constexpr uint16_t kMagic = 0x4832;         // wire bytes 32 48
inline constexpr uint16_t kMagicSwapped = 0x3248;  // a big-endian sender; rejected
inline constexpr size_t kAlign = 64;               // header and aux padding unit
inline constexpr size_t kBaseHeaderBytes = 64;
inline constexpr size_t kHeaderMaxBytes = 2048;  // 32 units
inline constexpr uint32_t kHeaderMaxUnits = 32;
inline constexpr size_t kAuxMax = 1u << 20;  // padded aux limit, 1 MiB

// ---- cmd field (§3.3) ----
inline constexpr uint32_t kFlagCreate = 0x80000000;
inline constexpr uint32_t kFlagDelete = 0x40000000;
inline constexpr uint32_t kFlagReply = 0x20000000;
inline constexpr uint32_t kFlagAbort = 0x10000000;
inline constexpr uint32_t kFlagRevTrans = 0x08000000;
inline constexpr uint32_t kFlagRevCirc = 0x04000000;
inline constexpr uint32_t kFlagUnused = 0x03000000;  // FLAG1|FLAG0: must be 0
inline constexpr uint32_t kFlagsMask = 0xFF000000;
inline constexpr uint32_t kProtoMask = 0x00F00000;
inline constexpr uint32_t kCmdCodeMask = 0x000FFF00;
inline constexpr uint32_t kSizeMask = 0x000000FF;
inline constexpr uint32_t kBaseCmdMask = 0x00FFFFFF;  // proto | code | size units

// Base commands, size units included (Appendix A). Receivers compare the
// full base command, so a known code with a different size is unknown.
inline constexpr uint32_t kLnkPad = 0x00000001;
inline constexpr uint32_t kLnkPing = 0x00000101;
inline constexpr uint32_t kLnkAuth = 0x00001002;
inline constexpr uint32_t kLnkConn = 0x00001106;
inline constexpr uint32_t kLnkSpan = 0x00001207;
inline constexpr uint32_t kLnkVolconf = 0x00002008;
inline constexpr uint32_t kLnkError = 0x000FFF01;
inline constexpr uint32_t kDbgShell = 0x00100101;
inline constexpr uint32_t kBlkOpen = 0x00500102;
inline constexpr uint32_t kBlkClose = 0x00500202;
inline constexpr uint32_t kBlkRead = 0x00500302;
inline constexpr uint32_t kBlkWrite = 0x00500402;
inline constexpr uint32_t kBlkFlush = 0x00500502;
inline constexpr uint32_t kBlkFreeblks = 0x00500602;
inline constexpr uint32_t kBlkError = 0x005FFF03;

// ---- head.error values (§5.6) ----
inline constexpr uint32_t kErrNoSupp = 0x20;
inline constexpr uint32_t kErrLostLink = 0x21;
inline constexpr uint32_t kErrIo = 0x22;
inline constexpr uint32_t kErrParam = 0x23;
inline constexpr uint32_t kErrCantCirc = 0x24;

// ---- LNK_CONN / LNK_SPAN values (§6.2, §6.4) ----
inline constexpr uint8_t kPeerNone = 0;
inline constexpr uint8_t kPeerRouter = 1;
inline constexpr uint8_t kPeerBlock = 2;
inline constexpr uint8_t kPeerHammer2 = 3;
inline constexpr uint8_t kPeerClient = 63;
inline constexpr uint8_t kPfsTypeServer = 3;
inline constexpr uint16_t kSpanProtoVersion = 1;
inline constexpr size_t kLabelBytes = 128;  // fixed char arrays, NUL-terminated

// ---- BLK_OPEN modes (§7.2) ----
inline constexpr uint32_t kBlkModeRead = 0x1;
inline constexpr uint32_t kBlkModeWrite = 0x2;

inline constexpr uint32_t HeaderUnits(uint32_t cmd) { return cmd & kSizeMask; }
inline constexpr size_t HeaderBytes(uint32_t cmd) { return HeaderUnits(cmd) * kAlign; }
inline constexpr size_t PaddedAux(size_t aux_bytes) {
  return (aux_bytes + kAlign - 1) & ~(kAlign - 1);
}
inline constexpr uint32_t BaseCmd(uint32_t cmd) { return cmd & kBaseCmdMask; }

// "BLK_READ|CREATE|DELETE"-style name for logs; unknown commands print hex.
std::string CommandName(uint32_t cmd);
// "LOSTLINK", "IO", ... or hex.
std::string ErrorName(uint32_t error);

// The 64-byte base header (§3.2), in host order.
struct Header {
  uint16_t magic = kMagic;
  uint16_t reserved02 = 0;
  uint32_t salt = 0;
  uint64_t msgid = 0;
  uint64_t circuit = 0;
  uint64_t link_verifier = 0;  // 0x18: sent as 0, never interpreted
  uint32_t cmd = 0;
  uint32_t aux_crc = 0;
  uint32_t aux_bytes = 0;
  uint32_t error = 0;
  uint64_t aux_descr = 0;
  uint32_t reserved38 = 0;
  uint32_t hdr_crc = 0;
};

// Reads the base header from the first 64 bytes of `bytes` (no validation).
// REQUIRES: bytes.size() >= 64.
Header DecodeBaseHeader(std::span<const uint8_t> bytes);
// Writes the base header into the first 64 bytes of `out`.
void EncodeBaseHeader(const Header& h, std::span<uint8_t> out);

// A 16-byte uuid kept in DragonFly `struct uuid` byte order (§8): the first
// three fields little-endian. Opaque to the protocol.
using Uuid = std::array<uint8_t, 16>;
bool IsNil(const Uuid& u);
// Textual form as DragonFly's uuid_to_string prints it (lower-case,
// 8-4-4-4-12), reading the first three fields as little-endian integers.
std::string UuidToString(const Uuid& u);
// Inverse of UuidToString.
Result<Uuid> UuidFromString(std::string_view text);

// Extended headers. Each Encode() returns exactly HeaderBytes(cmd) - 64
// bytes (the part after the base header, zero padded); each Decode() takes
// that part. Decode() REQUIRES ext.size() == HeaderBytes(kCmd) - 64; callers
// check the base command (which includes the size units) first. Labels are
// read up to the first NUL within 127 bytes (byte 127 forced to NUL, §8).

// LNK_CONN, E2/E3 6-unit layout (§6.2).
struct LnkConn {
  static constexpr uint32_t kCmd = kLnkConn;
  Uuid media_id{};
  Uuid peer_id{};
  uint64_t peer_mask = 0;
  uint8_t peer_type = 0;
  uint16_t proto_version = 0;
  uint32_t status = 0;
  uint32_t rnss = 0;
  std::string peer_label;  // at most 127 bytes are encoded
  std::vector<uint8_t> Encode() const;
  static LnkConn Decode(std::span<const uint8_t> ext);
};

// LNK_SPAN (§6.3); the media union is decoded as the BLOCK variant.
struct LnkSpan {
  static constexpr uint32_t kCmd = kLnkSpan;
  Uuid peer_id{};
  Uuid pfs_id{};
  uint8_t pfs_type = 0;
  uint8_t peer_type = 0;
  uint16_t proto_version = 0;
  uint32_t status = 0;
  uint32_t dist = 0;
  uint32_t rnss = 0;
  uint64_t media_bytes = 0;  // media.block.bytes
  uint32_t blksize = 0;      // media.block.blksize
  std::string peer_label;    // block devices: "host/device"
  std::string pfs_label;     // block devices: the serial number
  // Decode: the extended header bytes as received, for a relay to pass on
  // unchanged but for dist and rnss (Relayed()). Encode ignores it.
  std::vector<uint8_t> received;
  std::vector<uint8_t> Encode() const;
  static LnkSpan Decode(std::span<const uint8_t> ext);
  // `received` with only dist and rnss replaced (zero-padded to the span's
  // size if shorter): the bytes of a relayed copy, whatever the span type's
  // media union or the reserved fields hold (§6.3).
  static std::vector<uint8_t> Relayed(std::span<const uint8_t> received, uint32_t dist,
                                      uint32_t rnss);
};

// BLK_OPEN / BLK_CLOSE (§7.2).
struct BlkOpen {
  static constexpr uint32_t kCmd = kBlkOpen;
  uint32_t modes = 0;
  std::vector<uint8_t> Encode() const;
  static BlkOpen Decode(std::span<const uint8_t> ext);
};

// BLK_READ / BLK_WRITE / BLK_FLUSH / BLK_FREEBLKS share one layout (§7.2).
struct BlkIo {
  uint64_t keyid = 0;
  uint64_t offset = 0;
  uint32_t bytes = 0;
  uint32_t flags = 0;
  std::vector<uint8_t> Encode() const;
  static BlkIo Decode(std::span<const uint8_t> ext);
};

// BLK_ERROR, the extended result carrying resid (§7.2).
struct BlkError {
  static constexpr uint32_t kCmd = kBlkError;
  uint64_t keyid = 0;
  uint32_t resid = 0;
  std::vector<uint8_t> Encode() const;
  static BlkError Decode(std::span<const uint8_t> ext);
};

// A decoded frame: the base header, the extended header bytes after it
// (HeaderBytes(cmd) - 64 bytes, as received) and the unpadded aux data.
// An allocator whose value-less construct() leaves bytes uninitialised, so
// that resize(n) on a buffer about to be overwritten (by recv, by a copy)
// does not first write n zeros. resize(n, 0) and assign(n, 0) still zero.
template <class T>
struct UninitAllocator : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = UninitAllocator<U>;
  };
  UninitAllocator() = default;
  template <class U>
  UninitAllocator(const UninitAllocator<U>&) noexcept {}
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

// Bulk data (aux payloads, block buffers) that moves between the decoder,
// the disks and the FUSE replies without copies.
using ByteBuffer = std::vector<uint8_t, UninitAllocator<uint8_t>>;

struct Frame {
  Header hdr;
  std::vector<uint8_t> ext;
  ByteBuffer aux;
  // Set by the decoder when the aux's pad bytes arrived as zeros: then
  // hdr.aux_crc (verified) is the CRC EncodeHeader would compute for
  // `aux`, and a relay passing `aux` on unchanged may reuse it.
  bool aux_crc_reusable = false;
  std::span<const uint8_t> ext_span() const { return ext; }
};

// Builds the wire form of one message into `out` (cleared first): the padded
// header followed by the aux data padded with zeros to 64 bytes. Sets
// hdr.aux_bytes, hdr.aux_crc (0 when aux is empty) and hdr.hdr_crc; the size
// units come from hdr.cmd. REQUIRES: ext.size() <= HeaderBytes(hdr.cmd) - 64,
// HeaderUnits(hdr.cmd) in 1..32, aux.size() <= kAuxMax.
void EncodeFrame(Header hdr, std::span<const uint8_t> ext, std::span<const uint8_t> aux,
                 std::vector<uint8_t>* out);

// Like EncodeFrame, but writes only the padded header (HeaderBytes(cmd)
// bytes) into `out`, so that the caller can send aux from its own buffer
// followed by PaddedAux(aux.size()) - aux.size() zero bytes (writev).
void EncodeHeader(Header hdr, std::span<const uint8_t> ext, std::span<const uint8_t> aux,
                  std::vector<uint8_t>* out);
// The same with the aux CRC given (Frame::aux_crc_reusable), not computed.
void EncodeHeaderWithAuxCrc(Header hdr, std::span<const uint8_t> ext, size_t aux_bytes,
                            uint32_t aux_crc, std::vector<uint8_t>* out);

}  // namespace xdisk::dmsg
