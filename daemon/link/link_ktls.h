// Kernel TLS offload for TLS 1.3 links (docs/link-crypto.md, "Kernel TLS
// offload"): after our user-space handshake (proto/tls_stream.h), the
// kernel's "tls" TCP upper layer takes over record protection, so block
// data crosses the socket as plaintext system calls and is encrypted and
// decrypted in the kernel, without the copies through OpenSSL's buffers.
//
// These are the socket calls only; when to make them is the link's
// business (daemon/link/link_handshake.cc, Link::MaybeOffload).
// Threading: any thread; Available() probes once per process.
#pragma once

#include "proto/status.h"
#include "proto/tls_stream.h"

namespace xdisk::ktls {

// Whether the kernel has the "tls" upper layer (built in or loadable):
// setsockopt(TCP_ULP, "tls") on an unconnected TCP socket fails with
// ENOENT when the kernel has none, and with ENOTCONN when it has one.
// Probed at the first call; the answer is kept. The environment variable
// XDISK_KTLS=off makes it false.
bool Available();

// Attaches the "tls" upper layer to connected TCP socket `fd`. Once per
// socket, before Install().
Status Attach(int fd);

// Hands one direction of `fd` to the kernel with `keys`. REQUIRES:
// Attach(fd) succeeded. kSend: every byte written afterwards is sent as
// application-data records; kReceive: the socket's next unread byte must
// start a record, and reads return plaintext from then on (a record that
// does not authenticate fails the read with EBADMSG, any record other
// than application data with EIO).
Status Install(int fd, dfcrypto::TlsStream::Direction dir,
               const dfcrypto::TlsStream::TrafficKeys& keys);

}  // namespace xdisk::ktls
