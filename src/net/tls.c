/*
 * TLS for the runtime through OpenSSL (>= 3.0) memory BIOs: no sockets
 * here. The connection code feeds ciphertext from the socket into
 * tern__tls_feed(), reads plaintext with tern__tls_read(), encrypts with
 * tern__tls_write() and sends whatever tern__tls_output() hands back.
 *
 * Certificates. A struct tern__tls_ctx owns the list of file names and
 * the current "set": one SSL_CTX per certificate, the first being the
 * default. A connection takes a counted reference to the set that was
 * current when it started, so a reload can swap in a new set while old
 * connections finish on the old one; the last user frees it.
 *
 * Policy (DESIGN §5): TLS 1.2 and 1.3 only; for 1.2 forward-secret AEAD
 * suites only (no RSA key exchange, no CBC); OpenSSL's defaults for 1.3;
 * no renegotiation; SSL_MODE_RELEASE_BUFFERS so idle sessions stay small.
 */
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "internal.h"
#include "tls.h"

/* TLS 1.2 suites. TLS 1.3 suites are OpenSSL's defaults (all AEAD). */
#define TLS12_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL"

/* A memory BIO keeps its largest size until it is freed; once one has
 * grown past this (a big write or feed) it is replaced by a fresh one as
 * soon as it is empty, so a connection that once moved 1 MiB does not
 * hold 1 MiB while idle. A handshake flight stays well below it. */
#define BIO_KEEP_MAX (64 * 1024)

/* Largest single BIO/SSL call; BIO_read/BIO_write take an int. */
#define IO_CHUNK_MAX (1 << 30)

/* The SSL_CTXs built from one reading of the files. Immutable once
 * built; shared by every connection that started while it was current. */
struct tls_set {
  atomic_size_t refs;
  size_t n;
  SSL_CTX *ctx[]; /* ctx[0] is the default */
};

struct tern__tls_ctx {
  pthread_mutex_t lock; /* guards cur */
  struct tls_set *cur;  /* holds one reference */
  size_t n;
  char **cert_files; /* n each, owned copies */
  char **key_files;
};

struct tern__tls {
  SSL *ssl;
  struct tls_set *set; /* one reference */
  const char *err;     /* static text (OpenSSL's reason strings live as
                          long as the library) */
  bool failed;         /* fatal error seen: only free is useful now */
  bool closed;         /* peer's close_notify seen */
  bool rbio_big;       /* see BIO_KEEP_MAX */
  bool wbio_big;
};

/* ---- helpers --------------------------------------------------------- */

static char *dup_str(const char *s) {
  size_t len = strlen(s) + 1;
  char *p = tern__malloc(NULL, len);
  if (p != NULL)
    memcpy(p, s, len);
  return p;
}

/* "FILE: what: error:XXXXXXXX:lib::reason" into err (if any), from the
 * oldest error queued (usually the root cause), then empty the queue so
 * nothing stale reaches the next caller on this thread. */
static void set_err(char *err, size_t errcap, const char *file,
                    const char *what) {
  char reason[256];
  unsigned long code = ERR_peek_error();

  if (code != 0)
    ERR_error_string_n(code, reason, sizeof reason);
  else
    reason[0] = '\0';
  ERR_clear_error();
  if (err == NULL || errcap == 0)
    return;
  snprintf(err, errcap, "%s: %s%s%s", file != NULL ? file : "TLS", what,
           reason[0] != '\0' ? ": " : "", reason);
}

/* Pass-phrase callback that refuses: an encrypted key fails to load
 * instead of OpenSSL prompting on the terminal from inside a server. */
static int no_passphrase(char *buf, int size, int rwflag, void *ud) {
  (void)buf;
  (void)size;
  (void)rwflag;
  (void)ud;
  return -1;
}

/*
 * SNI (RFC 6066 §3). Runs during the ClientHello: pick the first
 * certificate of the connection's set that is valid for the requested
 * name (SAN DNS names, wildcards included, or the CN when the
 * certificate has no DNS names, as X509_check_host() does). An unknown
 * name or no name keeps the default; we never abort the handshake over
 * it, since SMTP clients rarely check the name anyway.
 */
static int servername_cb(SSL *ssl, int *alert, void *arg) {
  struct tern__tls *t = SSL_get_app_data(ssl);
  const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);

  (void)alert;
  (void)arg;
  if (t == NULL || name == NULL || name[0] == '\0')
    return SSL_TLSEXT_ERR_OK;
  for (size_t i = 0; i < t->set->n; i++) {
    X509 *cert = SSL_CTX_get0_certificate(t->set->ctx[i]);
    if (cert != NULL && X509_check_host(cert, name, 0, 0, NULL) == 1) {
      if (i != 0 && SSL_set_SSL_CTX(ssl, t->set->ctx[i]) == NULL)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
      break;
    }
  }
  return SSL_TLSEXT_ERR_OK;
}

/* One SSL_CTX for one certificate and key. Returns NULL with err set. */
static SSL_CTX *ctx_load(const char *cert_file, const char *key_file, char *err,
                         size_t errcap) {
  SSL_CTX *c;

  ERR_clear_error();
  c = SSL_CTX_new(TLS_server_method());
  if (c == NULL) {
    set_err(err, errcap, cert_file, "cannot create SSL_CTX");
    return NULL;
  }
  if (SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION) != 1 ||
      SSL_CTX_set_cipher_list(c, TLS12_CIPHERS) != 1) {
    set_err(err, errcap, cert_file, "cannot set the TLS policy");
    goto fail;
  }
  SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION |
                             SSL_OP_CIPHER_SERVER_PREFERENCE |
                             SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS);
  /* Resumption through stateless tickets only: a server-side cache per
   * SSL_CTX would be shared (and locked) across worker threads and grow
   * with the number of clients. */
  SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_default_passwd_cb(c, no_passphrase);
  SSL_CTX_set_tlsext_servername_callback(c, servername_cb);

  if (SSL_CTX_use_certificate_chain_file(c, cert_file) != 1) {
    set_err(err, errcap, cert_file, "cannot load certificate");
    goto fail;
  }
  /* Loading the key already compares it with the certificate (failing
   * with X509_R_KEY_VALUES_MISMATCH); the explicit check below is the
   * documented one and costs nothing. */
  if (SSL_CTX_use_PrivateKey_file(c, key_file, SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(c) != 1) {
    unsigned long code = ERR_peek_last_error();
    char what[512];
    if ((ERR_GET_LIB(code) == ERR_LIB_X509 &&
         ERR_GET_REASON(code) == X509_R_KEY_VALUES_MISMATCH) ||
        SSL_CTX_get0_privatekey(c) != NULL)
      snprintf(what, sizeof what, "private key does not match certificate %s",
               cert_file);
    else
      snprintf(what, sizeof what, "cannot load private key");
    set_err(err, errcap, key_file, what);
    goto fail;
  }
  ERR_clear_error();
  return c;

fail:
  SSL_CTX_free(c);
  ERR_clear_error();
  return NULL;
}

static void set_unref(struct tls_set *s) {
  if (s == NULL || atomic_fetch_sub(&s->refs, 1) != 1)
    return;
  for (size_t i = 0; i < s->n; i++)
    SSL_CTX_free(s->ctx[i]);
  tern__free(NULL, s);
}

/* Read every file into a new set (one reference, the caller's). */
static int set_load(struct tls_set **out, const struct tern__tls_ctx *ctx,
                    char *err, size_t errcap) {
  struct tls_set *s;

  if (ctx->n > (SIZE_MAX - sizeof *s) / sizeof s->ctx[0])
    return TERN_ENOMEM;
  s = tern__malloc(NULL, sizeof *s + ctx->n * sizeof s->ctx[0]);
  if (s == NULL) {
    if (err != NULL && errcap > 0)
      snprintf(err, errcap, "out of memory loading certificates");
    return TERN_ENOMEM;
  }
  atomic_init(&s->refs, 1);
  s->n = 0;
  for (size_t i = 0; i < ctx->n; i++) {
    s->ctx[i] = ctx_load(ctx->cert_files[i], ctx->key_files[i], err, errcap);
    if (s->ctx[i] == NULL) {
      set_unref(s);
      return TERN_ETLS;
    }
    s->n = i + 1;
  }
  *out = s;
  return 0;
}

/* ---- certificate sets ------------------------------------------------- */

/*
 * tern__tls_ctx_new() loads n >= 1 certificates (PEM; each cert_file may
 * hold the chain after the leaf; a NULL key_file means the key is in
 * cert_file) and checks each key against its certificate. The first
 * certificate is the default; the others are chosen by SNI. The file
 * names are copied, so `certs` need not outlive the call.
 *
 * On success *out owns the set (free with tern__tls_ctx_free()). On
 * failure *out is untouched, err[0..errcap) (if err != NULL) holds a
 * NUL-terminated message naming the file and OpenSSL's reason, and the
 * result is TERN_ETLS (unreadable or invalid file, key mismatch),
 * TERN_EINVAL (no certificates, NULL file name) or TERN_ENOMEM.
 */
int tern__tls_ctx_new(struct tern__tls_ctx **out,
                      const struct tern_tls_cert *certs, size_t n, char *err,
                      size_t errcap) {
  struct tern__tls_ctx *ctx;
  int rc = TERN_ENOMEM;

  if (err != NULL && errcap > 0)
    err[0] = '\0';
  if (out == NULL || certs == NULL || n == 0) {
    if (err != NULL && errcap > 0)
      snprintf(err, errcap, "no TLS certificates given");
    return TERN_EINVAL;
  }
  for (size_t i = 0; i < n; i++) {
    if (certs[i].cert_file == NULL) {
      if (err != NULL && errcap > 0)
        snprintf(err, errcap, "TLS certificate %zu has no file name", i);
      return TERN_EINVAL;
    }
  }

  ctx = tern__calloc_array(NULL, 1, sizeof *ctx);
  if (ctx == NULL)
    goto oom;
  ctx->cert_files = tern__calloc_array(NULL, n, sizeof *ctx->cert_files);
  ctx->key_files = tern__calloc_array(NULL, n, sizeof *ctx->key_files);
  if (ctx->cert_files == NULL || ctx->key_files == NULL)
    goto oom;
  ctx->n = n;
  for (size_t i = 0; i < n; i++) {
    const char *key =
        certs[i].key_file != NULL ? certs[i].key_file : certs[i].cert_file;
    ctx->cert_files[i] = dup_str(certs[i].cert_file);
    ctx->key_files[i] = dup_str(key);
    if (ctx->cert_files[i] == NULL || ctx->key_files[i] == NULL)
      goto oom;
  }
  if (pthread_mutex_init(&ctx->lock, NULL) != 0)
    goto oom;
  rc = set_load(&ctx->cur, ctx, err, errcap);
  if (rc != 0) {
    pthread_mutex_destroy(&ctx->lock);
    goto fail;
  }
  *out = ctx;
  return 0;

oom:
  if (err != NULL && errcap > 0)
    snprintf(err, errcap, "out of memory loading certificates");
fail:
  if (ctx != NULL) {
    for (size_t i = 0; i < ctx->n; i++) {
      tern__free(NULL, ctx->cert_files[i]);
      tern__free(NULL, ctx->key_files[i]);
    }
    tern__free(NULL, ctx->cert_files);
    tern__free(NULL, ctx->key_files);
    tern__free(NULL, ctx);
  }
  return rc;
}

/*
 * tern__tls_ctx_reload() re-reads every file into a new set and, only if
 * all of them load, makes it current. Connections created from now on
 * use the new certificates; existing ones keep theirs. On failure the
 * old set stays current, err holds the message (as for _new), and the
 * result is TERN_ETLS or TERN_ENOMEM. Safe to call from any thread,
 * concurrently with tern__tls_new() and other reloads.
 */
int tern__tls_ctx_reload(struct tern__tls_ctx *ctx, char *err, size_t errcap) {
  struct tls_set *fresh, *old;
  int rc;

  if (err != NULL && errcap > 0)
    err[0] = '\0';
  if (ctx == NULL)
    return TERN_EINVAL;
  /* The slow part (file reads, key checks) runs outside the lock. */
  rc = set_load(&fresh, ctx, err, errcap);
  if (rc != 0)
    return rc;
  pthread_mutex_lock(&ctx->lock);
  old = ctx->cur;
  ctx->cur = fresh;
  pthread_mutex_unlock(&ctx->lock);
  set_unref(old);
  return 0;
}

/*
 * tern__tls_ctx_take(): the set of `from` becomes current under the lock
 * (as in reload); the file lists are swapped too, so a later reload reads
 * the new files. `from` leaves with the old set and lists and is freed.
 */
void tern__tls_ctx_take(struct tern__tls_ctx *ctx, struct tern__tls_ctx *from) {
  struct tls_set *old;
  size_t n;
  char **cf, **kf;

  if (ctx == NULL || from == NULL)
    return;
  pthread_mutex_lock(&ctx->lock);
  old = ctx->cur;
  ctx->cur = from->cur;
  pthread_mutex_unlock(&ctx->lock);
  from->cur = old;
  n = ctx->n, cf = ctx->cert_files, kf = ctx->key_files;
  ctx->n = from->n, ctx->cert_files = from->cert_files;
  ctx->key_files = from->key_files;
  from->n = n, from->cert_files = cf, from->key_files = kf;
  tern__tls_ctx_free(from);
}

/*
 * tern__tls_ctx_free() releases the certificate set. Connections still
 * alive keep their own reference and stay usable; the SSL_CTXs go away
 * with the last of them. NULL is a no-op. No tern__tls_new() or reload
 * may run concurrently with (or after) this call.
 */
void tern__tls_ctx_free(struct tern__tls_ctx *ctx) {
  if (ctx == NULL)
    return;
  set_unref(ctx->cur);
  pthread_mutex_destroy(&ctx->lock);
  for (size_t i = 0; i < ctx->n; i++) {
    tern__free(NULL, ctx->cert_files[i]);
    tern__free(NULL, ctx->key_files[i]);
  }
  tern__free(NULL, ctx->cert_files);
  tern__free(NULL, ctx->key_files);
  tern__free(NULL, ctx);
}

/* ---- connections ------------------------------------------------------ */

/*
 * tern__tls_new() starts the server side of one TLS connection with the
 * certificate set current now. Nothing is sent until the client's hello
 * has been fed and tern__tls_read() called. On success *out is owned by
 * the caller (tern__tls_free()); it holds a reference to the set, so it
 * may outlive `ctx`. Returns 0, TERN_EINVAL or TERN_ENOMEM (*out then
 * untouched).
 */
int tern__tls_new(struct tern__tls **out, struct tern__tls_ctx *ctx) {
  struct tern__tls *t;
  BIO *rbio = NULL, *wbio = NULL;

  if (out == NULL || ctx == NULL)
    return TERN_EINVAL;
  t = tern__calloc_array(NULL, 1, sizeof *t);
  if (t == NULL)
    return TERN_ENOMEM;
  t->err = "no error";

  pthread_mutex_lock(&ctx->lock);
  t->set = ctx->cur;
  atomic_fetch_add(&t->set->refs, 1);
  pthread_mutex_unlock(&ctx->lock);

  ERR_clear_error();
  t->ssl = SSL_new(t->set->ctx[0]);
  rbio = BIO_new(BIO_s_mem());
  wbio = BIO_new(BIO_s_mem());
  if (t->ssl == NULL || rbio == NULL || wbio == NULL) {
    BIO_free(rbio);
    BIO_free(wbio);
    SSL_free(t->ssl);
    set_unref(t->set);
    tern__free(NULL, t);
    ERR_clear_error();
    return TERN_ENOMEM;
  }
  SSL_set_bio(t->ssl, rbio, wbio); /* the SSL owns both now */
  SSL_set_app_data(t->ssl, t);
  SSL_set_accept_state(t->ssl);
  *out = t;
  return 0;
}

/*
 * tern__tls_free() frees a connection at any stage (before, during or
 * after the handshake, after an error), with any unsent output. It
 * sends nothing: call tern__tls_shutdown() and flush first for a clean
 * close. Drops the set reference (possibly freeing an old set). NULL is
 * a no-op.
 */
void tern__tls_free(struct tern__tls *t) {
  if (t == NULL)
    return;
  SSL_free(t->ssl); /* frees both BIOs */
  set_unref(t->set);
  tern__free(NULL, t);
}

/*
 * tern__tls_feed() appends ciphertext from the peer (copied; buf may be
 * reused at once). Then call tern__tls_read() until it returns 0.
 * Returns 0, or TERN_ENOMEM when the bytes could not be stored.
 */
int tern__tls_feed(struct tern__tls *t, const char *buf, size_t len) {
  BIO *rbio = SSL_get_rbio(t->ssl);

  while (len > 0) {
    int chunk = len > IO_CHUNK_MAX ? IO_CHUNK_MAX : (int)len;
    int w = BIO_write(rbio, buf, chunk);
    if (w <= 0) {
      ERR_clear_error();
      return TERN_ENOMEM;
    }
    buf += w;
    len -= (size_t)w;
  }
  if (BIO_ctrl_pending(rbio) > BIO_KEEP_MAX)
    t->rbio_big = true;
  return 0;
}

/* Swap a grown memory BIO for a fresh one once it is empty. */
static void shrink_bios(struct tern__tls *t) {
  if (t->rbio_big && BIO_ctrl_pending(SSL_get_rbio(t->ssl)) == 0) {
    BIO *b = BIO_new(BIO_s_mem());
    if (b != NULL) {
      SSL_set0_rbio(t->ssl, b); /* frees the old one */
      t->rbio_big = false;
    }
  }
  if (t->wbio_big && BIO_ctrl_pending(SSL_get_wbio(t->ssl)) == 0) {
    BIO *b = BIO_new(BIO_s_mem());
    if (b != NULL) {
      SSL_set0_wbio(t->ssl, b); /* frees the old one */
      t->wbio_big = false;
    }
  }
  ERR_clear_error();
}

/* Map a failed SSL call's result to ours, remembering the reason. */
static long ssl_result(struct tern__tls *t, int r) {
  unsigned long code;
  const char *reason;

  switch (SSL_get_error(t->ssl, r)) {
  case SSL_ERROR_WANT_READ:
  case SSL_ERROR_WANT_WRITE:
    ERR_clear_error();
    return 0;
  case SSL_ERROR_ZERO_RETURN:
    ERR_clear_error();
    t->closed = true;
    t->err = "peer sent close_notify";
    return TERN_ECLOSED;
  default:
    code = ERR_peek_error();
    reason = code != 0 ? ERR_reason_error_string(code) : NULL;
    t->err = reason != NULL ? reason : "TLS protocol error";
    t->failed = true;
    ERR_clear_error();
    return TERN_ETLS;
  }
}

/*
 * tern__tls_read() runs the handshake as far as the fed bytes allow, then
 * decrypts into buf[0..cap). Returns the number of plaintext bytes (> 0;
 * call again, more may be buffered), 0 when more ciphertext is needed
 * (send tern__tls_output() first: it may hold handshake bytes),
 * TERN_ECLOSED once the peer's close_notify arrived (writing is still
 * allowed), or TERN_ETLS on a fatal error (reason in tern__tls_error();
 * the output may hold an alert worth sending before closing). After
 * TERN_ETLS every call returns it again.
 */
long tern__tls_read(struct tern__tls *t, char *buf, size_t cap) {
  size_t n = 0;
  long rc;
  int r;

  if (t->failed)
    return TERN_ETLS;
  if (t->closed)
    return TERN_ECLOSED;
  ERR_clear_error();
  if (!SSL_is_init_finished(t->ssl)) {
    r = SSL_do_handshake(t->ssl);
    if (r != 1) {
      rc = ssl_result(t, r);
      shrink_bios(t);
      return rc;
    }
  }
  if (cap == 0)
    return 0;
  if (cap > IO_CHUNK_MAX)
    cap = IO_CHUNK_MAX;
  r = SSL_read_ex(t->ssl, buf, cap, &n);
  rc = r == 1 ? (long)n : ssl_result(t, r);
  shrink_bios(t);
  return rc;
}

/*
 * tern__tls_write() encrypts buf[0..len) into the output. Before the
 * handshake is complete it takes nothing and returns 0; after it, it
 * takes everything (the output grows without bound: drain it with
 * tern__tls_output()) and returns len. Returns TERN_ETLS after a fatal
 * error or after tern__tls_shutdown().
 */
long tern__tls_write(struct tern__tls *t, const char *buf, size_t len) {
  size_t done = 0;

  if (t->failed)
    return TERN_ETLS;
  if (!SSL_is_init_finished(t->ssl))
    return 0;
  if (len > LONG_MAX)
    len = LONG_MAX;
  ERR_clear_error();
  while (done < len) {
    size_t chunk = len - done, n = 0;
    int r;
    if (chunk > IO_CHUNK_MAX)
      chunk = IO_CHUNK_MAX;
    r = SSL_write_ex(t->ssl, buf + done, chunk, &n);
    if (r != 1) {
      long rc = ssl_result(t, r);
      if (rc < 0)
        return TERN_ETLS; /* ECLOSED cannot come from a write */
      break;
    }
    done += n;
  }
  if (BIO_ctrl_pending(SSL_get_wbio(t->ssl)) > BIO_KEEP_MAX)
    t->wbio_big = true;
  return (long)done;
}

/*
 * tern__tls_output() moves up to cap bytes of pending ciphertext
 * (handshake messages, records, alerts, close_notify) into buf and
 * returns how many; 0 when nothing is pending. Call until it returns 0.
 */
size_t tern__tls_output(struct tern__tls *t, char *buf, size_t cap) {
  int chunk = cap > IO_CHUNK_MAX ? IO_CHUNK_MAX : (int)cap;
  int r;

  if (chunk == 0)
    return 0;
  r = BIO_read(SSL_get_wbio(t->ssl), buf, chunk);
  if (r <= 0)
    return 0;
  shrink_bios(t);
  return (size_t)r;
}

/*
 * tern__tls_shutdown() queues our close_notify (RFC 8446 §6.1) in the
 * output; nothing more can be written afterwards. Does nothing before the
 * handshake has completed or after a fatal error (there is no TLS
 * session to close cleanly then; just close the socket).
 */
void tern__tls_shutdown(struct tern__tls *t) {
  if (t->failed || !SSL_is_init_finished(t->ssl))
    return;
  ERR_clear_error();
  (void)SSL_shutdown(t->ssl);
  ERR_clear_error();
}

/* tern__tls_handshake_done(): true once the handshake has completed
 * (stays true after close or error). */
bool tern__tls_handshake_done(const struct tern__tls *t) {
  return SSL_is_init_finished(t->ssl) == 1;
}

/* tern__tls_version(): the negotiated protocol ("TLSv1.2", "TLSv1.3"),
 * NULL until the handshake is done. Static string. */
const char *tern__tls_version(const struct tern__tls *t) {
  if (!SSL_is_init_finished(t->ssl))
    return NULL;
  return SSL_get_version(t->ssl);
}

/* tern__tls_cipher(): the negotiated suite's OpenSSL name (e.g.
 * "TLS_AES_256_GCM_SHA384"), NULL until the handshake is done. Valid as
 * long as the connection. */
const char *tern__tls_cipher(const struct tern__tls *t) {
  if (!SSL_is_init_finished(t->ssl))
    return NULL;
  return SSL_CIPHER_get_name(SSL_get_current_cipher(t->ssl));
}

/* tern__tls_sni(): the server name the client asked for, or NULL if it
 * sent none (or its hello has not been read yet). Valid as long as the
 * connection. */
const char *tern__tls_sni(const struct tern__tls *t) {
  return SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
}

/* tern__tls_error(): why the last TERN_ETLS/TERN_ECLOSED happened, as
 * OpenSSL's reason text (e.g. "unsupported protocol"); "no error" before
 * any. Never NULL; static storage. */
const char *tern__tls_error(const struct tern__tls *t) { return t->err; }

/* ---- client side ---------------------------------------------------------- */

/*
 * The client side uses the same struct tern__tls and the same feed /
 * read / write / output / shutdown functions; only the set-up differs.
 *
 * Verification. The SSL_CTX is in SSL_VERIFY_NONE mode on purpose: the
 * chain and the host name are still checked during the handshake
 * (OpenSSL always runs the verification and records its result), but a
 * failure does not abort the handshake. The caller asks
 * tern__tls_verify_result() once the handshake is done and decides —
 * refuse (the default), go on because the application said so (its
 * verify hook), or go on because verification is off. One code path for
 * every case, and the reason is always OpenSSL's own text. Nothing may
 * be sent over the connection before that decision.
 */
struct tern__tls_client_ctx {
  SSL_CTX *ctx;
};

int tern__tls_client_ctx_new(struct tern__tls_client_ctx **out,
                             const char *ca_file, const char *ca_dir,
                             char *err, size_t errcap) {
  struct tern__tls_client_ctx *c;

  if (err != NULL && errcap > 0)
    err[0] = '\0';
  if (out == NULL)
    return TERN_EINVAL;
  c = tern__calloc_array(NULL, 1, sizeof *c);
  if (c == NULL)
    return TERN_ENOMEM;
  ERR_clear_error();
  c->ctx = SSL_CTX_new(TLS_client_method());
  if (c->ctx == NULL) {
    set_err(err, errcap, NULL, "cannot create SSL_CTX");
    tern__free(NULL, c);
    return TERN_ENOMEM;
  }
  if (SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION) != 1 ||
      SSL_CTX_set_cipher_list(c->ctx, TLS12_CIPHERS) != 1) {
    set_err(err, errcap, NULL, "cannot set the TLS policy");
    goto fail;
  }
  SSL_CTX_set_options(c->ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_mode(c->ctx, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_verify(c->ctx, SSL_VERIFY_NONE, NULL); /* see above */
  /* DANE is enabled on the context so that any connection may use it
   * (tern__tls_client_dane()); connections that do not stay PKIX. */
  if (SSL_CTX_dane_enable(c->ctx) <= 0) {
    set_err(err, errcap, NULL, "cannot enable DANE");
    goto fail;
  }
  if (ca_file != NULL || ca_dir != NULL) {
    if (SSL_CTX_load_verify_locations(c->ctx, ca_file, ca_dir) != 1) {
      set_err(err, errcap, ca_file != NULL ? ca_file : ca_dir,
              "cannot load CA certificates");
      goto fail;
    }
  } else if (SSL_CTX_set_default_verify_paths(c->ctx) != 1) {
    set_err(err, errcap, NULL, "cannot load the system CA certificates");
    goto fail;
  }
  ERR_clear_error();
  *out = c;
  return 0;

fail:
  SSL_CTX_free(c->ctx);
  tern__free(NULL, c);
  ERR_clear_error();
  return TERN_ETLS;
}

void tern__tls_client_ctx_free(struct tern__tls_client_ctx *ctx) {
  if (ctx == NULL)
    return;
  SSL_CTX_free(ctx->ctx); /* connections hold their own reference */
  tern__free(NULL, ctx);
}

/* True when `name` is an IPv4 or IPv6 address literal. */
static bool is_ip_literal(const char *name) {
  ASN1_OCTET_STRING *ip = a2i_IPADDRESS(name);
  if (ip == NULL) {
    ERR_clear_error();
    return false;
  }
  ASN1_OCTET_STRING_free(ip);
  return true;
}

int tern__tls_client_new(struct tern__tls **out,
                         struct tern__tls_client_ctx *ctx,
                         const char *server_name) {
  struct tern__tls *t;
  BIO *rbio = NULL, *wbio = NULL;
  char name[256];

  if (out == NULL || ctx == NULL)
    return TERN_EINVAL;
  name[0] = '\0';
  if (server_name != NULL && server_name[0] != '\0') {
    /* "[::1]" -> "::1" */
    size_t len = strlen(server_name);
    if (server_name[0] == '[' && len >= 2 && server_name[len - 1] == ']') {
      server_name++;
      len -= 2;
    }
    if (len >= sizeof name)
      return TERN_EINVAL;
    memcpy(name, server_name, len);
    name[len] = '\0';
  }
  t = tern__calloc_array(NULL, 1, sizeof *t);
  if (t == NULL)
    return TERN_ENOMEM;
  t->err = "no error";
  ERR_clear_error();
  t->ssl = SSL_new(ctx->ctx);
  rbio = BIO_new(BIO_s_mem());
  wbio = BIO_new(BIO_s_mem());
  if (t->ssl == NULL || rbio == NULL || wbio == NULL) {
    BIO_free(rbio);
    BIO_free(wbio);
    SSL_free(t->ssl);
    tern__free(NULL, t);
    ERR_clear_error();
    return TERN_ENOMEM;
  }
  SSL_set_bio(t->ssl, rbio, wbio);
  SSL_set_app_data(t->ssl, t);
  SSL_set_connect_state(t->ssl);
  if (name[0] != '\0') {
    int ok;
    if (is_ip_literal(name)) {
      /* No SNI for addresses (RFC 6066 §3); match an IP SAN. */
      ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), name);
    } else {
      SSL_set_hostflags(t->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
      ok = SSL_set_tlsext_host_name(t->ssl, name) == 1 &&
           SSL_set1_host(t->ssl, name) == 1;
    }
    if (ok != 1) {
      SSL_free(t->ssl);
      tern__free(NULL, t);
      ERR_clear_error();
      return TERN_EINVAL;
    }
  }
  *out = t;
  return 0;
}

bool tern__tls_verify_result(const struct tern__tls *t, const char **why) {
  X509 *peer;
  long res;

  if (!SSL_is_init_finished(t->ssl)) {
    if (why != NULL)
      *why = "handshake not complete";
    return false;
  }
  peer = SSL_get0_peer_certificate(t->ssl);
  if (peer == NULL) {
    if (why != NULL)
      *why = "no certificate presented";
    return false;
  }
  res = SSL_get_verify_result(t->ssl);
  if (why != NULL)
    *why = res == X509_V_OK ? "ok" : X509_verify_cert_error_string(res);
  return res == X509_V_OK;
}

int tern__tls_client_dane(struct tern__tls *t, const char *base,
                          const struct tern_tlsa *recs, size_t n) {
  size_t usable = 0;

  ERR_clear_error();
  /* Sets SNI (when not set yet) and adds `base` to the names a DANE-TA
   * certificate may carry; the name given to tern__tls_client_new() (the
   * MX host) stays acceptable too (RFC 7672 §3.2.2). */
  if (SSL_dane_enable(t->ssl, base) <= 0) {
    ERR_clear_error();
    return TERN_ETLS;
  }
  /* RFC 7672 §3.1.1: DANE-EE(3) matches the key alone; no name check */
  SSL_dane_set_flags(t->ssl, DANE_FLAG_NO_DANE_EE_NAMECHECKS);
  for (size_t i = 0; i < n; i++) {
    const struct tern_tlsa *r = &recs[i];
    if (r->usage != 2 && r->usage != 3)
      continue; /* PKIX-TA/EE are not for SMTP (RFC 7672 §3.1.3) */
    if (SSL_dane_tlsa_add(t->ssl, r->usage, r->selector, r->mtype,
                          r->data, r->len) > 0)
      usable++;
  }
  ERR_clear_error();
  return usable ? 0 : TERN_EINVAL;
}

const char *tern__tls_dane_match(const struct tern__tls *t) {
  uint8_t usage = 0, sel = 0, mtype = 0;
  const unsigned char *data = NULL;
  size_t len = 0;
  if (!SSL_is_init_finished(t->ssl) ||
      SSL_get_verify_result(t->ssl) != X509_V_OK ||
      SSL_get0_dane_tlsa(t->ssl, &usage, &sel, &mtype, &data, &len) < 0)
    return NULL;
  return usage == 3 ? "dane-ee" : usage == 2 ? "dane-ta" : NULL;
}

/*
 * Client contexts are shared by every connection with the same CA
 * settings: loading the system CA store costs tens of milliseconds, far
 * too much per connection. SSL_CTX is safe to share between threads.
 */
struct shared_client_ctx {
  char *ca_file, *ca_dir; /* the key (NULL = system store) */
  struct tern__tls_client_ctx *ctx;
  unsigned refs;
  struct shared_client_ctx *next;
};
static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static struct shared_client_ctx *shared_list;

static bool same_path(const char *a, const char *b) {
  return a == b || (a && b && !strcmp(a, b));
}

static void shared_free(struct shared_client_ctx *e) {
  tern__tls_client_ctx_free(e->ctx);
  free(e->ca_file);
  free(e->ca_dir);
  free(e);
}

/* A new entry for the list, or NULL with rc set and err written. */
static struct shared_client_ctx *shared_new(const char *ca_file,
                                            const char *ca_dir, char *err,
                                            size_t cap, int *rc) {
  struct shared_client_ctx *e = calloc(1, sizeof *e);
  if (e) {
    e->ca_file = ca_file ? strdup(ca_file) : NULL;
    e->ca_dir = ca_dir ? strdup(ca_dir) : NULL;
    *rc = tern__tls_client_ctx_new(&e->ctx, ca_file, ca_dir, err, cap);
    if (!*rc && (!ca_file || e->ca_file) && (!ca_dir || e->ca_dir))
      return e;
    shared_free(e);
    if (*rc)
      return NULL;
  }
  snprintf(err, cap, "out of memory");
  *rc = TERN_ENOMEM;
  return NULL;
}

int tern__tls_client_ctx_acquire(struct tern__tls_client_ctx **out,
                                 const char *ca_file, const char *ca_dir,
                                 char *err, size_t cap) {
  struct shared_client_ctx *e;
  int rc = 0;
  pthread_mutex_lock(&shared_lock);
  for (e = shared_list; e; e = e->next)
    if (same_path(e->ca_file, ca_file) && same_path(e->ca_dir, ca_dir))
      break;
  if (!e && (e = shared_new(ca_file, ca_dir, err, cap, &rc)) != NULL) {
    e->next = shared_list;
    shared_list = e;
  }
  if (e) {
    e->refs++;
    *out = e->ctx;
  }
  pthread_mutex_unlock(&shared_lock);
  return rc;
}

void tern__tls_client_ctx_release(struct tern__tls_client_ctx *ctx) {
  struct shared_client_ctx **pp = &shared_list;
  if (!ctx)
    return;
  pthread_mutex_lock(&shared_lock);
  while (*pp && (*pp)->ctx != ctx)
    pp = &(*pp)->next;
  struct shared_client_ctx *e = *pp;
  if (e && --e->refs == 0) {
    *pp = e->next;
    shared_free(e);
  }
  pthread_mutex_unlock(&shared_lock);
}
