/*
 * The constructor rule, for every constructor of the core API
 * (tern_server_session_new, tern_client_session_new): "on failure *out
 * is NULL and nothing needs freeing". Each is made to fail every way it
 * can — a bad config, a bad size tag, each allocation failing in turn
 * through the allocator hooks — with *out pointing at garbage before the
 * call; afterwards *out must be NULL, every allocation must have been
 * freed, and no callback may have fired.
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

#include <tern/tern.h>

/* ---- a counting allocator that fails the n-th call ------------------------ */

struct counter {
  unsigned long calls, fail_at; /* fail_at 0: never */
  long live;                    /* blocks allocated and not freed */
};

static void *c_malloc(size_t n, void *ud) {
  struct counter *c = ud;
  if (++c->calls == c->fail_at)
    return NULL;
  void *p = malloc(n);
  if (p)
    c->live++;
  return p;
}

static void *c_realloc(void *p, size_t n, void *ud) {
  struct counter *c = ud;
  if (++c->calls == c->fail_at)
    return NULL;
  void *q = realloc(p, n);
  if (q && !p)
    c->live++;
  return q;
}

static void c_free(void *p, void *ud) {
  struct counter *c = ud;
  if (p)
    c->live--;
  free(p);
}

static void *const GARBAGE = (void *)0x5a5a5a5a;

/* Any callback firing during a failed _new() is a failure of the test. */
static int fired;

static int srv_connect(struct tern_server_session *s, struct tern_reply *r,
                       void *ud) {
  (void)s, (void)r, (void)ud;
  fired++;
  return TERN_REPLY_NOW;
}

static void srv_close(struct tern_server_session *s, void *ud) {
  (void)s, (void)ud;
  fired++;
}

static void cli_ready(struct tern_client_session *c, void *ud) {
  (void)c, (void)ud;
  fired++;
}

static void cli_error(struct tern_client_session *c, int err,
                      const struct tern_client_reply *r, void *ud) {
  (void)c, (void)err, (void)r, (void)ud;
  fired++;
}

/* ---- tern_server_session_new ------------------------------------------------ */

static int server_new(struct tern_server_session **out,
                      const struct tern_server_config *cfg) {
  struct tern_server_callbacks cb;
  tern_server_callbacks_init(&cb);
  cb.on_connect = srv_connect;
  cb.on_close = srv_close;
  *out = GARBAGE;
  return tern_server_session_new(out, cfg, &cb, NULL);
}

static void test_server_bad_config(void **st) {
  (void)st;
  struct tern_server_session *s;
  struct tern_server_config c;
  static const char *const hosts[] = {"", "bad host", "ctl\r\nx"};
  fired = 0;
  for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) {
    tern_server_config_init(&c);
    c.hostname = hosts[i];
    assert_int_equal(server_new(&s, &c), TERN_EINVAL);
    assert_null(s);
  }
  tern_server_config_init(&c);
  c.max_line = 511;
  assert_int_equal(server_new(&s, &c), TERN_EINVAL);
  assert_null(s);
  tern_server_config_init(&c);
  c.size = 1; /* not a size this library can read */
  assert_int_equal(server_new(&s, &c), TERN_EINVAL);
  assert_null(s);
  struct {
    struct tern_server_config c;
    unsigned char newer[8]; /* a field this library does not know */
  } big;
  memset(&big, 0, sizeof big);
  tern_server_config_init(&big.c);
  big.c.size = sizeof big;
  big.newer[0] = 1;
  assert_int_equal(server_new(&s, &big.c), TERN_EINVAL);
  assert_null(s);
  assert_int_equal(tern_server_session_new(NULL, NULL, NULL, NULL),
                   TERN_EINVAL);
  assert_int_equal(fired, 0);
}

/* Make a constructor fail at each allocation in turn, until it
 * succeeds; returns how many allocations it makes. */
static unsigned long each_allocation_fails(
    int (*make)(void **out, const struct tern_mem *mem),
    void (*destroy)(void *obj)) {
  unsigned long n;
  fired = 0;
  for (n = 1;; n++) {
    struct counter cnt = {0, n, 0};
    struct tern_mem mem = {c_malloc, c_realloc, c_free, &cnt};
    void *obj;
    int rc = make(&obj, &mem);
    if (rc == 0) { /* past the last allocation: done */
      assert_non_null(obj);
      assert_int_equal(fired, 0); /* a constructor calls nothing back */
      destroy(obj); /* a server session's free() fires on_close */
      assert_int_equal(cnt.live, 0);
      break;
    }
    assert_int_equal(rc, TERN_ENOMEM);
    assert_null(obj);
    assert_int_equal(cnt.live, 0); /* nothing needs freeing */
    assert_true(n < 50);
  }
  return n - 1;
}

static int server_make(void **out, const struct tern_mem *mem) {
  struct tern_server_config c;
  tern_server_config_init(&c);
  c.mem = mem;
  return server_new((struct tern_server_session **)out, &c);
}

static void server_free(void *s) { tern_server_session_free(s); }

static void test_server_each_allocation_fails(void **st) {
  (void)st;
  /* state, I/O buffers, envelope store */
  assert_int_equal(each_allocation_fails(server_make, server_free), 3);
}

/* ---- tern_client_session_new ------------------------------------------------ */

static int client_new(struct tern_client_session **out,
                      const struct tern_client_config *cfg) {
  struct tern_client_callbacks cb;
  tern_client_callbacks_init(&cb);
  cb.on_ready = cli_ready;
  cb.on_error = cli_error;
  *out = GARBAGE;
  return tern_client_session_new(out, cfg, &cb, NULL);
}

static void test_client_bad_config(void **st) {
  (void)st;
  struct tern_client_session *c;
  struct tern_client_config cfg;
  fired = 0;
  tern_client_config_init(&cfg);
  cfg.ehlo_name = "not a name";
  assert_int_equal(client_new(&c, &cfg), TERN_EINVAL);
  assert_null(c);
  tern_client_config_init(&cfg);
  cfg.auth_mechanism = "PLAIN\r\nQUIT";
  assert_int_equal(client_new(&c, &cfg), TERN_EINVAL);
  assert_null(c);
  tern_client_config_init(&cfg);
  cfg.max_recipients = 0;
  assert_int_equal(client_new(&c, &cfg), TERN_EINVAL);
  assert_null(c);
  tern_client_config_init(&cfg);
  cfg.size = 3;
  assert_int_equal(client_new(&c, &cfg), TERN_EINVAL);
  assert_null(c);
  assert_int_equal(tern_client_session_new(NULL, NULL, NULL, NULL),
                   TERN_EINVAL);
  assert_int_equal(fired, 0);
}

static int client_make(void **out, const struct tern_mem *mem) {
  struct tern_client_config cfg;
  tern_client_config_init(&cfg);
  cfg.mem = mem;
  return client_new((struct tern_client_session **)out, &cfg);
}

static void client_free(void *c) { tern_client_session_free(c); }

static void test_client_each_allocation_fails(void **st) {
  (void)st;
  assert_true(each_allocation_fails(client_make, client_free) >= 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_server_bad_config),
      cmocka_unit_test(test_server_each_allocation_fails),
      cmocka_unit_test(test_client_bad_config),
      cmocka_unit_test(test_client_each_allocation_fails),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
