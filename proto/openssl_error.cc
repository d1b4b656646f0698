#include "proto/openssl_error.h"

#include <openssl/err.h>

namespace xdisk::dfcrypto {

std::string TakeOpenSslError() {
  unsigned long e = ERR_get_error();
  char buf[256] = "unknown OpenSSL error";
  if (e != 0) ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return buf;
}

}  // namespace xdisk::dfcrypto
