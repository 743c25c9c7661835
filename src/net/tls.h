/*
 * TLS through OpenSSL memory BIOs, with no sockets: the connection code
 * moves ciphertext between the socket and these functions. Both sides:
 * the server (STARTTLS and implicit TLS for listeners) and the client
 * (the client runtime, src/net/client.c). A connection of either side
 * is a struct tern__tls and uses the same feed/read/write/output
 * functions.
 */
#ifndef TERN_NET_TLS_H
#define TERN_NET_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include "tern/net.h"
#include "tern/resolve.h"

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
/* Make the certificates of `from` (its files and loaded set) those of
 * `ctx`, then free `from` with ctx's old ones: connections created from
 * now on use the new set, existing ones keep theirs. Same thread rules
 * as reload (one caller at a time; concurrent tern__tls_new is safe). */
void tern__tls_ctx_take(struct tern__tls_ctx *ctx, struct tern__tls_ctx *from);

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

/* ---- client side ---- */

/* Trust anchors and policy for client connections: TLS >= 1.2, the same
 * suites as the server side, CAs from ca_file and/or ca_dir (PEM bundle,
 * hashed directory) or, when both are NULL, the system's default verify
 * paths. Verification results are recorded during the handshake but do
 * not stop it: see tern__tls_verify_result(). Returns 0, TERN_ETLS (CA
 * file/dir unreadable; err names it and OpenSSL's reason), TERN_ENOMEM.
 * Immutable once made; connections hold their own reference. */
struct tern__tls_client_ctx;
int tern__tls_client_ctx_new(struct tern__tls_client_ctx **out,
                             const char *ca_file, const char *ca_dir,
                             char *err, size_t errcap);
void tern__tls_client_ctx_free(struct tern__tls_client_ctx *ctx);
/* The same, shared: one context per (ca_file, ca_dir) in the process,
 * made on first use and freed when the last holder releases it (the
 * system store costs tens of milliseconds to load). Thread-safe. */
int tern__tls_client_ctx_acquire(struct tern__tls_client_ctx **out,
                                 const char *ca_file, const char *ca_dir,
                                 char *err, size_t errcap);
void tern__tls_client_ctx_release(struct tern__tls_client_ctx *ctx);

/* The client side of one connection. `server_name` (NULL = none; "[v6]"
 * brackets allowed) is the name the certificate must carry: a DNS name
 * is sent as SNI and checked against the certificate (SSL_set1_host, no
 * partial wildcards); an IP address is not sent as SNI (RFC 6066 §3) and
 * must match an IP SAN. Call tern__tls_read() once (nothing fed) to
 * produce the ClientHello in tern__tls_output(). Returns 0, TERN_EINVAL
 * (name too long / unusable), TERN_ENOMEM. */
int tern__tls_client_new(struct tern__tls **out,
                         struct tern__tls_client_ctx *ctx,
                         const char *server_name);

/* After the handshake: true when the peer's chain verified against the
 * trust anchors and matched the server name. *why (if why != NULL)
 * gets OpenSSL's reason ("self-signed certificate", "hostname
 * mismatch", ...; "ok" when verified), static text. */
bool tern__tls_verify_result(const struct tern__tls *t, const char **why);

/* DANE (RFC 7672) for this connection, before the handshake: the TLSA
 * records `recs` (usages 2 and 3 are used, others ignored) of `base`
 * (the TLSA base domain: the MX host name). The certificate then
 * verifies only through them (see tern__tls_verify_result() and
 * tern__tls_dane_match()). Returns 0, TERN_EINVAL (no usable record),
 * TERN_ETLS. */
int tern__tls_client_dane(struct tern__tls *t, const char *base,
                          const struct tern_tlsa *recs, size_t n);
/* After the handshake: "dane-ee" or "dane-ta" when a TLSA record
 * matched, NULL otherwise (no DANE, or no match). */
const char *tern__tls_dane_match(const struct tern__tls *t);

#endif
