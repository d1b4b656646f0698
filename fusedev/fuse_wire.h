// The few bytes of the kernel's FUSE protocol that the server reads or
// writes itself rather than through libfuse: the FUSE_INIT request it keeps
// for a restarted server (fuse_server.h, ADOPTION) and the FUSE_NOTIFY_RESEND
// notification. Pure functions over byte strings; no FUSE calls, no files.
//
// Layouts (little-endian on every Linux we run on; the kernel writes them in
// host order, and the saved bytes are only ever given back to the same host):
//
//   fuse_in_header (40 bytes): len u32 @0, opcode u32 @4, unique u64 @8,
//     nodeid u64 @16, uid u32 @24, gid u32 @28, pid u32 @32, total_extlen
//     u16 @36, padding u16 @38.
//   fuse_init_in (follows the header): major u32 @40, minor u32 @44,
//     max_readahead u32 @48, flags u32 @52, and from protocol 7.36 with
//     FUSE_INIT_EXT (flags bit 30) set: flags2 u32 @56 (the high half of
//     the 64-bit flags).
//   fuse_out_header (16 bytes): len u32 @0, error i32 @4, unique u64 @8. A
//     notification has unique 0 and carries its code in `error`.
//
// FUSE_NOTIFY_RESEND (code 7, protocol 7.40, Linux 6.9) has no body: the
// kernel moves every request the connection's readers took but did not
// answer back to the pending queue, with bit 63 of `unique` set. The kernel
// says it supports it with FUSE_HAS_RESEND (bit 39 of the 64-bit flags,
// i.e. bit 7 of flags2) in FUSE_INIT.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace xdisk::fusedev::wire {

inline constexpr uint32_t kOpInit = 26;
inline constexpr size_t kInHeaderSize = 40;
inline constexpr uint64_t kUniqueResent = 1ull << 63;
inline constexpr uint64_t kFlagInitExt = 1ull << 30;
inline constexpr uint64_t kFlagHasResend = 1ull << 39;
inline constexpr int32_t kNotifyResend = 7;

struct InHeader {
  uint32_t len = 0;
  uint32_t opcode = 0;
  uint64_t unique = 0;
};

// False if `bytes` is shorter than a header.
bool ParseInHeader(std::string_view bytes, InHeader* out);

struct InitRequest {
  uint32_t major = 0, minor = 0;
  uint64_t flags = 0;  // flags | flags2 << 32 (flags2 only with FUSE_INIT_EXT)
  bool has_resend() const { return (flags & kFlagHasResend) != 0; }
};

// Parses a whole FUSE_INIT request (header and body) as read from
// /dev/fuse. False if it is not one: too short, another opcode, or a length
// field that disagrees with the bytes.
bool ParseInitRequest(std::string_view bytes, InitRequest* out);

// The 16 bytes to write to /dev/fuse to ask for FUSE_NOTIFY_RESEND.
std::array<uint8_t, 16> ResendNotification();

}  // namespace xdisk::fusedev::wire
