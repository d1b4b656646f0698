#include "proto/tls_stream.h"

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cstring>
#include <string_view>

#include "proto/openssl_error.h"

namespace xdisk::dfcrypto {

namespace {

// A self-signed certificate for `key`: TLS needs a certificate to carry the
// key, but nobody checks anything in it except the key (see OnVerify).
X509* SelfSigned(EVP_PKEY* key) {
  X509* cert = X509_new();
  if (cert == nullptr) return nullptr;
  X509_NAME* name = X509_get_subject_name(cert);
  bool ok = X509_set_version(cert, 2) == 1 &&
            ASN1_INTEGER_set(X509_get_serialNumber(cert), 1) == 1 &&
            X509_gmtime_adj(X509_getm_notBefore(cert), -86400) != nullptr &&
            X509_gmtime_adj(X509_getm_notAfter(cert), 3650L * 86400) != nullptr &&
            X509_set_pubkey(cert, key) == 1 &&
            X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                       reinterpret_cast<const unsigned char*>("xdisk-fuse"), -1, -1,
                                       0) == 1 &&
            X509_set_issuer_name(cert, name) == 1 && X509_sign(cert, key, EVP_sha256()) > 0;
  if (!ok) {
    X509_free(cert);
    return nullptr;
  }
  return cert;
}

// HKDF-Expand-Label(secret, label, "", length) of RFC 8446 §7.1: OpenSSL
// does the HKDF; only the HkdfLabel structure is built here.
bool ExpandLabel(const EVP_MD* md, const std::vector<uint8_t>& secret, std::string_view label,
                 uint8_t* out, size_t length) {
  // struct HkdfLabel { uint16 length; opaque label<7..255>; opaque context<0..255>; }
  std::string info;
  info += static_cast<char>(length >> 8);
  info += static_cast<char>(length & 0xff);
  info += static_cast<char>(6 + label.size());
  info += "tls13 ";
  info += label;
  info += '\0';  // an empty context
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  EVP_KDF_CTX* kctx = kdf != nullptr ? EVP_KDF_CTX_new(kdf) : nullptr;
  EVP_KDF_free(kdf);
  if (kctx == nullptr) return false;
  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
                                       const_cast<char*>(EVP_MD_get0_name(md)), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(secret.data()),
                                        secret.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info.data(), info.size()),
      OSSL_PARAM_construct_end()};
  bool ok = EVP_KDF_derive(kctx, out, length, params) == 1;
  EVP_KDF_CTX_free(kctx);
  return ok;
}

std::vector<uint8_t> FromHex(std::string_view hex) {
  std::vector<uint8_t> out;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    int hi = nibble(hex[i]), lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) return {};
    out.push_back(static_cast<uint8_t>(hi << 4 | lo));
  }
  return out;
}

}  // namespace

// The stream's own BIO: OpenSSL reads the wire bytes of the current
// Receive() straight from the caller's span and appends what it sends
// straight to the caller's vector. A memory BIO would copy both ways, zero
// every byte it grows by and move unread bytes on every write; at 1 MiB
// per request that cost more CPU than the AES-GCM itself.
struct TlsStream::Io {
  std::span<const uint8_t> in;          // wire bytes not yet taken by OpenSSL
  std::vector<uint8_t>* out = nullptr;  // where OpenSSL's output goes
};

namespace {

int IoWrite(BIO* b, const char* data, int len) {
  auto* io = static_cast<TlsStream::Io*>(BIO_get_data(b));
  BIO_clear_retry_flags(b);
  if (io->out == nullptr) {  // never while a call into OpenSSL runs
    BIO_set_retry_write(b);
    return -1;
  }
  // As bytes of the vector's own type: from a char range, insert() copies
  // element by element (converting each), several times slower than the
  // memmove it makes of a uint8_t range.
  const auto* bytes = reinterpret_cast<const uint8_t*>(data);
  io->out->insert(io->out->end(), bytes, bytes + len);
  return len;
}

int IoRead(BIO* b, char* data, int len) {
  auto* io = static_cast<TlsStream::Io*>(BIO_get_data(b));
  BIO_clear_retry_flags(b);
  if (io->in.empty()) {
    BIO_set_retry_read(b);
    return -1;
  }
  size_t n = std::min(io->in.size(), static_cast<size_t>(len));
  memcpy(data, io->in.data(), n);
  io->in = io->in.subspan(n);
  return static_cast<int>(n);
}

long IoCtrl(BIO* b, int cmd, long, void*) {
  auto* io = static_cast<TlsStream::Io*>(BIO_get_data(b));
  switch (cmd) {
    case BIO_CTRL_PENDING:
      return static_cast<long>(io->in.size());
    case BIO_CTRL_FLUSH:
      return 1;
    default:
      return 0;
  }
}

int IoCreate(BIO* b) {
  BIO_set_init(b, 1);
  return 1;
}

const BIO_METHOD* IoMethod() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "xdisk-tls-io");
    if (m != nullptr) {
      BIO_meth_set_write(m, IoWrite);
      BIO_meth_set_read(m, IoRead);
      BIO_meth_set_ctrl(m, IoCtrl);
      BIO_meth_set_create(m, IoCreate);
    }
    return m;
  }();
  return method;
}

}  // namespace

TlsStream::~TlsStream() {
  ForgetSecrets();
  SSL_free(ssl_);
  SSL_CTX_free(ctx_);
  EVP_PKEY_free(peer_public_);
}

void TlsStream::ForgetSecrets() {
  OPENSSL_cleanse(client_secret_.data(), client_secret_.size());
  OPENSSL_cleanse(server_secret_.data(), server_secret_.size());
  client_secret_.clear();
  server_secret_.clear();
}

void TlsStream::OnKeylog(const SSL* ssl, const char* line) {
  // OpenSSL's key log is the only place 3.0 gives the traffic secrets out:
  // "LABEL <client random hex> <secret hex>". Only the two application
  // secrets are kept; the handshake secrets are never needed.
  auto* self = static_cast<TlsStream*>(SSL_get_app_data(ssl));
  std::string_view l(line);
  std::vector<uint8_t>* into = nullptr;
  if (l.starts_with("CLIENT_TRAFFIC_SECRET_0 ")) into = &self->client_secret_;
  if (l.starts_with("SERVER_TRAFFIC_SECRET_0 ")) into = &self->server_secret_;
  if (into == nullptr) return;
  size_t sp = l.rfind(' ');
  *into = FromHex(l.substr(sp + 1));
}

void TlsStream::OnRecord(int write_p, int, int content_type, const void*, size_t, SSL*, void* arg) {
  // Called once per record header, read or written. After the handshake
  // every record is under the application traffic keys (no tickets, no key
  // updates, and neither side sends data before its handshake is done), so
  // these counts are the next sequence numbers (RFC 8446 §5.3).
  auto* self = static_cast<TlsStream*>(arg);
  if (content_type != SSL3_RT_HEADER || !self->done_) return;
  ++(write_p ? self->tx_records_ : self->rx_records_);
}

Result<TlsStream::TrafficKeys> TlsStream::ExportKeys(Direction dir) const {
  if (!done_) return Status::Unavailable("TLS keys: the handshake is not done");
  const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl_);
  TrafficKeys k;
  uint32_t id = cipher != nullptr ? SSL_CIPHER_get_id(cipher) & 0xffff : 0;
  if (id == 0x1301) {
    k.key_bytes = 16;  // TLS_AES_128_GCM_SHA256
  } else if (id == 0x1302) {
    k.key_bytes = 32;  // TLS_AES_256_GCM_SHA384
  } else {
    return Status::Unavailable(std::string("TLS keys: suite ") +
                               (cipher != nullptr ? SSL_CIPHER_get_name(cipher) : "(none)") +
                               " is not AES-GCM");
  }
  const bool client_side = (role_ == Role::kClient) == (dir == Direction::kSend);
  const std::vector<uint8_t>& secret = client_side ? client_secret_ : server_secret_;
  if (secret.empty()) return Status::Unavailable("TLS keys: the traffic secret was not captured");
  const EVP_MD* md = SSL_CIPHER_get_handshake_digest(cipher);
  if (md == nullptr || !ExpandLabel(md, secret, "key", k.key.data(), k.key_bytes) ||
      !ExpandLabel(md, secret, "iv", k.iv.data(), k.iv.size()))
    return Status::Unavailable("TLS keys: HKDF failed: " + TakeOpenSslError());
  k.seq = dir == Direction::kSend ? tx_records_ : rx_records_;
  return k;
}

bool TlsStream::at_record_boundary() const {
  return done_ && io_->in.empty() && SSL_has_pending(ssl_) == 0;
}

int TlsStream::OnVerify(int, X509_STORE_CTX* store) {
  // Pinning: the chain, names and dates mean nothing here (the certificate
  // is self-signed and made at startup); the peer is who it claims only if
  // its certificate carries exactly the key on file for its address.
  SSL* ssl =
      static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  auto* self = static_cast<TlsStream*>(SSL_get_app_data(ssl));
  if (X509_STORE_CTX_get_error_depth(store) != 0) return 0;
  X509* cert = X509_STORE_CTX_get_current_cert(store);
  EVP_PKEY* key = cert != nullptr ? X509_get0_pubkey(cert) : nullptr;
  if (key == nullptr || EVP_PKEY_eq(key, self->peer_public_) != 1) {
    self->key_mismatch_ = true;
    return 0;
  }
  return 1;
}

Result<std::unique_ptr<TlsStream>> TlsStream::Create(Role role, const RsaKey& own_private,
                                                     const RsaKey& peer_public) {
  std::unique_ptr<TlsStream> t(new TlsStream());
  t->role_ = role;
  ERR_clear_error();
  t->peer_public_ = peer_public.pkey();
  EVP_PKEY_up_ref(t->peer_public_);
  t->ctx_ = SSL_CTX_new(role == Role::kClient ? TLS_client_method() : TLS_server_method());
  if (t->ctx_ == nullptr) return Status::Protocol("TLS setup failed: " + TakeOpenSslError());
  // TLS 1.3 only: ephemeral key exchange (forward secrecy) and no legacy
  // negotiation to get wrong. No tickets: every link is a full handshake,
  // and nothing arrives after it that would need an answer.
  SSL_CTX_set_min_proto_version(t->ctx_, TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(t->ctx_, TLS1_3_VERSION);
  SSL_CTX_set_num_tickets(t->ctx_, 0);
  SSL_CTX_set_options(t->ctx_, SSL_OP_NO_TICKET);
  // AES-GCM only, which CPUs accelerate and the kernel's TLS offload takes
  // (ExportKeys); 256-bit first.
  SSL_CTX_set_ciphersuites(t->ctx_, "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256");
  SSL_CTX_set_keylog_callback(t->ctx_, OnKeylog);
  X509* cert = SelfSigned(own_private.pkey());
  bool ok = cert != nullptr && SSL_CTX_use_certificate(t->ctx_, cert) == 1 &&
            SSL_CTX_use_PrivateKey(t->ctx_, own_private.pkey()) == 1;
  X509_free(cert);
  if (!ok) return Status::Protocol("TLS certificate setup failed: " + TakeOpenSslError());
  SSL_CTX_set_verify(t->ctx_, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, OnVerify);
  t->ssl_ = SSL_new(t->ctx_);
  if (t->ssl_ == nullptr) return Status::Protocol("TLS setup failed: " + TakeOpenSslError());
  t->io_ = std::make_unique<Io>();
  BIO* bio = IoMethod() != nullptr ? BIO_new(IoMethod()) : nullptr;
  if (bio == nullptr) return Status::Protocol("TLS setup failed: out of memory");
  BIO_set_data(bio, t->io_.get());
  SSL_set_bio(t->ssl_, bio, bio);  // one reference, for both directions
  SSL_set_app_data(t->ssl_, t.get());
  SSL_set_msg_callback(t->ssl_, OnRecord);
  SSL_set_msg_callback_arg(t->ssl_, t.get());
  if (role == Role::kClient) {
    SSL_set_connect_state(t->ssl_);
  } else {
    SSL_set_accept_state(t->ssl_);
  }
  return t;
}

Status TlsStream::Start(std::vector<uint8_t>* to_send) { return Drive(nullptr, to_send); }

Status TlsStream::Receive(std::span<const uint8_t> wire, PlainSink* plain,
                          std::vector<uint8_t>* to_send) {
  if (!failed_.ok()) return failed_;
  io_->in = wire;
  Status st = Drive(plain, to_send);
  // Drive reads until OpenSSL wants more, so it took every byte (what ends
  // inside a record waits in OpenSSL's own record buffer).
  io_->in = {};
  return st;
}

Status TlsStream::Drive(PlainSink* plain, std::vector<uint8_t>* to_send) {
  ERR_clear_error();
  struct Out {  // OpenSSL's output goes to *to_send during this call only
    Io* io;
    ~Out() { io->out = nullptr; }
  } out{io_.get()};
  io_->out = to_send;
  if (!done_) {
    int r = SSL_do_handshake(ssl_);
    if (r == 1) {
      done_ = true;
    } else {
      int e = SSL_get_error(ssl_, r);
      if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
        // Our alert, already in *to_send, tells the peer why.
        failed_ = key_mismatch_
                      ? Status::Protocol(
                            "key mismatch: the peer's TLS certificate does not carry its key on "
                            "file")
                      : Status::Protocol("TLS handshake failed: " + TakeOpenSslError());
        return failed_;
      }
    }
  }
  if (done_ && plain != nullptr) {
    for (;;) {
      // A record's worth of space: OpenSSL copies the opened record into
      // it (what does not fit waits for the next SSL_read).
      std::span<uint8_t> space = plain->Space(SSL3_RT_MAX_PLAIN_LENGTH);
      size_t got = 0;
      int r = SSL_read_ex(ssl_, space.data(), space.size(), &got);
      if (r == 1) {
        plain->Commit(got);
        continue;
      }
      int e = SSL_get_error(ssl_, r);
      if (e == SSL_ERROR_WANT_READ) break;
      failed_ = e == SSL_ERROR_ZERO_RETURN
                    ? Status::Protocol("the peer ended the TLS session")
                    : Status::Corruption("TLS record failed: " + TakeOpenSslError());
      return failed_;
    }
  }
  return Status::Ok();
}

Status TlsStream::Seal(std::span<const uint8_t> plain, std::vector<uint8_t>* wire) {
  if (!failed_.ok()) return failed_;
  ERR_clear_error();
  // Our BIO takes everything, so SSL_write writes all or fails.
  io_->out = wire;
  bool ok = plain.empty() || SSL_write(ssl_, plain.data(), static_cast<int>(plain.size())) ==
                                 static_cast<int>(plain.size());
  io_->out = nullptr;
  if (!ok) {
    failed_ = Status::Protocol("TLS write failed: " + TakeOpenSslError());
    return failed_;
  }
  return Status::Ok();
}

}  // namespace xdisk::dfcrypto
