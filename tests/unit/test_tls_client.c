/*
 * Unit tests for the client side of src/net/tls.c: a tern__tls client
 * talks to a tern__tls server, both on memory BIOs, bytes shuttled by
 * hand. Checks chain and host-name verification, IP names, SNI, and
 * that data flows both ways.
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

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tern/common.h"
#include "tls.h"

static const char *certs_dir;

static const char *cert_path(const char *name) {
  static char bufs[8][1024];
  static unsigned next;
  char *b = bufs[next++ % 8];
  snprintf(b, sizeof bufs[0], "%s/%s", certs_dir, name);
  return b;
}

static struct tern__tls_ctx *server_ctx(const char *base) {
  char cert[64], key[64];
  snprintf(cert, sizeof cert, "%s.pem", base);
  snprintf(key, sizeof key, "%s.key", base);
  struct tern_tls_cert c = {cert_path(cert), cert_path(key)};
  struct tern__tls_ctx *ctx = NULL;
  char err[512];
  if (tern__tls_ctx_new(&ctx, &c, 1, err, sizeof err) != 0)
    fail_msg("tern__tls_ctx_new: %s", err);
  return ctx;
}

static struct tern__tls_ctx *server_ctx_two(void) {
  struct tern_tls_cert c[2] = {
      {cert_path("server.pem"), cert_path("server.key")},
      {cert_path("sni.pem"), cert_path("sni.key")},
  };
  struct tern__tls_ctx *ctx = NULL;
  char err[512];
  if (tern__tls_ctx_new(&ctx, c, 2, err, sizeof err) != 0)
    fail_msg("tern__tls_ctx_new: %s", err);
  return ctx;
}

static struct tern__tls_client_ctx *client_ctx(const char *ca) {
  struct tern__tls_client_ctx *ctx = NULL;
  char err[512];
  int rc = tern__tls_client_ctx_new(&ctx, ca ? cert_path(ca) : NULL, NULL, err,
                                    sizeof err);
  if (rc != 0)
    fail_msg("tern__tls_client_ctx_new: %s", err);
  return ctx;
}

/* Move every pending byte from `a` to `b`; plaintext b decrypts goes to
 * got (if any). Returns b's read error, or 0. */
static long shuttle(struct tern__tls *a, struct tern__tls *b, char *got,
                    size_t *have, size_t cap) {
  char buf[3000]; /* smaller than a record: partial records */
  size_t n;
  long r = 0;
  while ((n = tern__tls_output(a, buf, sizeof buf)) > 0) {
    assert_int_equal(tern__tls_feed(b, buf, n), 0);
    for (;;) {
      char tmp[16384];
      r = tern__tls_read(b, tmp, sizeof tmp);
      if (r <= 0)
        break;
      assert_non_null(got);
      assert_true(*have + (size_t)r <= cap);
      memcpy(got + *have, tmp, (size_t)r);
      *have += (size_t)r;
    }
    if (r < 0)
      return r;
  }
  return 0;
}

/* Handshake to the end; returns 0 or the first error (client or server). */
static long handshake(struct tern__tls *cli, struct tern__tls *srv) {
  long r = tern__tls_read(cli, NULL, 0); /* ClientHello */
  if (r < 0)
    return r;
  for (int round = 0; round < 20; round++) {
    if (tern__tls_handshake_done(cli) && tern__tls_handshake_done(srv))
      return 0;
    r = shuttle(cli, srv, NULL, NULL, 0);
    if (r < 0)
      return r;
    r = tern__tls_read(srv, NULL, 0);
    if (r < 0)
      return r;
    r = shuttle(srv, cli, NULL, NULL, 0);
    if (r < 0)
      return r;
    r = tern__tls_read(cli, NULL, 0);
    if (r < 0)
      return r;
  }
  return tern__tls_handshake_done(cli) ? 0 : -1000;
}

struct pair {
  struct tern__tls_ctx *sctx;
  struct tern__tls_client_ctx *cctx;
  struct tern__tls *srv, *cli;
};

static void pair_open(struct pair *p, struct tern__tls_ctx *sctx,
                      struct tern__tls_client_ctx *cctx, const char *name) {
  p->sctx = sctx;
  p->cctx = cctx;
  assert_int_equal(tern__tls_new(&p->srv, sctx), 0);
  assert_int_equal(tern__tls_client_new(&p->cli, cctx, name), 0);
}

static void pair_close(struct pair *p) {
  tern__tls_free(p->cli);
  tern__tls_free(p->srv);
  tern__tls_client_ctx_free(p->cctx);
  tern__tls_ctx_free(p->sctx);
}

/* ---- tests ------------------------------------------------------------- */

static void test_good_chain(void **state) {
  struct pair p;
  const char *why = NULL;
  char got[256];
  size_t have = 0;
  (void)state;
  pair_open(&p, server_ctx("server"), client_ctx("ca.pem"), "localhost");
  assert_int_equal(handshake(p.cli, p.srv), 0);
  assert_true(tern__tls_verify_result(p.cli, &why));
  assert_string_equal(why, "ok");
  assert_non_null(tern__tls_version(p.cli));
  assert_string_equal(tern__tls_sni(p.srv), "localhost");

  /* data both ways, through the same functions as the server side */
  assert_int_equal(tern__tls_write(p.cli, "EHLO x\r\n", 8), 8);
  assert_int_equal(shuttle(p.cli, p.srv, got, &have, sizeof got), 0);
  assert_int_equal(have, 8);
  assert_memory_equal(got, "EHLO x\r\n", 8);
  have = 0;
  assert_int_equal(tern__tls_write(p.srv, "250 ok\r\n", 8), 8);
  assert_int_equal(shuttle(p.srv, p.cli, got, &have, sizeof got), 0);
  assert_int_equal(have, 8);
  assert_memory_equal(got, "250 ok\r\n", 8);

  /* close_notify from the client reaches the server */
  tern__tls_shutdown(p.cli);
  char buf[3000];
  size_t n = tern__tls_output(p.cli, buf, sizeof buf);
  assert_true(n > 0);
  assert_int_equal(tern__tls_feed(p.srv, buf, n), 0);
  assert_int_equal(tern__tls_read(p.srv, buf, sizeof buf), TERN_ECLOSED);
  pair_close(&p);
}

static void test_self_signed_refused(void **state) {
  struct pair p;
  const char *why = NULL;
  (void)state;
  pair_open(&p, server_ctx("self"), client_ctx("ca.pem"), "localhost");
  /* the handshake completes; the verdict is the caller's to act on */
  assert_int_equal(handshake(p.cli, p.srv), 0);
  assert_false(tern__tls_verify_result(p.cli, &why));
  assert_non_null(strstr(why, "self-signed"));
  pair_close(&p);
}

static void test_self_signed_with_its_cert(void **state) {
  struct pair p;
  const char *why = NULL;
  (void)state;
  pair_open(&p, server_ctx("self"), client_ctx("self.pem"), "localhost");
  assert_int_equal(handshake(p.cli, p.srv), 0);
  assert_true(tern__tls_verify_result(p.cli, &why));
  pair_close(&p);
}

static void test_system_store_refuses_test_ca(void **state) {
  struct pair p;
  const char *why = NULL;
  (void)state;
  pair_open(&p, server_ctx("server"), client_ctx(NULL), "localhost");
  assert_int_equal(handshake(p.cli, p.srv), 0);
  assert_false(tern__tls_verify_result(p.cli, &why));
  assert_string_not_equal(why, "ok");
  pair_close(&p);
}

static void test_wrong_host_name(void **state) {
  struct pair p;
  const char *why = NULL;
  (void)state;
  pair_open(&p, server_ctx("server"), client_ctx("ca.pem"), "wrong.example");
  assert_int_equal(handshake(p.cli, p.srv), 0);
  assert_false(tern__tls_verify_result(p.cli, &why));
  assert_non_null(strstr(why, "hostname mismatch"));
  pair_close(&p);

  /* the wildcard *.example.net matches one label only */
  pair_open(&p, server_ctx("sni"), client_ctx("ca.pem"), "a.b.example.net");
  assert_int_equal(handshake(p.cli, p.srv), 0);
  assert_false(tern__tls_verify_result(p.cli, &why));
  pair_close(&p);
  pair_open(&p, server_ctx("sni"), client_ctx("ca.pem"), "mx.example.net");
  assert_int_equal(handshake(p.cli, p.srv), 0);
  assert_true(tern__tls_verify_result(p.cli, &why));
  pair_close(&p);
}

static void test_ip_names(void **state) {
  struct pair p;
  const char *why = NULL;
  (void)state;
  pair_open(&p, server_ctx("server"), client_ctx("ca.pem"), "127.0.0.1");
  assert_int_equal(handshake(p.cli, p.srv), 0);
  assert_true(tern__tls_verify_result(p.cli, &why));
  assert_null(tern__tls_sni(p.srv)); /* no SNI for an address */
  pair_close(&p);

  pair_open(&p, server_ctx("server"), client_ctx("ca.pem"), "[::1]");
  assert_int_equal(handshake(p.cli, p.srv), 0);
  assert_true(tern__tls_verify_result(p.cli, &why));
  pair_close(&p);

  pair_open(&p, server_ctx("server"), client_ctx("ca.pem"), "10.1.2.3");
  assert_int_equal(handshake(p.cli, p.srv), 0);
  assert_false(tern__tls_verify_result(p.cli, &why));
  assert_non_null(strstr(why, "IP address mismatch"));
  pair_close(&p);
}

static void test_sni_sent(void **state) {
  struct pair p;
  const char *why = NULL;
  (void)state;
  /* the server picks sni.pem only if the client sent the name */
  pair_open(&p, server_ctx_two(), client_ctx("ca.pem"), "mail.example.org");
  assert_int_equal(handshake(p.cli, p.srv), 0);
  assert_string_equal(tern__tls_sni(p.srv), "mail.example.org");
  assert_true(tern__tls_verify_result(p.cli, &why));
  pair_close(&p);
}

static void test_expired(void **state) {
  struct pair p;
  const char *why = NULL;
  (void)state;
  pair_open(&p, server_ctx("expired"), client_ctx("ca.pem"), "localhost");
  assert_int_equal(handshake(p.cli, p.srv), 0);
  assert_false(tern__tls_verify_result(p.cli, &why));
  assert_non_null(strstr(why, "expired"));
  pair_close(&p);
}

static void test_no_name_no_host_check(void **state) {
  struct pair p;
  const char *why = NULL;
  (void)state;
  pair_open(&p, server_ctx("server"), client_ctx("ca.pem"), NULL);
  assert_int_equal(handshake(p.cli, p.srv), 0);
  assert_null(tern__tls_sni(p.srv));
  assert_true(tern__tls_verify_result(p.cli, &why)); /* chain only */
  pair_close(&p);
}

static void test_bad_ca_file(void **state) {
  struct tern__tls_client_ctx *ctx = NULL;
  char err[512];
  (void)state;
  assert_int_equal(tern__tls_client_ctx_new(&ctx, "/nonexistent/ca.pem", NULL,
                                            err, sizeof err),
                   TERN_ETLS);
  assert_null(ctx);
  assert_non_null(strstr(err, "/nonexistent/ca.pem"));
  /* a key is not a certificate */
  assert_int_equal(tern__tls_client_ctx_new(&ctx, cert_path("ca.key"), NULL,
                                            err, sizeof err),
                   TERN_ETLS);
}

static void test_verify_before_handshake(void **state) {
  struct tern__tls_client_ctx *cctx = client_ctx("ca.pem");
  struct tern__tls *t = NULL;
  const char *why = NULL;
  char buf[4096];
  (void)state;
  assert_int_equal(tern__tls_client_new(&t, cctx, "localhost"), 0);
  assert_false(tern__tls_verify_result(t, &why));
  assert_int_equal(tern__tls_read(t, buf, sizeof buf), 0);
  assert_true(tern__tls_output(t, buf, sizeof buf) > 0); /* ClientHello */
  assert_int_equal(tern__tls_write(t, "x", 1), 0); /* not before the end */
  /* garbage from the "server" fails the handshake with a reason */
  assert_int_equal(tern__tls_feed(t, "220 not TLS at all\r\n", 20), 0);
  assert_int_equal(tern__tls_read(t, buf, sizeof buf), TERN_ETLS);
  assert_string_not_equal(tern__tls_error(t), "no error");
  tern__tls_free(t);
  tern__tls_client_ctx_free(cctx);
}

int main(int argc, char **argv) {
  certs_dir = argc > 1 ? argv[1] : getenv("TERN_TEST_CERTS");
  if (certs_dir == NULL) {
    fprintf(stderr, "test_tls_client: set TERN_TEST_CERTS or pass the "
                    "certificate directory\n");
    return 1;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_good_chain),
      cmocka_unit_test(test_self_signed_refused),
      cmocka_unit_test(test_self_signed_with_its_cert),
      cmocka_unit_test(test_system_store_refuses_test_ca),
      cmocka_unit_test(test_wrong_host_name),
      cmocka_unit_test(test_ip_names),
      cmocka_unit_test(test_sni_sent),
      cmocka_unit_test(test_expired),
      cmocka_unit_test(test_no_name_no_host_check),
      cmocka_unit_test(test_bad_ca_file),
      cmocka_unit_test(test_verify_before_handshake),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
