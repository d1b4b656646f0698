// How the link crypto (rsa_handshake, tls_stream) words an OpenSSL failure.
#pragma once

#include <string>

namespace xdisk::dfcrypto {

// The first error on this thread's OpenSSL error queue ("unknown OpenSSL
// error" if there is none), with the queue cleared, so that one failure is
// not blamed on the next caller.
std::string TakeOpenSslError();

}  // namespace xdisk::dfcrypto
