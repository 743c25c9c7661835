/*
 * Unit tests for src/net/tls.c: a tern__tls server talks to a plain
 * OpenSSL client, both on memory BIOs, with the bytes shuttled by hand.
 *
 * Needs the certificates of tests/data/make-certs.sh: their directory is
 * argv[1] or $TERN_TEST_CERTS (CTest passes the latter; the "certs"
 * fixture makes them).
 */
/* clang-format off: cmocka needs these first */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "tern/common.h"
#include "tls.h"

static const char *certs_dir;

/* certs_dir/name, in one of a few rotating buffers. */
static const char *cert_path(const char *name) {
  static char bufs[8][1024];
  static unsigned next;
  char *b = bufs[next++ % 8];
  snprintf(b, sizeof bufs[0], "%s/%s", certs_dir, name);
  return b;
}

static struct tern__tls_ctx *ctx_of(const char *cert, const char *key) {
  struct tern_tls_cert c = {cert_path(cert), cert_path(key)};
  struct tern__tls_ctx *ctx = NULL;
  char err[512];
  int rc = tern__tls_ctx_new(&ctx, &c, 1, err, sizeof err);
  if (rc != 0)
    fail_msg("tern__tls_ctx_new: %s", err);
  return ctx;
}

/* The default (server.pem) plus the SNI certificate (sni.pem). */
static struct tern__tls_ctx *ctx_two(void) {
  struct tern_tls_cert c[2] = {
      {cert_path("server.pem"), cert_path("server.key")},
      {cert_path("sni.pem"), cert_path("sni.key")},
  };
  struct tern__tls_ctx *ctx = NULL;
  char err[512];
  int rc = tern__tls_ctx_new(&ctx, c, 2, err, sizeof err);
  if (rc != 0)
    fail_msg("tern__tls_ctx_new: %s", err);
  return ctx;
}

/* ---- the OpenSSL client ------------------------------------------------ */

/* A client that trusts the test CA. max_version 0 = no maximum. */
static SSL_CTX *client_ctx(int max_version) {
  SSL_CTX *c = SSL_CTX_new(TLS_client_method());
  assert_non_null(c);
  assert_int_equal(SSL_CTX_load_verify_locations(c, cert_path("ca.pem"), NULL),
                   1);
  SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
  if (max_version != 0)
    assert_int_equal(SSL_CTX_set_max_proto_version(c, max_version), 1);
  return c;
}

static SSL *client_new(SSL_CTX *c, const char *sni) {
  SSL *s = SSL_new(c);
  BIO *in = BIO_new(BIO_s_mem()), *out = BIO_new(BIO_s_mem());
  assert_non_null(s);
  assert_non_null(in);
  assert_non_null(out);
  SSL_set_bio(s, in, out);
  SSL_set_connect_state(s);
  if (sni != NULL)
    assert_int_equal(SSL_set_tlsext_host_name(s, sni), 1);
  return s;
}

/* Client → server: all pending ciphertext, in pieces of at most `chunk`,
 * each piece fed and read at once; plaintext goes to got[*have..). */
static long c2s(SSL *cli, struct tern__tls *srv, size_t chunk, char *got,
                size_t *have, size_t cap) {
  static char buf[70000];
  int n;
  if (chunk > sizeof buf)
    chunk = sizeof buf;
  while ((n = BIO_read(SSL_get_wbio(cli), buf, (int)chunk)) > 0) {
    assert_int_equal(tern__tls_feed(srv, buf, (size_t)n), 0);
    for (;;) {
      char tmp[16384];
      long r = tern__tls_read(srv, tmp, sizeof tmp);
      if (r <= 0) {
        if (r < 0)
          return r;
        break;
      }
      assert_non_null(got);
      assert_true(*have + (size_t)r <= cap);
      memcpy(got + *have, tmp, (size_t)r);
      *have += (size_t)r;
    }
  }
  return 0;
}

/* Server → client: all pending output. */
static void s2c(struct tern__tls *srv, SSL *cli) {
  char buf[5000]; /* smaller than a record: exercises partial reads */
  size_t n;
  while ((n = tern__tls_output(srv, buf, sizeof buf)) > 0)
    assert_int_equal(BIO_write(SSL_get_rbio(cli), buf, (int)n), (int)n);
}

/* Run the handshake to its end. Returns 0, the server's error, or
 * -1000 when the client failed first. */
static long handshake(struct tern__tls *srv, SSL *cli) {
  for (int round = 0; round < 20; round++) {
    int r = SSL_do_handshake(cli);
    long s;
    if (r != 1 && SSL_get_error(cli, r) != SSL_ERROR_WANT_READ) {
      /* Still deliver the client's alert: the server must see it. */
      s = c2s(cli, srv, SIZE_MAX, NULL, NULL, 0);
      ERR_clear_error();
      return s < 0 ? s : -1000;
    }
    s = c2s(cli, srv, SIZE_MAX, NULL, NULL, 0);
    s2c(srv, cli);
    if (s < 0)
      return s;
    if (r == 1 && tern__tls_handshake_done(srv))
      return 0;
  }
  fail_msg("handshake did not finish");
  return -1;
}

static void peer_cn(SSL *cli, char *cn, size_t cap) {
  X509 *peer = SSL_get0_peer_certificate(cli);
  assert_non_null(peer);
  assert_true(X509_NAME_get_text_by_NID(X509_get_subject_name(peer),
                                        NID_commonName, cn, (int)cap) > 0);
}

/* A connected pair with the given client ctx and SNI. */
struct pair {
  SSL_CTX *cctx;
  SSL *cli;
  struct tern__tls *srv;
};

static void pair_open(struct pair *p, struct tern__tls_ctx *ctx, int maxv,
                      const char *sni) {
  p->cctx = client_ctx(maxv);
  p->cli = client_new(p->cctx, sni);
  assert_int_equal(tern__tls_new(&p->srv, ctx), 0);
  assert_int_equal(handshake(p->srv, p->cli), 0);
  assert_int_equal(SSL_get_verify_result(p->cli), X509_V_OK);
}

static void pair_close(struct pair *p) {
  tern__tls_free(p->srv);
  SSL_free(p->cli);
  SSL_CTX_free(p->cctx);
}

/* ---- handshake and data ------------------------------------------------- */

static void echo(struct pair *p, size_t len, size_t chunk) {
  char *data = malloc(len), *got = malloc(len), *back = malloc(len);
  size_t have = 0, off = 0;
  assert_non_null(data);
  assert_non_null(got);
  assert_non_null(back);
  for (size_t i = 0; i < len; i++)
    data[i] = (char)(i * 7 + i / 251);

  /* client → server */
  while (off < len) {
    size_t n = 0;
    assert_int_equal(SSL_write_ex(p->cli, data + off, len - off, &n), 1);
    off += n;
  }
  assert_int_equal(c2s(p->cli, p->srv, chunk, got, &have, len), 0);
  assert_int_equal(have, len);
  assert_memory_equal(got, data, len);

  /* server → client */
  assert_int_equal(tern__tls_write(p->srv, got, len), (long)len);
  s2c(p->srv, p->cli);
  off = 0;
  while (off < len) {
    size_t n = 0;
    assert_int_equal(SSL_read_ex(p->cli, back + off, len - off, &n), 1);
    off += n;
  }
  assert_memory_equal(back, data, len);
  assert_int_equal(tern__tls_output(p->srv, back, len), 0);
  free(data);
  free(got);
  free(back);
}

static void test_handshake_and_echo(void **state) {
  struct tern__tls_ctx *ctx = ctx_of("server.pem", "server.key");
  struct pair p;
  char cn[256];
  (void)state;

  pair_open(&p, ctx, 0, "localhost");
  peer_cn(p.cli, cn, sizeof cn);
  assert_string_equal(cn, "localhost");
  assert_string_equal(tern__tls_version(p.srv), "TLSv1.3");
  assert_non_null(tern__tls_cipher(p.srv));
  assert_string_equal(tern__tls_cipher(p.srv),
                      SSL_CIPHER_get_name(SSL_get_current_cipher(p.cli)));
  assert_string_equal(tern__tls_sni(p.srv), "localhost");
  assert_string_equal(tern__tls_error(p.srv), "no error");

  echo(&p, 1, SIZE_MAX);
  echo(&p, 16384, SIZE_MAX);
  echo(&p, 16384, 1); /* one byte of ciphertext at a time */
  echo(&p, 1024 * 1024, 65536);
  echo(&p, 3, 2); /* after the big one (fresh BIOs) all still works */
  pair_close(&p);
  tern__tls_ctx_free(ctx);
}

static void test_tls12(void **state) {
  struct tern__tls_ctx *ctx = ctx_of("server.pem", "server.key");
  struct pair p;
  (void)state;

  pair_open(&p, ctx, TLS1_2_VERSION, NULL);
  assert_string_equal(tern__tls_version(p.srv), "TLSv1.2");
  /* forward secret AEAD only */
  assert_true(strncmp(tern__tls_cipher(p.srv), "ECDHE-", 6) == 0);
  assert_true(strstr(tern__tls_cipher(p.srv), "GCM") != NULL ||
              strstr(tern__tls_cipher(p.srv), "CHACHA20") != NULL);
  assert_null(tern__tls_sni(p.srv));
  echo(&p, 16384, 1000);
  pair_close(&p);
  tern__tls_ctx_free(ctx);
}

/* Resumption through session tickets, TLS 1.3 and 1.2. */
static void test_resumption(void **state) {
  struct tern__tls_ctx *ctx = ctx_of("server.pem", "server.key");
  (void)state;

  for (int v = 0; v < 2; v++) {
    SSL_CTX *cc = client_ctx(v == 0 ? 0 : TLS1_2_VERSION);
    SSL_SESSION *sess;
    struct tern__tls *t;
    SSL *cli;
    char buf[16];
    size_t n;

    SSL_CTX_set_session_cache_mode(cc, SSL_SESS_CACHE_CLIENT);
    cli = client_new(cc, "localhost");
    assert_int_equal(tern__tls_new(&t, ctx), 0);
    assert_int_equal(handshake(t, cli), 0);
    /* TLS 1.3 tickets come after the handshake: let the client read. */
    assert_int_equal(SSL_read_ex(cli, buf, sizeof buf, &n), 0);
    ERR_clear_error();
    assert_false(SSL_session_reused(cli));
    /* A client freed without close_notify drops its session. */
    assert_int_equal(SSL_shutdown(cli), 0);
    sess = SSL_get1_session(cli);
    assert_non_null(sess);
    assert_true(SSL_SESSION_is_resumable(sess));
    tern__tls_free(t);
    SSL_free(cli);

    cli = client_new(cc, "localhost");
    assert_int_equal(SSL_set_session(cli, sess), 1);
    assert_int_equal(tern__tls_new(&t, ctx), 0);
    assert_int_equal(handshake(t, cli), 0);
    if (!SSL_session_reused(cli))
      fail_msg("not resumed with %s", SSL_get_version(cli));
    tern__tls_free(t);
    SSL_free(cli);
    SSL_SESSION_free(sess);
    SSL_CTX_free(cc);
  }
  tern__tls_ctx_free(ctx);
}

/* Before the handshake: nothing to write, no facts yet. */
static void test_before_handshake(void **state) {
  struct tern__tls_ctx *ctx = ctx_of("server.pem", "server.key");
  struct tern__tls *t;
  char buf[64];
  (void)state;

  assert_int_equal(tern__tls_new(&t, ctx), 0);
  assert_false(tern__tls_handshake_done(t));
  assert_null(tern__tls_version(t));
  assert_null(tern__tls_cipher(t));
  assert_null(tern__tls_sni(t));
  assert_int_equal(tern__tls_write(t, "x", 1), 0);
  assert_int_equal(tern__tls_read(t, buf, sizeof buf), 0);
  assert_int_equal(tern__tls_output(t, buf, sizeof buf), 0);
  tern__tls_shutdown(t); /* no-op before the handshake */
  assert_int_equal(tern__tls_output(t, buf, sizeof buf), 0);
  assert_int_equal(tern__tls_feed(t, "", 0), 0);
  tern__tls_free(t);
  tern__tls_free(NULL);
  tern__tls_ctx_free(ctx);
  tern__tls_ctx_free(NULL);
}

/* ---- SNI ---------------------------------------------------------------- */

static void sni_case(struct tern__tls_ctx *ctx, int maxv, const char *sni,
                     const char *want_cn) {
  struct pair p;
  char cn[256];
  pair_open(&p, ctx, maxv, sni);
  peer_cn(p.cli, cn, sizeof cn);
  assert_string_equal(cn, want_cn);
  if (sni != NULL)
    assert_string_equal(tern__tls_sni(p.srv), sni);
  else
    assert_null(tern__tls_sni(p.srv));
  echo(&p, 100, SIZE_MAX);
  pair_close(&p);
}

static void test_sni(void **state) {
  struct tern__tls_ctx *ctx = ctx_two();
  (void)state;
  for (int i = 0; i < 2; i++) {
    int maxv = i == 0 ? 0 : TLS1_2_VERSION;
    sni_case(ctx, maxv, "mail.example.org", "mail.example.org");
    sni_case(ctx, maxv, "MAIL.Example.ORG", "mail.example.org");
    sni_case(ctx, maxv, "x.example.net", "mail.example.org"); /* wildcard */
    sni_case(ctx, maxv, "a.b.example.net", "localhost"); /* one label only */
    sni_case(ctx, maxv, "example.net", "localhost");
    sni_case(ctx, maxv, "unknown.test", "localhost");
    sni_case(ctx, maxv, "localhost", "localhost");
    sni_case(ctx, maxv, NULL, "localhost");
  }
  tern__tls_ctx_free(ctx);
}

/* A certificate without DNS names is matched by its CN. */
static void test_sni_cn_fallback(void **state) {
  char dir[] = "/tmp/tern-tls-XXXXXX", cert[600], key[600], err[512];
  struct tern__tls_ctx *ctx;
  EVP_PKEY *pk;
  X509 *x;
  FILE *f;
  (void)state;

  assert_non_null(mkdtemp(dir));
  snprintf(cert, sizeof cert, "%s/cn.pem", dir);
  snprintf(key, sizeof key, "%s/cn.key", dir);
  pk = EVP_EC_gen("P-256");
  assert_non_null(pk);
  x = X509_new();
  assert_non_null(x);
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                             (const unsigned char *)"cn-only.example.com", -1,
                             -1, 0);
  X509_set_issuer_name(x, X509_get_subject_name(x));
  X509_set_pubkey(x, pk);
  assert_true(X509_sign(x, pk, EVP_sha256()) > 0);
  f = fopen(cert, "w");
  assert_non_null(f);
  PEM_write_X509(f, x);
  fclose(f);
  f = fopen(key, "w");
  assert_non_null(f);
  PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL);
  fclose(f);

  struct tern_tls_cert c[2] = {
      {cert_path("server.pem"), cert_path("server.key")}, {cert, key}};
  assert_int_equal(tern__tls_ctx_new(&ctx, c, 2, err, sizeof err), 0);
  for (int i = 0; i < 2; i++) {
    SSL_CTX *cc = SSL_CTX_new(TLS_client_method()); /* no verification */
    SSL *cli = client_new(cc, i == 0 ? "cn-only.example.com" : "other.test");
    struct tern__tls *t;
    char cn[256];
    assert_int_equal(tern__tls_new(&t, ctx), 0);
    assert_int_equal(handshake(t, cli), 0);
    peer_cn(cli, cn, sizeof cn);
    assert_string_equal(cn, i == 0 ? "cn-only.example.com" : "localhost");
    tern__tls_free(t);
    SSL_free(cli);
    SSL_CTX_free(cc);
  }
  tern__tls_ctx_free(ctx);
  X509_free(x);
  EVP_PKEY_free(pk);
  unlink(cert);
  unlink(key);
  rmdir(dir);
}

/* ---- refusals ----------------------------------------------------------- */

static void test_tls11_refused(void **state) {
  struct tern__tls_ctx *ctx = ctx_of("server.pem", "server.key");
  SSL_CTX *cc = SSL_CTX_new(TLS_client_method());
  struct tern__tls *t;
  SSL *cli;
  char buf[64];
  (void)state;

  /* The client must be allowed to offer TLS 1.1 at all. */
  SSL_CTX_set_security_level(cc, 0);
  assert_int_equal(SSL_CTX_set_cipher_list(cc, "DEFAULT:@SECLEVEL=0"), 1);
  assert_int_equal(SSL_CTX_set_min_proto_version(cc, TLS1_VERSION), 1);
  assert_int_equal(SSL_CTX_set_max_proto_version(cc, TLS1_1_VERSION), 1);
  cli = client_new(cc, NULL);
  assert_int_equal(tern__tls_new(&t, ctx), 0);
  assert_int_equal(handshake(t, cli), TERN_ETLS);
  assert_string_equal(tern__tls_error(t), "unsupported protocol");
  assert_false(tern__tls_handshake_done(t));
  /* sticky: only free is useful now */
  assert_int_equal(tern__tls_read(t, buf, sizeof buf), TERN_ETLS);
  assert_int_equal(tern__tls_write(t, "x", 1), TERN_ETLS);
  tern__tls_shutdown(t);
  tern__tls_free(t);
  SSL_free(cli);
  SSL_CTX_free(cc);
  ERR_clear_error();
  tern__tls_ctx_free(ctx);
}

/* A TLS 1.2 client that offers only RSA key exchange gets nothing. */
static void test_rsa_kx_refused(void **state) {
  struct tern__tls_ctx *ctx = ctx_of("server.pem", "server.key");
  SSL_CTX *cc = client_ctx(TLS1_2_VERSION);
  struct tern__tls *t;
  SSL *cli;
  (void)state;

  assert_int_equal(SSL_CTX_set_cipher_list(cc, "AES128-GCM-SHA256"), 1);
  cli = client_new(cc, NULL);
  assert_int_equal(tern__tls_new(&t, ctx), 0);
  assert_int_equal(handshake(t, cli), TERN_ETLS);
  assert_string_equal(tern__tls_error(t), "no shared cipher");
  tern__tls_free(t);
  SSL_free(cli);
  SSL_CTX_free(cc);
  ERR_clear_error();
  tern__tls_ctx_free(ctx);
}

/* Garbage from the peer. */
static void test_garbage(void **state) {
  struct tern__tls_ctx *ctx = ctx_of("server.pem", "server.key");
  struct tern__tls *t;
  char buf[64];
  static const char junk[] = "EHLO example.com\r\n";
  (void)state;

  assert_int_equal(tern__tls_new(&t, ctx), 0);
  assert_int_equal(tern__tls_feed(t, junk, sizeof junk - 1), 0);
  assert_int_equal(tern__tls_read(t, buf, sizeof buf), TERN_ETLS);
  assert_true(strlen(tern__tls_error(t)) > 0);
  assert_string_not_equal(tern__tls_error(t), "no error");
  /* No stale error left behind for the next connection on this thread. */
  assert_int_equal(ERR_peek_error(), 0);
  tern__tls_free(t);
  tern__tls_ctx_free(ctx);
}

/* ---- close ----------------------------------------------------------------
 */

static void test_close_notify_from_client(void **state) {
  struct tern__tls_ctx *ctx = ctx_of("server.pem", "server.key");
  struct pair p;
  char buf[64];
  size_t n;
  (void)state;

  pair_open(&p, ctx, 0, NULL);
  echo(&p, 10, SIZE_MAX);
  assert_int_equal(SSL_shutdown(p.cli), 0);
  assert_int_equal(c2s(p.cli, p.srv, SIZE_MAX, NULL, NULL, 0), TERN_ECLOSED);
  assert_int_equal(tern__tls_read(p.srv, buf, sizeof buf), TERN_ECLOSED);
  assert_string_equal(tern__tls_error(p.srv), "peer sent close_notify");
  /* Half-close: we may still answer, then close our side. */
  assert_int_equal(tern__tls_write(p.srv, "bye", 3), 3);
  tern__tls_shutdown(p.srv);
  s2c(p.srv, p.cli);
  assert_int_equal(SSL_read_ex(p.cli, buf, sizeof buf, &n), 1);
  assert_memory_equal(buf, "bye", 3);
  assert_int_equal(SSL_shutdown(p.cli), 1); /* both sides closed */
  pair_close(&p);
  tern__tls_ctx_free(ctx);
}

static void test_close_notify_from_server(void **state) {
  struct tern__tls_ctx *ctx = ctx_of("server.pem", "server.key");
  struct pair p;
  char buf[64];
  size_t n;
  int r;
  (void)state;

  pair_open(&p, ctx, TLS1_2_VERSION, NULL);
  tern__tls_shutdown(p.srv);
  assert_int_equal(tern__tls_write(p.srv, "x", 1), TERN_ETLS);
  s2c(p.srv, p.cli);
  r = SSL_read_ex(p.cli, buf, sizeof buf, &n);
  assert_int_equal(r, 0);
  assert_int_equal(SSL_get_error(p.cli, r), SSL_ERROR_ZERO_RETURN);
  pair_close(&p);
  ERR_clear_error();
  tern__tls_ctx_free(ctx);
}

/* ---- freeing at every stage ------------------------------------------ */

static void test_free_at_every_stage(void **state) {
  struct tern__tls_ctx *ctx = ctx_of("server.pem", "server.key");
  (void)state;

  /* Stop after k rounds of the handshake, for TLS 1.2 and 1.3. */
  for (int v = 0; v < 2; v++) {
    for (int k = 0; k < 4; k++) {
      SSL_CTX *cc = client_ctx(v == 0 ? 0 : TLS1_2_VERSION);
      SSL *cli = client_new(cc, "localhost");
      struct tern__tls *t;
      assert_int_equal(tern__tls_new(&t, ctx), 0);
      for (int round = 0; round < k; round++) {
        SSL_do_handshake(cli);
        assert_int_equal(c2s(cli, t, SIZE_MAX, NULL, NULL, 0), 0);
        if (round + 1 < k)
          s2c(t, cli); /* else leave output unsent */
      }
      ERR_clear_error();
      tern__tls_free(t);
      SSL_free(cli);
      SSL_CTX_free(cc);
    }
  }
  /* With big unsent output and unread input. */
  {
    struct pair p;
    static char big[200000];
    pair_open(&p, ctx, 0, NULL);
    assert_int_equal(tern__tls_write(p.srv, big, sizeof big), (long)sizeof big);
    assert_int_equal(SSL_write(p.cli, big, sizeof big), (int)sizeof big);
    {
      static char ct[300000];
      int n = BIO_read(SSL_get_wbio(p.cli), ct, sizeof ct);
      assert_true(n > 0);
      assert_int_equal(tern__tls_feed(p.srv, ct, (size_t)n), 0);
    }
    pair_close(&p);
  }
  tern__tls_ctx_free(ctx);
}

/* A connection outlives the certificate set it started with. */
static void test_conn_outlives_ctx(void **state) {
  struct tern__tls_ctx *ctx = ctx_two();
  SSL_CTX *cc = client_ctx(0);
  SSL *cli = client_new(cc, "x.example.net");
  struct tern__tls *t;
  char cn[256];
  (void)state;

  assert_int_equal(tern__tls_new(&t, ctx), 0);
  tern__tls_ctx_free(ctx);
  assert_int_equal(handshake(t, cli), 0);
  peer_cn(cli, cn, sizeof cn);
  assert_string_equal(cn, "mail.example.org");
  tern__tls_free(t);
  SSL_free(cli);
  SSL_CTX_free(cc);
}

/* ---- loading errors ---------------------------------------------------- */

static void write_file(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, len, f), len);
  assert_int_equal(fclose(f), 0);
}

static void copy_file(const char *from, const char *to) {
  static char buf[65536];
  FILE *f = fopen(from, "rb");
  size_t n;
  assert_non_null(f);
  n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  write_file(to, buf, n);
}

static void expect_load_error(const char *cert, const char *key,
                              const char *must_name, const char *reason) {
  struct tern_tls_cert c = {cert, key};
  struct tern__tls_ctx *ctx = (void *)0x1;
  char err[512];
  int rc = tern__tls_ctx_new(&ctx, &c, 1, err, sizeof err);
  assert_int_equal(rc, TERN_ETLS);
  assert_ptr_equal(ctx, (void *)0x1); /* untouched */
  if (strstr(err, must_name) == NULL)
    fail_msg("error does not name %s: %s", must_name, err);
  if (reason != NULL && strstr(err, reason) == NULL)
    fail_msg("error does not say \"%s\": %s", reason, err);
  assert_int_equal(ERR_peek_error(), 0);
}

static void test_load_errors(void **state) {
  char dir[] = "/tmp/tern-tls-XXXXXX", junk[600], enc[600], both[600];
  char err[512];
  struct tern__tls_ctx *ctx = NULL;
  (void)state;

  assert_non_null(mkdtemp(dir));
  snprintf(junk, sizeof junk, "%s/junk.pem", dir);
  snprintf(enc, sizeof enc, "%s/enc.key", dir);
  snprintf(both, sizeof both, "%s/both.pem", dir);
  write_file(junk, "not a PEM file\n", 15);

  expect_load_error("/nonexistent/tern/cert.pem", cert_path("server.key"),
                    "/nonexistent/tern/cert.pem", "No such file");
  expect_load_error(cert_path("server.pem"), "/nonexistent/tern/key.pem",
                    "/nonexistent/tern/key.pem", "No such file");
  expect_load_error(junk, cert_path("server.key"), junk, NULL);
  expect_load_error(cert_path("server.pem"), junk, junk, NULL);
  /* a certificate where the key should be, and vice versa */
  expect_load_error(cert_path("server.pem"), cert_path("sni.pem"),
                    cert_path("sni.pem"), NULL);
  expect_load_error(cert_path("server.key"), cert_path("server.key"),
                    cert_path("server.key"), NULL);
  /* mismatched key: both files named */
  expect_load_error(cert_path("server.pem"), cert_path("sni.key"),
                    cert_path("sni.key"), "does not match");
  expect_load_error(cert_path("server.pem"), cert_path("sni.key"),
                    cert_path("server.pem"), NULL);

  /* An encrypted key fails (and never prompts for a pass phrase). */
  {
    FILE *f = fopen(cert_path("server.key"), "r");
    EVP_PKEY *pk;
    assert_non_null(f);
    pk = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(pk);
    f = fopen(enc, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_PrivateKey(f, pk, EVP_aes_128_cbc(),
                                          (unsigned char *)"secret", 6, NULL,
                                          NULL),
                     1);
    fclose(f);
    EVP_PKEY_free(pk);
    expect_load_error(cert_path("server.pem"), enc, enc, NULL);
  }

  /* The second of several bad: named, and nothing leaks. */
  {
    struct tern_tls_cert c[2] = {
        {cert_path("server.pem"), cert_path("server.key")},
        {cert_path("sni.pem"), junk},
    };
    assert_int_equal(tern__tls_ctx_new(&ctx, c, 2, err, sizeof err), TERN_ETLS);
    assert_non_null(strstr(err, junk));
    /* a tiny error buffer is still NUL-terminated */
    assert_int_equal(tern__tls_ctx_new(&ctx, c, 2, err, 8), TERN_ETLS);
    assert_int_equal(strlen(err), 7);
    assert_int_equal(tern__tls_ctx_new(&ctx, c, 2, NULL, 0), TERN_ETLS);
  }

  /* Invalid arguments. */
  {
    struct tern_tls_cert c = {NULL, NULL};
    assert_int_equal(tern__tls_ctx_new(&ctx, NULL, 0, err, sizeof err),
                     TERN_EINVAL);
    assert_true(strlen(err) > 0);
    assert_int_equal(tern__tls_ctx_new(&ctx, &c, 1, err, sizeof err),
                     TERN_EINVAL);
    assert_int_equal(tern__tls_ctx_new(NULL, &c, 1, NULL, 0), TERN_EINVAL);
  }

  /* Key and chain in one file, key_file NULL. */
  {
    static char buf[65536];
    size_t n = 0;
    FILE *f = fopen(cert_path("server.key"), "rb");
    struct tern_tls_cert c = {both, NULL};
    assert_non_null(f);
    n += fread(buf, 1, sizeof buf, f);
    fclose(f);
    f = fopen(cert_path("server.pem"), "rb");
    assert_non_null(f);
    n += fread(buf + n, 1, sizeof buf - n, f);
    fclose(f);
    write_file(both, buf, n);
    assert_int_equal(tern__tls_ctx_new(&ctx, &c, 1, err, sizeof err), 0);
    tern__tls_ctx_free(ctx);
  }

  unlink(junk);
  unlink(enc);
  unlink(both);
  rmdir(dir);
}

/* ---- reload ------------------------------------------------------------- */

static void expect_cn(struct tern__tls_ctx *ctx, const char *want) {
  struct pair p;
  char cn[256];
  pair_open(&p, ctx, 0, NULL);
  peer_cn(p.cli, cn, sizeof cn);
  assert_string_equal(cn, want);
  pair_close(&p);
}

static void test_reload(void **state) {
  char dir[] = "/tmp/tern-tls-XXXXXX", cert[600], key[600], err[512];
  struct tern__tls_ctx *ctx;
  struct tern__tls *old;
  SSL_CTX *cc;
  SSL *cli;
  char cn[256];
  (void)state;

  assert_non_null(mkdtemp(dir));
  snprintf(cert, sizeof cert, "%s/cert.pem", dir);
  snprintf(key, sizeof key, "%s/cert.key", dir);
  copy_file(cert_path("server.pem"), cert);
  copy_file(cert_path("server.key"), key);
  {
    struct tern_tls_cert c = {cert, key};
    assert_int_equal(tern__tls_ctx_new(&ctx, &c, 1, err, sizeof err), 0);
  }
  expect_cn(ctx, "localhost");

  /* A connection started before the reload keeps the old certificate. */
  cc = client_ctx(0);
  cli = client_new(cc, NULL);
  assert_int_equal(tern__tls_new(&old, ctx), 0);

  /* Same files, new contents. */
  copy_file(cert_path("sni.pem"), cert);
  copy_file(cert_path("sni.key"), key);
  assert_int_equal(tern__tls_ctx_reload(ctx, err, sizeof err), 0);
  expect_cn(ctx, "mail.example.org");

  assert_int_equal(handshake(old, cli), 0);
  peer_cn(cli, cn, sizeof cn);
  assert_string_equal(cn, "localhost");

  /* A broken file: the reload fails, names it, and the set stays. */
  write_file(key, "broken\n", 7);
  assert_int_equal(tern__tls_ctx_reload(ctx, err, sizeof err), TERN_ETLS);
  if (strstr(err, key) == NULL)
    fail_msg("error does not name %s: %s", key, err);
  expect_cn(ctx, "mail.example.org");

  /* A mismatched pair fails too. */
  copy_file(cert_path("server.key"), key);
  assert_int_equal(tern__tls_ctx_reload(ctx, err, sizeof err), TERN_ETLS);
  assert_non_null(strstr(err, "does not match"));
  expect_cn(ctx, "mail.example.org");

  /* A missing file. */
  unlink(key);
  assert_int_equal(tern__tls_ctx_reload(ctx, err, sizeof err), TERN_ETLS);
  assert_non_null(strstr(err, key));
  expect_cn(ctx, "mail.example.org");

  /* Fixed again. */
  copy_file(cert_path("server.key"), key);
  copy_file(cert_path("server.pem"), cert);
  assert_int_equal(tern__tls_ctx_reload(ctx, err, sizeof err), 0);
  expect_cn(ctx, "localhost");
  assert_int_equal(tern__tls_ctx_reload(NULL, err, sizeof err), TERN_EINVAL);

  /* The old set goes with its last connection (ASan checks). */
  tern__tls_ctx_free(ctx);
  tern__tls_free(old);
  SSL_free(cli);
  SSL_CTX_free(cc);
  unlink(cert);
  unlink(key);
  rmdir(dir);
}

struct reload_arg {
  struct tern__tls_ctx *ctx;
  int fails;
};

static void *reloader(void *p) {
  struct reload_arg *a = p;
  char err[512];
  for (int i = 0; i < 20; i++)
    if (tern__tls_ctx_reload(a->ctx, err, sizeof err) != 0)
      a->fails++;
  return NULL;
}

/* Reloads on other threads while connections come and go. */
static void test_reload_threads(void **state) {
  struct reload_arg a = {ctx_two(), 0}, b = {a.ctx, 0};
  pthread_t th1, th2;
  (void)state;

  assert_int_equal(pthread_create(&th1, NULL, reloader, &a), 0);
  assert_int_equal(pthread_create(&th2, NULL, reloader, &b), 0);
  for (int i = 0; i < 200; i++) {
    struct tern__tls *t;
    assert_int_equal(tern__tls_new(&t, a.ctx), 0);
    tern__tls_free(t);
  }
  for (int i = 0; i < 3; i++)
    sni_case(a.ctx, 0, "mail.example.org", "mail.example.org");
  pthread_join(th1, NULL);
  pthread_join(th2, NULL);
  assert_int_equal(a.fails + b.fails, 0);
  tern__tls_ctx_free(a.ctx);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_handshake_and_echo),
      cmocka_unit_test(test_tls12),
      cmocka_unit_test(test_resumption),
      cmocka_unit_test(test_before_handshake),
      cmocka_unit_test(test_sni),
      cmocka_unit_test(test_sni_cn_fallback),
      cmocka_unit_test(test_tls11_refused),
      cmocka_unit_test(test_rsa_kx_refused),
      cmocka_unit_test(test_garbage),
      cmocka_unit_test(test_close_notify_from_client),
      cmocka_unit_test(test_close_notify_from_server),
      cmocka_unit_test(test_free_at_every_stage),
      cmocka_unit_test(test_conn_outlives_ctx),
      cmocka_unit_test(test_load_errors),
      cmocka_unit_test(test_reload),
      cmocka_unit_test(test_reload_threads),
  };

  certs_dir = argc > 1 ? argv[1] : getenv("TERN_TEST_CERTS");
  if (certs_dir == NULL || certs_dir[0] == '\0') {
    fprintf(stderr, "test_tls: give the certificate directory "
                    "(tests/data/make-certs.sh DIR) as argv[1] or "
                    "TERN_TEST_CERTS\n");
    return 1;
  }
  return cmocka_run_group_tests(tests, NULL, NULL);
}
