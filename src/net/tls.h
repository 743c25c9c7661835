/*
 * TLS through OpenSSL memory BIOs, with no sockets: the connection code
 * moves ciphertext between the socket and these functions. Server side
 * for now (STARTTLS and implicit TLS); the client side arrives with the
 * client runtime.
 */
#ifndef TERN_NET_TLS_H
#define TERN_NET_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include "tern/net.h"

/* Certificates for a server: the first is the default, the others are
 * chosen by SNI (by the DNS names / CN they carry). Shared by all worker
 * threads; reload swaps the set atomically (sessions that already started
 * keep a reference to the old SSL_CTX). */
struct tern__tls_ctx;

/* Load certs (PEM; cert_file may hold a chain). TLS >= 1.2,
 * SSL_MODE_RELEASE_BUFFERS. On failure writes a message naming the file
 * and OpenSSL's reason into err[0..errcap) and returns TERN_ETLS (or
 * TERN_ENOMEM / TERN_EINVAL). */
int tern__tls_ctx_new(struct tern__tls_ctx **out,
                      const struct tern_tls_cert *certs, size_t n,
                      char *err, size_t errcap);
/* Reload the same files; on failure the old set stays. Thread-safe. */
int tern__tls_ctx_reload(struct tern__tls_ctx *ctx, char *err, size_t errcap);
void tern__tls_ctx_free(struct tern__tls_ctx *ctx);

/* One connection's TLS state. Used by one thread at a time. */
struct tern__tls;

int tern__tls_new(struct tern__tls **out, struct tern__tls_ctx *ctx);
void tern__tls_free(struct tern__tls *t);

/* Ciphertext read from the socket. Returns 0 or TERN_ENOMEM. */
int tern__tls_feed(struct tern__tls *t, const char *buf, size_t len);

/*
 * Decrypted bytes into buf[0..cap) (drives the handshake as needed).
 * Returns n > 0; 0 when more ciphertext is needed (check
 * tern__tls_output() for handshake bytes to send); TERN_ECLOSED on the
 * peer's close_notify; TERN_ETLS on a TLS error (tern__tls_error()).
 */
long tern__tls_read(struct tern__tls *t, char *buf, size_t cap);

/* Encrypt plaintext; returns bytes taken (all of them once the handshake
 * is done; 0 before) or TERN_ETLS. */
long tern__tls_write(struct tern__tls *t, const char *buf, size_t len);

/* Ciphertext waiting to be sent: copies up to cap bytes into buf and
 * returns how many (0 = none). */
size_t tern__tls_output(struct tern__tls *t, char *buf, size_t cap);

/* Queue a close_notify (then send tern__tls_output()). */
void tern__tls_shutdown(struct tern__tls *t);

bool tern__tls_handshake_done(const struct tern__tls *t);
const char *tern__tls_version(const struct tern__tls *t); /* "TLSv1.3" */
const char *tern__tls_cipher(const struct tern__tls *t);
const char *tern__tls_sni(const struct tern__tls *t);     /* or NULL */
/* Last error text for this connection (OpenSSL's reason), never NULL. */
const char *tern__tls_error(const struct tern__tls *t);

#endif
