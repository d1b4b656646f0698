// `xdisk-fuse keygen [--keys DIR]`: creates the key pair of an encrypted
// link, as DragonFly's `hammer2 rsainit` does (docs/link-crypto.md, "Key
// files").
//
// In DIR (default /etc/xdisk-fuse; created with mode 0700, with a remote/
// subdirectory) it writes:
//   rsa.prv   a new 2048-bit RSA private key, PKCS#1 PEM, mode 0400
//   rsa.pub   its public key, SubjectPublicKeyInfo PEM, mode 0444
// It never overwrites: an existing rsa.prv is kept (and rsa.pub, if
// missing, is derived from it); an existing rsa.pub that does not match
// rsa.prv is an error. Each file appears whole or not at all (written to a
// temporary name, synced, then hard-linked into place, which fails rather
// than replace a file that appeared meanwhile). It prints to `out` what to
// copy to the peer.
#pragma once

#include <string>

namespace xdisk {

// argv[0] is "keygen". Returns the process exit status: 0 done (also when
// the keys already existed), 1 failure (message on stderr), 2 usage error.
int KeygenMain(int argc, char** argv);

}  // namespace xdisk
