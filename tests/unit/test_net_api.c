/*
 * The runtime's creation rules (include/tern/net.h, "Creation"): on any
 * failure *out is NULL and nothing needs freeing; size-tagged structs
 * from a newer header are taken only when their unknown tail is zero.
 * Allocation failures are injected by wrapping malloc, calloc, realloc
 * and strdup for the library's objects linked into this program
 * (tests/CMakeLists.txt: -Wl,--wrap=...); a leak on a failure path shows
 * under ASan/LeakSanitizer.
 */
/* clang-format off: cmocka needs these first */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include <stdlib.h>
#include <string.h>

#include "tern/net.h"

/* ---- allocation failure injection ------------------------------------- */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);

static long fail_at = -1; /* the allocation that fails (0-based); -1 none */
static long allocs;       /* allocations counted since arming */

static bool fail_now(void) { return fail_at >= 0 && allocs++ == fail_at; }

void *__wrap_malloc(size_t n) { return fail_now() ? NULL : __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t size) {
  return fail_now() ? NULL : __real_calloc(n, size);
}
void *__wrap_realloc(void *p, size_t n) {
  return fail_now() ? NULL : __real_realloc(p, n);
}
char *__wrap_strdup(const char *s) {
  return fail_now() ? NULL : __real_strdup(s);
}

static void arm(long n) {
  fail_at = n;
  allocs = 0;
}

#define JUNK ((void *)0x1)

/* ---- server -------------------------------------------------------------- */

static int check_password(struct tern_server_session *s, const char *authzid,
                          const char *user, const char *pass, void *ud) {
  (void)s, (void)authzid, (void)user, (void)pass, (void)ud;
  return TERN_EAUTH;
}

/* The rule: *out NULL on failure, the object on success. */
static int out_rule(int r, const void *out) {
  if (r)
    assert_null(out);
  else
    assert_non_null(out);
  return r;
}

static int server_new(uv_loop_t *loop, const struct tern_server_options *o,
                      struct tern_server **out) {
  *out = JUNK;
  int r = tern_server_new(out, loop, o);
  return out_rule(r, *out);
}

static int client_new(uv_loop_t *loop, const struct tern_client_options *o,
                      struct tern_client **out) {
  *out = JUNK;
  int r = tern_client_new(out, loop, o);
  return out_rule(r, *out);
}

/* Call make(arg) with allocation n failing, for n = 0, 1, ... until it
 * succeeds; every failure must be TERN_ENOMEM. Returns how many
 * allocations it takes. */
static long each_allocation_failing(int (*make)(void *arg), void *arg) {
  int r = -1;
  long n;
  for (n = 0; n < 1000 && r != 0; n++) {
    arm(n);
    r = make(arg);
    arm(-1);
    if (r)
      assert_int_equal(r, TERN_ENOMEM);
  }
  assert_int_equal(r, 0);
  return n;
}

static void test_server_bad_options(void **st) {
  (void)st;
  uv_loop_t loop;
  struct tern_server *srv;
  struct tern_server_options o;
  assert_int_equal(uv_loop_init(&loop), 0);

  assert_int_equal(tern_server_new(NULL, &loop, NULL), TERN_EINVAL);
  assert_int_equal(server_new(&loop, NULL, &srv), TERN_EINVAL);
  tern_server_options_init(&o);
  assert_int_equal(server_new(NULL, &o, &srv), TERN_EINVAL);
  o.size = 0;
  assert_int_equal(server_new(&loop, &o, &srv), TERN_EINVAL);

  /* a bad session template */
  struct tern_server_config sc;
  tern_server_options_init(&o);
  tern_server_config_init(&sc);
  sc.hostname = "bad host\r\n";
  o.session = &sc;
  assert_int_equal(server_new(&loop, &o, &srv), TERN_EINVAL);

  /* late failures: a network list, a certificate that does not load */
  char why[512] = "";
  tern_server_options_init(&o);
  o.xclient_networks = "127.0.0.0/8 not-a-net";
  assert_int_equal(server_new(&loop, &o, &srv), TERN_EINVAL);
  struct tern_tls_cert cert = {"/nonexistent/tern-api.pem",
                               "/nonexistent/tern-api.key"};
  tern_server_options_init(&o);
  o.tls_certs = &cert;
  o.tls_cert_count = 1;
  o.error = why;
  o.error_size = sizeof why;
  assert_int_equal(server_new(&loop, &o, &srv), TERN_ETLS);
  assert_non_null(strstr(why, "tern-api"));
  uv_loop_close(&loop);
}

/* A caller compiled against a newer header: larger structs. */
static void test_server_sizes(void **st) {
  (void)st;
  uv_loop_t loop;
  struct tern_server *srv;
  struct {
    struct tern_server_options o;
    unsigned char extra[16];
  } big;
  struct {
    struct tern_server_config c;
    unsigned char extra[16];
  } bigc;
  struct {
    struct tern_server_callbacks cb;
    unsigned char extra[16];
  } bigcb;
  assert_int_equal(uv_loop_init(&loop), 0);

  memset(&big, 0, sizeof big);
  tern_server_options_init(&big.o);
  big.o.size = sizeof big;
  assert_int_equal(server_new(&loop, &big.o, &srv), 0);
  tern_server_free(srv);
  big.extra[3] = 1; /* a field we do not know, set */
  assert_int_equal(server_new(&loop, &big.o, &srv), TERN_EINVAL);
  big.extra[3] = 0;

  memset(&bigc, 0, sizeof bigc);
  tern_server_config_init(&bigc.c);
  bigc.c.size = sizeof bigc;
  big.o.session = &bigc.c;
  assert_int_equal(server_new(&loop, &big.o, &srv), 0);
  tern_server_free(srv);
  bigc.extra[15] = 7;
  assert_int_equal(server_new(&loop, &big.o, &srv), TERN_EINVAL);
  big.o.session = NULL;

  memset(&bigcb, 0, sizeof bigcb);
  tern_server_callbacks_init(&bigcb.cb);
  bigcb.cb.size = sizeof bigcb;
  bigcb.extra[0] = 1;
  big.o.callbacks = &bigcb.cb;
  assert_int_equal(server_new(&loop, &big.o, &srv), TERN_EINVAL);
  big.o.callbacks = NULL;

  /* listener options: the same rule */
  struct {
    struct tern_listener_options lo;
    unsigned char extra[16];
  } biglo;
  assert_int_equal(server_new(&loop, &big.o, &srv), 0);
  memset(&biglo, 0, sizeof biglo);
  tern_listener_options_init(&biglo.lo);
  biglo.lo.size = sizeof biglo;
  biglo.extra[1] = 1;
  assert_int_equal(tern_server_listen(srv, "smtp://127.0.0.1:0", &biglo.lo),
                   TERN_EINVAL);
  tern_server_free(srv);
  uv_loop_close(&loop);
}

struct server_try {
  uv_loop_t *loop;
  const struct tern_server_options *o;
  struct tern_server *srv;
};

static int server_try(void *arg) {
  struct server_try *t = arg;
  return server_new(t->loop, t->o, &t->srv);
}

/* Every allocation of tern_server_new() fails in turn. */
static void test_server_oom(void **st) {
  (void)st;
  uv_loop_t loop;
  struct tern_server_options o;
  struct tern_server_config sc;
  struct tern_server_callbacks cb;
  struct tern_auth_callbacks auth;
  assert_int_equal(uv_loop_init(&loop), 0);
  tern_server_options_init(&o);
  tern_server_config_init(&sc);
  tern_server_callbacks_init(&cb);
  tern_auth_callbacks_init(&auth);
  sc.hostname = "mx.example";
  sc.banner = "ready";
  auth.check_password = check_password;
  o.session = &sc;
  o.callbacks = &cb;
  o.auth = &auth;
  o.auth_mechanisms = "PLAIN LOGIN";
  o.xclient_networks = "127.0.0.0/8 ::1/128";
  struct server_try t = {&loop, &o, NULL};
  assert_true(each_allocation_failing(server_try, &t) > 5);
  tern_server_free(t.srv);
  uv_loop_close(&loop);
}

/* ---- client -------------------------------------------------------------- */

static void test_client_bad_options(void **st) {
  (void)st;
  uv_loop_t loop;
  struct tern_client *cl;
  struct tern_client_options o;
  assert_int_equal(uv_loop_init(&loop), 0);

  assert_int_equal(tern_client_new(NULL, &loop, NULL), TERN_EINVAL);
  assert_int_equal(client_new(&loop, NULL, &cl), TERN_EINVAL);
  tern_client_options_init(&o);
  assert_int_equal(client_new(&loop, &o, &cl), TERN_EINVAL); /* no URL */
  o.url = "gopher://example.org";
  assert_int_equal(client_new(&loop, &o, &cl), TERN_EINVAL);
  o.url = "smtp://127.0.0.1:25";
  o.size = 0;
  assert_int_equal(client_new(&loop, &o, &cl), TERN_EINVAL);

  /* late: a CA file that does not load */
  tern_client_options_init(&o);
  o.url = "smtp://127.0.0.1:25";
  o.ca_file = "/nonexistent/tern-api-ca.pem";
  assert_int_equal(client_new(&loop, &o, &cl), TERN_ETLS);

  /* a newer header's structs */
  struct {
    struct tern_client_config c;
    unsigned char extra[16];
  } bigc;
  tern_client_options_init(&o);
  o.url = "smtp://127.0.0.1:25";
  memset(&bigc, 0, sizeof bigc);
  tern_client_config_init(&bigc.c);
  bigc.c.size = sizeof bigc;
  bigc.c.ehlo_name = "client.example";
  o.session = &bigc.c;
  assert_int_equal(client_new(&loop, &o, &cl), 0);
  tern_client_free(cl);
  bigc.extra[8] = 1;
  assert_int_equal(client_new(&loop, &o, &cl), TERN_EINVAL);
  uv_loop_close(&loop);
}

struct client_try {
  uv_loop_t *loop;
  const struct tern_client_options *o;
  struct tern_client *cl;
};

static int client_try(void *arg) {
  struct client_try *t = arg;
  return client_new(t->loop, t->o, &t->cl);
}

static void test_client_oom(void **st) {
  (void)st;
  uv_loop_t loop;
  struct tern_client_options o;
  struct tern_client_config cc;
  assert_int_equal(uv_loop_init(&loop), 0);
  tern_client_options_init(&o);
  tern_client_config_init(&cc);
  cc.ehlo_name = "client.example";
  o.session = &cc;
  o.url = "smtp+starttls://mail.example:587";
  o.auth_user = "user";
  o.auth_password = "secret";
  o.tls_server_name = "mail.example";
  struct client_try t = {&loop, &o, NULL};
  assert_true(each_allocation_failing(client_try, &t) > 3);
  tern_client_free(t.cl);
  uv_loop_close(&loop);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_server_bad_options),
      cmocka_unit_test(test_server_sizes),
      cmocka_unit_test(test_server_oom),
      cmocka_unit_test(test_client_bad_options),
      cmocka_unit_test(test_client_oom),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
