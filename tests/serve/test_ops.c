/*
 * tern serve's log (src/cli/log.c) and reload bookkeeping
 * (cfg_restart_keys in src/cli/config.c), without a running daemon.
 *
 * The log lines are captured by pointing stderr at a temporary file
 * around each call; exactly one line must come out.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "log.h"

#include <tern/net.h>

static int g_saved = -1;
static FILE *g_cap;

/* stderr into a temporary file until cap_off(), which returns the one
 * line written meanwhile without its time stamp ("2026-...Z "). */
static void cap_on(void) {
  g_cap = tmpfile();
  assert_non_null(g_cap);
  fflush(stderr);
  g_saved = dup(STDERR_FILENO);
  dup2(fileno(g_cap), STDERR_FILENO);
}

static char *cap_off(void) {
  static char line[8192];
  fflush(stderr);
  dup2(g_saved, STDERR_FILENO);
  close(g_saved);
  rewind(g_cap);
  char *got = fgets(line, sizeof line, g_cap);
  int more = fgetc(g_cap);
  fclose(g_cap);
  assert_non_null(got);
  assert_int_equal(more, EOF); /* one line, never two */
  size_t n = strlen(line);
  assert_true(n > 21 && line[n - 1] == '\n');
  line[n - 1] = '\0';
  assert_int_equal(line[20], ' ');
  return line + 21;
}

static void test_escape(void **state) {
  char b[64];
  (void)state;
  assert_string_equal(log_escape("plain", 5, b, sizeof b), "plain");
  assert_string_equal(log_escape("", 0, b, sizeof b), "\"\"");
  assert_string_equal(log_escape("a b", 3, b, sizeof b), "\"a b\"");
  assert_string_equal(log_escape("k=v", 3, b, sizeof b), "\"k=v\"");
  assert_string_equal(log_escape("q\"\\", 3, b, sizeof b), "\"q\\\"\\\\\"");
  assert_string_equal(log_escape("\r\n\t\x01\xff", 5, b, sizeof b),
                      "\"\\r\\n\\t\\x01\\xFF\"");
  /* cut at a whole escape, quotes still closed */
  assert_string_equal(log_escape("aaaa\"bbbb", 9, b, 8), "\"aaaa\"");
  assert_string_equal(log_escape("aaaa\"bbbb", 9, b, 9), "\"aaaa\\\"\"");
}

static void test_kv(void **state) {
  (void)state;
  cap_on();
  log_kv("session", "s1", "helo", "evil.example tls=TLSv1.3 auth=admin", "n",
         LOG_U(42), "none", NULL, NULL);
  assert_string_equal(cap_off(), "session=s1 helo=\"evil.example "
                                 "tls=TLSv1.3 auth=admin\" n=42 none=-");
  cap_on();
  log_kv("Bad Key", "x", NULL);
  assert_string_equal(cap_off(), "badkey=x");
}

static void test_list(void **state) {
  (void)state;
  struct log_line l;
  const char *rc[300];
  char names[300][16];
  for (int i = 0; i < 300; i++) {
    snprintf(names[i], sizeof names[i], "u%03d@x.example", i);
    rc[i] = names[i];
  }
  cap_on();
  log_line_init(&l);
  log_line_kv(&l, "event", "message");
  log_line_list(&l, "to", rc, 300);
  log_line_emit(&l);
  const char *ln = cap_off();
  /* every recipient, none cut, in one bare value */
  assert_non_null(strstr(ln, "to=<u000@x.example>,<u001@x.example>"));
  assert_non_null(strstr(ln, ",<u299@x.example>"));
  assert_null(strstr(ln, "..."));
}

static void test_printf(void **state) {
  (void)state;
  cap_on();
  logf_("session=%s event=forward hop=%s%s%s result=%d size=%llu "
        "detail=\"%s\" why=\"no file\"",
        "s2", "smtp://", "h", ":25", 250, 12345ULL, "Ok queued=1 x");
  assert_string_equal(cap_off(),
                      "session=s2 event=forward hop=smtp://h:25 result=250 "
                      "size=12345 detail=\"Ok queued=1 x\" why=\"no file\"");
  /* nothing an argument holds can start a key or a line */
  cap_on();
  logf_("helo=%s from=<%s> n=%5.2f p=%-4u| w=%*d %%", "a b=c\r\nevent=x",
        "\"x y\"@z", 1.5, 7u, 3, 9);
  assert_string_equal(cap_off(),
                      "helo=\"a b=c\\r\\nevent=x\" from=\"<\\\"x y\\\"@z>\" "
                      "n=\" 1.50\" p=\"7   |\" w=\"  9\" badkey=%");
  cap_on();
  logf_("%s", "k=v");
  assert_string_equal(cap_off(), "badkey=\"k=v\"");
}

static void test_restart_keys(void **state) {
  (void)state;
  struct cfg a, b;
  char err[256], keys[256];
  cfg_defaults(&a);
  cfg_defaults(&b);
  assert_int_equal(cfg_restart_keys(&a, &b, false, keys, sizeof keys), 0);
  assert_string_equal(keys, "");
  /* live keys are not listed */
  assert_int_equal(
      cfg_set(&b, "server", "max_message_size", "1M", err, sizeof err), 0);
  assert_int_equal(
      cfg_set(&b, "server", "hostname", "other.example", err, sizeof err), 0);
  assert_int_equal(cfg_restart_keys(&a, &b, false, keys, sizeof keys), 0);
  assert_int_equal(cfg_set(&b, "server", "workers", "4", err, sizeof err), 0);
  assert_int_equal(cfg_set(&b, "delivery", "fsync", "no", err, sizeof err), 0);
  assert_int_equal(cfg_restart_keys(&a, &b, false, keys, sizeof keys), 2);
  assert_string_equal(keys, "server.workers,delivery.fsync");
  /* a listener changed, one gone */
  free(b.listeners[0].url);
  b.listeners[0].url = strdup("smtp://127.0.0.1:2526");
  b.nlisteners = 1;
  free(b.listeners[1].name);
  free(b.listeners[1].url);
  b.listeners[1].name = b.listeners[1].url = NULL;
  assert_int_equal(cfg_restart_keys(&a, &b, false, keys, sizeof keys), 4);
  assert_string_equal(keys, "server.workers,delivery.fsync,"
                            "listener.default.url,listener.default-ipv6");
  /* --listen: listeners not compared */
  assert_int_equal(cfg_restart_keys(&a, &b, true, keys, sizeof keys), 2);
  /* a short buffer ends in "..." and still counts every key */
  assert_int_equal(cfg_restart_keys(&a, &b, false, keys, 20), 4);
  assert_string_equal(keys, "server.workers...");
  cfg_free(&a);
  cfg_free(&b);

  /* [queue]: not compared without a queue (the embedded default
   * delivers to a Maildir in the transaction) */
  cfg_defaults(&a);
  cfg_defaults(&b);
  static const char *const qkeys[][2] = {
      {"directory", "/var/spool/tern"}, {"control", "/run/tern/ctl"},
      {"lifetime", "1d"},      {"retry_min", "1m"},
      {"retry_max", "30m"},    {"delay_warning", "4h"},
      {"concurrency", "5"},    {"max_active", "10"},
      {"fsync", "no"},         {"postmaster", "pm@example.org"}};
  for (size_t i = 0; i < sizeof qkeys / sizeof qkeys[0]; i++)
    assert_int_equal(
        cfg_set(&b, "queue", qkeys[i][0], qkeys[i][1], err, sizeof err), 0);
  assert_int_equal(cfg_restart_keys(&a, &b, false, keys, sizeof keys), 0);
  /* with the queue in use on both sides, every one of them needs a
   * restart: the open queue keeps the options it was opened with */
  a.queue = 1;
  b.queue = 1;
  assert_int_equal(cfg_restart_keys(&a, &b, false, keys, sizeof keys), 10);
  assert_string_equal(keys, "queue.directory,queue.control,queue.lifetime,"
                            "queue.retry_min,queue.retry_max,"
                            "queue.delay_warning,queue.concurrency,"
                            "queue.max_active,queue.fsync,queue.postmaster");
  /* starting or stopping to queue: that one key */
  b.queue = 0;
  assert_int_equal(cfg_restart_keys(&a, &b, false, keys, sizeof keys), 1);
  assert_string_equal(keys, "delivery.queue");
  /* queue = yes where the target queues anyway changes nothing */
  cfg_free(&a);
  cfg_defaults(&a);
  cfg_free(&b);
  cfg_defaults(&b);
  a.target = b.target = CFG_SMTP;
  b.queue = 1;
  assert_int_equal(cfg_restart_keys(&a, &b, false, keys, sizeof keys), 0);
  cfg_free(&a);
  cfg_free(&b);
}

/* tern_server_update(): all or nothing, with the documented codes. */
static const char *g_certs;

static void test_server_update(void **state) {
  (void)state;
  char cert[512], key[512], sni[512], skey[512];
  snprintf(cert, sizeof cert, "%s/server.pem", g_certs);
  snprintf(key, sizeof key, "%s/server.key", g_certs);
  snprintf(sni, sizeof sni, "%s/sni.pem", g_certs);
  snprintf(skey, sizeof skey, "%s/sni.key", g_certs);
  struct tern_tls_cert one = {cert, key}, other = {sni, skey};
  struct tern_tls_cert missing = {sni, "/nonexistent/tern-test.key"};
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);

  struct tern_server_options o;
  struct tern_server_config sc;
  tern_server_options_init(&o);
  tern_server_config_init(&sc);
  o.session = &sc;
  sc.hostname = "one.example";
  o.tls_certs = &one;
  o.tls_cert_count = 1;
  struct tern_server *srv;
  assert_int_equal(tern_server_new(&srv, &loop, &o), 0);

  /* other files, other limits: applied */
  sc.hostname = "two.example";
  sc.max_message_size = 1234;
  o.max_connections = 7;
  o.tls_certs = &other;
  assert_int_equal(tern_server_update(srv, &o), 0);
  /* a key that does not load: TERN_ETLS naming the file */
  o.tls_certs = &missing;
  assert_int_equal(tern_server_update(srv, &o), TERN_ETLS);
  assert_non_null(strstr(tern_server_last_error(srv), "tern-test.key"));
  /* a bad session template */
  o.tls_certs = &one;
  sc.hostname = "bad host\r\n";
  assert_int_equal(tern_server_update(srv, &o), TERN_EINVAL);
  /* certificates cannot go away on a running server */
  sc.hostname = "three.example";
  o.tls_cert_count = 0;
  assert_int_equal(tern_server_update(srv, &o), TERN_ESTATE);
  assert_int_equal(tern_server_update(NULL, &o), TERN_EINVAL);
  tern_server_free(srv);

  /* nor be added to one created without */
  tern_server_options_init(&o);
  tern_server_config_init(&sc);
  o.session = &sc;
  assert_int_equal(tern_server_new(&srv, &loop, &o), 0);
  o.tls_certs = &one;
  o.tls_cert_count = 1;
  assert_int_equal(tern_server_update(srv, &o), TERN_ESTATE);
  o.tls_cert_count = 0;
  sc.hostname = "four.example";
  assert_int_equal(tern_server_update(srv, &o), 0);
  tern_server_free(srv);
  uv_loop_close(&loop);
}

int main(int argc, char **argv) {
  g_certs = argc > 1 ? argv[1] : "tests/certs";
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_escape),       cmocka_unit_test(test_kv),
      cmocka_unit_test(test_list),         cmocka_unit_test(test_printf),
      cmocka_unit_test(test_restart_keys), cmocka_unit_test(test_server_update),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
