/*
 * `tern serve` configuration and users file (src/cli/config.c, users.c).
 *
 * Run in tests/serve/configs (argv[1], or the current directory), so the
 * file names in messages and the relative paths in the files are short:
 *   - every bad-*.ini carries its expectation on the first line:
 *       "; expect: LINE: TEXT"   cfg_load fails with "FILE:LINE: " and
 *                                 a message containing TEXT;
 *       "; expect-check: TEXT"   cfg_load succeeds, cfg_check fails with
 *                                 "FILE: " and TEXT;
 *       "; expect-check: LINE: TEXT"  the same for a listener's check,
 *                                 which names its [listener] line;
 *   - every users-bad-* likewise with "# expect: LINE: TEXT";
 *   - good-*.ini are loaded and compared field by field.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <crypt.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "users.h"

#define ERR_CAP 1024

/* ---- expectation-driven files ------------------------------------------ */

struct expectation {
  bool check; /* cfg_check rather than cfg_load */
  int line;
  char text[512];
};

static void read_expectation(const char *file, char marker,
                             struct expectation *e) {
  char buf[600];
  FILE *f = fopen(file, "r");
  assert_non_null(f);
  assert_non_null(fgets(buf, sizeof buf, f));
  fclose(f);
  buf[strcspn(buf, "\n")] = '\0';
  memset(e, 0, sizeof *e);
  char load[32], check[32];
  snprintf(load, sizeof load, "%c expect: ", marker);
  snprintf(check, sizeof check, "%c expect-check: ", marker);
  if (strncmp(buf, check, strlen(check)) == 0) {
    /* "expect-check: [LINE: ]text": a listener's check names its line */
    const char *t = buf + strlen(check);
    char *end;
    long line = strtol(t, &end, 10);
    e->check = true;
    if (end != t && end[0] == ':' && end[1] == ' ') {
      e->line = (int)line;
      t = end + 2;
    }
    snprintf(e->text, sizeof e->text, "%s", t);
    return;
  }
  if (strncmp(buf, load, strlen(load)) != 0)
    fail_msg("%s: first line must be '%s' or '%s'", file, load, check);
  char *end;
  e->line = (int)strtol(buf + strlen(load), &end, 10);
  assert_true(e->line > 0);
  assert_true(end[0] == ':' && end[1] == ' ');
  snprintf(e->text, sizeof e->text, "%s", end + 2);
}

static void expect_message(const char *file, const char *err,
                           const struct expectation *e) {
  char prefix[600];
  if (e->check && !e->line)
    snprintf(prefix, sizeof prefix, "%s: ", file);
  else
    snprintf(prefix, sizeof prefix, "%s:%d: ", file, e->line);
  if (strncmp(err, prefix, strlen(prefix)) != 0)
    fail_msg("%s: message '%s' does not start with '%s'", file, err, prefix);
  if (strstr(err + strlen(prefix), e->text) == NULL)
    fail_msg("%s: message '%s' does not contain '%s'", file, err, e->text);
}

static void test_bad_config(void **state) {
  const char *file = *state;
  struct expectation e;
  struct cfg c;
  char err[ERR_CAP];
  read_expectation(file, ';', &e);
  cfg_defaults(&c);
  int rc = cfg_load(&c, file, err, sizeof err);
  if (e.check) {
    if (rc != 0)
      fail_msg("%s: cfg_load failed: %s", file, err);
    rc = cfg_check(&c, err, sizeof err);
    if (rc == 0)
      fail_msg("%s: cfg_check passed; expected '%s'", file, e.text);
  } else if (rc == 0) {
    fail_msg("%s: loaded; expected line %d: '%s'", file, e.line, e.text);
  }
  assert_int_equal(rc, -1);
  print_message("%s\n", err);
  expect_message(file, err, &e);
  cfg_free(&c);
}

static void test_bad_users(void **state) {
  const char *file = *state;
  struct expectation e;
  struct users *u = (struct users *)&e; /* must be reset to NULL */
  char err[ERR_CAP];
  read_expectation(file, '#', &e);
  assert_int_equal(users_load(file, &u, err, sizeof err), -1);
  assert_null(u);
  print_message("%s\n", err);
  expect_message(file, err, &e);
}

/* ---- good configurations --------------------------------------------------
 */

static void load_good(const char *file, struct cfg *c) {
  char err[ERR_CAP];
  cfg_defaults(c);
  if (cfg_load(c, file, err, sizeof err) != 0)
    fail_msg("%s: %s", file, err);
  if (cfg_check(c, err, sizeof err) != 0)
    fail_msg("%s: cfg_check: %s", file, err);
  assert_string_equal(c->path, file);
}

static void test_defaults(void **state) {
  struct cfg c;
  char err[ERR_CAP];
  (void)state;
  cfg_defaults(&c);
  assert_non_null(c.hostname);
  assert_true(c.hostname[0] != '\0');
  assert_int_equal(c.workers, 1);
  assert_int_equal(c.max_connections, 1000);
  assert_int_equal(c.max_per_ip, 0);
  assert_int_equal(c.greeting_delay_ms, 0);
  assert_int_equal(c.shutdown_timeout_ms, 30000);
  assert_true(c.max_message_size == 30u * 1024 * 1024);
  assert_int_equal(c.max_recipients, 1000);
  assert_int_equal(c.timeout_command_ms, 300000);
  assert_int_equal(c.timeout_data_ms, 300000);
  assert_int_equal(c.max_line_length, 0);
  assert_int_equal(c.max_junk_commands, 100);
  assert_null(c.xclient_networks);
  assert_null(c.user);
  assert_null(c.group);
  assert_string_equal(c.log, "stderr");
  assert_int_equal(c.nlisteners, 2);
  assert_string_equal(c.listeners[0].url, "smtp://127.0.0.1:2525");
  assert_string_equal(c.listeners[1].url, "smtp://[::1]:2525");
  assert_false(c.listeners[0].starttls);
  assert_int_equal(c.listeners[0].auth, CFG_AUTH_OFF);
  assert_int_equal(c.ncerts, 0);
  assert_null(c.users_file);
  assert_string_equal(c.auth_mechanisms, "PLAIN LOGIN");
  assert_true(c.accept_any);
  assert_int_equal(c.ndomains, 0);
  assert_true(c.relay_authenticated);
  assert_int_equal(c.target, CFG_MAILDIR);
  assert_string_equal(c.maildir, "./mail");
  assert_true(c.fsync);
  assert_null(c.command);
  assert_null(c.forward_url);
  assert_true(c.forward_verify);
  assert_null(c.forward_ca_file);
  assert_null(c.path);
  /* [queue]: the embedded default delivers to ./mail in the
   * transaction; the queue, when asked for, is ./queue made absolute
   * from the working directory (what the daemon logs and tern queue
   * finds) */
  assert_int_equal(c.queue, -1);
  assert_false(cfg_uses_queue(&c));
  char cwd[512], want[600];
  assert_non_null(getcwd(cwd, sizeof cwd));
  snprintf(want, sizeof want, "%s/queue", cwd);
  assert_string_equal(c.queue_dir, want);
  assert_int_equal(c.queue_lifetime_s, 5 * 24 * 3600);
  assert_int_equal(c.queue_retry_min_s, 300);
  assert_int_equal(c.queue_retry_max_s, 3600);
  assert_int_equal(c.queue_delay_warning_s, 0);
  assert_int_equal(c.queue_concurrency, 20);
  assert_int_equal(c.queue_max_active, 200);
  assert_true(c.queue_fsync);
  assert_null(c.queue_postmaster);
  assert_null(c.queue_control);
  char ctl[640];
  assert_int_equal(cfg_queue_control_path(&c, ctl, sizeof ctl), 0);
  snprintf(want, sizeof want, "%s/queue/control", cwd);
  assert_string_equal(ctl, want);
  assert_int_equal(cfg_queue_control_path(&c, ctl, 8), -1);
  assert_true(cfg_domain_accepted(&c, "anything.example", 16));
  assert_int_equal(cfg_check(&c, err, sizeof err), 0);
  cfg_free(&c);
  cfg_free(&c); /* idempotent after the first */
}

static void test_good_embedded(void **state) {
  struct cfg c;
  (void)state;
  load_good("good-embedded.ini", &c);
  assert_string_equal(c.hostname, "test.example.org");
  assert_int_equal(c.nlisteners, 2); /* the defaults stay */
  assert_string_equal(c.listeners[0].url, "smtp://127.0.0.1:2525");
  assert_true(c.accept_any);
  assert_string_equal(c.maildir, "./mail");
  cfg_free(&c);
}

static void test_good_mx(void **state) {
  struct cfg c;
  (void)state;
  load_good("good-mx.ini", &c);
  assert_string_equal(c.hostname, "mx.example.org");
  assert_int_equal(c.workers, 0);
  assert_int_equal(c.max_connections, 1000);
  assert_int_equal(c.max_per_ip, 20);
  assert_int_equal(c.greeting_delay_ms, 500);
  assert_true(c.max_message_size == 50u * 1024 * 1024);
  assert_string_equal(c.user, "tern");
  assert_string_equal(c.group, "tern");
  assert_string_equal(c.log, "syslog");
  assert_int_equal(c.nlisteners, 2);
  assert_string_equal(c.listeners[0].name, "mx");
  assert_string_equal(c.listeners[0].url, "smtp://0.0.0.0:25");
  assert_true(c.listeners[0].starttls);
  assert_false(c.listeners[0].proxy);
  assert_int_equal(c.listeners[0].auth, CFG_AUTH_OFF);
  assert_string_equal(c.listeners[1].name, "mx6");
  assert_string_equal(c.listeners[1].url, "smtp://[::]:25");
  assert_int_equal(c.ncerts, 2);
  assert_string_equal(c.certs[0].cert_file, "/etc/tern/mx.example.org.pem");
  assert_string_equal(c.certs[0].key_file, "/etc/tern/mx.example.org.key");
  assert_string_equal(c.certs[1].cert_file, "/etc/tern/mx-ecdsa.pem");
  assert_string_equal(c.certs[1].key_file, "/etc/tern/mx-ecdsa.key");
  assert_false(c.accept_any);
  assert_int_equal(c.ndomains, 2);
  assert_string_equal(c.domains[0], "example.org");
  assert_string_equal(c.domains[1], "example.net");
  assert_true(cfg_domain_accepted(&c, "EXAMPLE.org", 11));
  assert_true(cfg_domain_accepted(&c, "example.net.", 12));
  assert_false(cfg_domain_accepted(&c, "example.com", 11));
  assert_false(cfg_domain_accepted(&c, "sub.example.org", 15));
  assert_false(cfg_domain_accepted(&c, "example.or", 10));
  assert_int_equal(c.target, CFG_MAILDIR);
  assert_string_equal(c.maildir, "/var/mail/%d/%u");
  assert_true(c.fsync);
  cfg_free(&c);
}

static void test_good_submission(void **state) {
  struct cfg c;
  (void)state;
  load_good("good-submission.ini", &c);
  assert_int_equal(c.timeout_command_ms, 120000);
  assert_true(c.max_message_size == 25u * 1024 * 1024);
  assert_int_equal(c.nlisteners, 1);
  assert_string_equal(c.listeners[0].url, "smtp://0.0.0.0:587");
  assert_true(c.listeners[0].starttls);
  assert_int_equal(c.listeners[0].auth, CFG_AUTH_REQUIRED);
  assert_false(c.listeners[0].insecure_auth);
  assert_string_equal(c.users_file, "users-good");
  assert_string_equal(c.auth_mechanisms, "PLAIN LOGIN");
  assert_true(c.relay_authenticated);
  assert_int_equal(c.target, CFG_SMTP);
  assert_string_equal(c.forward_url, "smtp+starttls://relay.example.net:587");
  assert_true(c.forward_verify);
  assert_string_equal(c.forward_ca_file, "/etc/ssl/certs/ca-certificates.crt");
  cfg_free(&c);
}

static void test_good_submissions(void **state) {
  struct cfg c;
  (void)state;
  load_good("good-submissions.ini", &c);
  assert_int_equal(c.nlisteners, 1);
  assert_string_equal(c.listeners[0].name, "submissions");
  assert_string_equal(c.listeners[0].url, "smtps://*:465");
  assert_false(c.listeners[0].starttls);
  assert_int_equal(c.listeners[0].auth, CFG_AUTH_REQUIRED);
  assert_string_equal(c.auth_mechanisms, "LOGIN");
  assert_true(c.accept_any);
  assert_int_equal(c.target, CFG_PIPE);
  assert_string_equal(c.command, "/usr/bin/procmail -f %s -d %u");
  cfg_free(&c);
}

static void test_good_lmtp(void **state) {
  struct cfg c;
  (void)state;
  load_good("good-lmtp.ini", &c);
  assert_int_equal(c.workers, 1);
  assert_int_equal(c.timeout_data_ms, 600000);
  assert_int_equal(c.shutdown_timeout_ms, 60000);
  assert_int_equal(c.nlisteners, 1);
  assert_string_equal(c.listeners[0].url, "lmtp:///run/tern/lmtp.sock");
  assert_true(c.accept_any);
  assert_int_equal(c.ndomains, 0);
  assert_int_equal(c.target, CFG_LMTP);
  assert_string_equal(c.forward_url, "lmtp:///run/dovecot/lmtp");
  cfg_free(&c);
}

/* Issue 8 items 26 and 27: the line-length and junk-command limits. */
static void test_good_limits(void **state) {
  struct cfg c;
  (void)state;
  load_good("good-limits.ini", &c);
  assert_int_equal(c.max_line_length, 1000);
  assert_int_equal(c.max_junk_commands, 500);
  cfg_free(&c);
}


/* ---- Step 8: relay, [routes], [outbound], [tls_policy], [dkim NAME] ---- */

/* The destination cfg_route_dest gives `domain`. */
static const char *dest_of(const struct cfg *c, const char *domain) {
  static char buf[1200];
  const char *d = cfg_route_dest(c, domain, strlen(domain), buf, sizeof buf);
  assert_non_null(d);
  return d;
}

static void test_good_step8(void **state) {
  struct cfg c;
  (void)state;
  load_good("good-step8.ini", &c);
  /* [delivery] relay */
  assert_int_equal(c.target, CFG_MAILDIR);
  assert_true(c.relay_set);
  assert_string_equal(c.relay_url, "smtps://smarthost.example.net:465");
  assert_string_equal(c.relay_auth_user, "mail.example.org");
  assert_string_equal(c.relay_auth_password, "secret-of-the-relay");
  assert_true(c.relay_verify);
  assert_string_equal(c.relay_ca_file, "dkim-ed25519.pem");
  assert_true(cfg_uses_outbound(&c));
  assert_true(cfg_uses_queue(&c)); /* maildir, but mail leaves */
  /* [routes]: lower case, no trailing dot, in file order */
  assert_int_equal(c.nroutes, 8);
  assert_string_equal(c.routes[0].domain, "partner.example");
  assert_int_equal(c.routes[0].kind, CFG_ROUTE_URL);
  assert_string_equal(c.routes[0].url, "smtp://10.1.2.3:25");
  assert_int_equal(c.routes[0].line, 36);
  assert_string_equal(c.routes[1].domain, ".partner.example");
  assert_string_equal(c.routes[2].url, "lmtp:///run/mailman/lmtp");
  assert_int_equal(c.routes[3].kind, CFG_ROUTE_LOCAL);
  assert_null(c.routes[3].url);
  assert_int_equal(c.routes[4].kind, CFG_ROUTE_MX);
  assert_string_equal(c.routes[7].domain, "*");
  /* [outbound] */
  assert_string_equal(c.out.helo, "out.example.org");
  assert_string_equal(c.out.bind, "192.0.2.10");
  assert_string_equal(c.out.bind6, "2001:db8::10");
  assert_string_equal(c.out.resolver, "127.0.0.53:53, [::1]:5353 192.0.2.53");
  assert_string_equal(c.out.trust_anchor, "dkim-ed25519.pem");
  assert_false(c.out.dnssec);
  assert_false(c.out.mta_sts);
  assert_string_equal(c.out.mta_sts_ca_file, "dkim-ed25519.pem");
  assert_string_equal(c.out.ca_file, "dkim-ed25519.pem");
  assert_int_equal(c.out.port, 2525);
  assert_int_equal(c.out.connect_timeout_ms, 10000);
  assert_int_equal(c.out.timeout_ms, 120000);
  /* [tls_policy]: exact, then the longest suffix, then "*" */
  assert_int_equal(c.ntls_policies, 4);
  assert_int_equal(cfg_tls_policy_for(&c, "EXAMPLE.net.", 12),
                   TERN_TLS_POLICY_VERIFY);
  assert_int_equal(cfg_tls_policy_for(&c, "a.example.net", 13),
                   TERN_TLS_POLICY_MAY);
  assert_int_equal(cfg_tls_policy_for(&c, "mx.bank.example", 15),
                   TERN_TLS_POLICY_DANE);
  assert_int_equal(cfg_tls_policy_for(&c, "bank.example", 12),
                   TERN_TLS_POLICY_MAY);
  assert_int_equal(cfg_tls_policy_for(&c, "legacy.example", 14),
                   TERN_TLS_POLICY_NONE);
  /* [dkim NAME] */
  assert_int_equal(c.ndkim, 2);
  assert_string_equal(c.dkim_name[0], "ed");
  assert_int_equal(c.dkim_line[0], 65);
  assert_string_equal(c.dkim[0].domain, "example.org");
  assert_string_equal(c.dkim[0].selector, "2026e");
  assert_string_equal(c.dkim[0].key_file, "dkim-ed25519.pem");
  assert_null(c.dkim[0].headers);
  assert_string_equal(c.dkim[1].domain, ".example.org");
  assert_string_equal(c.dkim[1].selector, "s1.sub");
  assert_string_equal(c.dkim[1].headers, "from:to:subject:date:message-id");
  cfg_free(&c);
}

/* The routing decision: exact, the longest ".suffix", "*", then the
 * built-in rule (accepted -> local, others -> relay). */
static void test_route_dest(void **state) {
  struct cfg c;
  char small[8];
  (void)state;
  load_good("good-step8.ini", &c);
  assert_string_equal(dest_of(&c, "partner.example"),
                      "url:smtp://10.1.2.3:25");
  assert_string_equal(dest_of(&c, "PARTNER.example."),
                      "url:smtp://10.1.2.3:25");
  assert_string_equal(dest_of(&c, "eu.partner.example"),
                      "url:smtp+starttls://[2001:db8::25]:587");
  assert_string_equal(dest_of(&c, "lists.example.org"),
                      "url:lmtp:///run/mailman/lmtp");
  assert_string_equal(dest_of(&c, "example.org"), "local"); /* accepted */
  assert_string_equal(dest_of(&c, "a.example.org"), "local"); /* suffix */
  assert_string_equal(dest_of(&c, "Backup.Example"), "mx:backup.example");
  assert_string_equal(dest_of(&c, "a.SUB.example"), "mx:a.sub.example");
  assert_string_equal(dest_of(&c, "x.deep.sub.example"),
                      "mx:x.deep.sub.example");
  assert_string_equal(dest_of(&c, "deep.sub.example"), "local");
  assert_string_equal(dest_of(&c, "sub.example"), "mx:sub.example"); /* "*" */
  assert_string_equal(dest_of(&c, "Gmail.COM"), "mx:gmail.com");
  assert_string_equal(dest_of(&c, "example.net"), "local"); /* accepted */
  assert_string_equal(dest_of(&c, ""), "local"); /* <postmaster>, not "*" */
  assert_null(cfg_route_find(&c, "", 0));
  /* accepted: [domains] alone; a [routes] line only chooses where mail
   * goes (it opened an unauthenticated relay to its domain) */
  assert_false(cfg_domain_accepted(&c, "backup.example", 14));
  assert_false(cfg_domain_accepted(&c, "x.partner.example", 17));
  assert_true(cfg_domain_accepted(&c, "example.net", 11));
  assert_false(cfg_domain_accepted(&c, "partner.example.com", 19));
  assert_false(cfg_domain_accepted(&c, "sub.example", 11));
  assert_false(cfg_domain_accepted(&c, "gmail.com", 9));
  assert_null(cfg_route_dest(&c, "backup.example", 14, small, sizeof small));
  assert_non_null(cfg_route_find(&c, "gmail.com", 9));
  /* no "*": accepted -> local, the others -> the relay URL */
  free(c.routes[7].domain);
  c.nroutes = 7;
  assert_string_equal(dest_of(&c, "gmail.com"), "smarthost");
  assert_string_equal(dest_of(&c, "example.net"), "local");
  assert_null(cfg_route_find(&c, "gmail.com", 9));
  /* relay = mx */
  free(c.relay_url);
  c.relay_url = NULL;
  assert_string_equal(dest_of(&c, "gmail.com"), "mx:gmail.com");
  cfg_free(&c);
}

/* What tern serve --check prints of the routing. */
static void test_summary(void **state) {
  struct cfg c;
  char *text = NULL;
  size_t n = 0;
  (void)state;
  load_good("good-step8.ini", &c);
  FILE *f = open_memstream(&text, &n);
  assert_non_null(f);
  cfg_print_summary(&c, f);
  fclose(f);
  print_message("%s", text);
  assert_non_null(strstr(text, "  delivery: target=maildir queue=yes "
                               "relay=smtps://smarthost.example.net:465\n"));
  assert_non_null(
      strstr(text, "  route partner.example: smtp://10.1.2.3:25\n"));
  assert_non_null(strstr(text, "  route *: mx\n"));
  assert_non_null(strstr(text, "  tls_policy .bank.example: dane\n"));
  assert_non_null(strstr(text, "  dkim ed: d=example.org s=2026e "
                               "key=dkim-ed25519.pem\n"));
  assert_non_null(strstr(text, "  outbound: helo=out.example.org resolver="
                               "127.0.0.53:53, [::1]:5353 192.0.2.53 "
                               "dnssec=no trust_anchor=none mta_sts=no "
                               "port=2525\n"));
  free(text);
  cfg_free(&c);
  load_good("good-mx.ini", &c); /* nothing leaves */
  f = open_memstream(&text, &n);
  cfg_print_summary(&c, f);
  fclose(f);
  assert_string_equal(text, "  delivery: target=maildir queue=no "
                            "relay=local\n");
  free(text);
  cfg_free(&c);
}

/* target = mx: local delivery is off; accepted domains go to their MX
 * too; the queue is on by default. */
static void test_target_mx(void **state) {
  struct cfg c;
  (void)state;
  load_good("good-target-mx.ini", &c);
  assert_int_equal(c.target, CFG_MX);
  assert_true(cfg_uses_queue(&c));
  assert_string_equal(dest_of(&c, "Example.org"), "mx:example.org");
  assert_string_equal(dest_of(&c, "elsewhere.example"),
                      "mx:elsewhere.example");
  free(c.hostname);
  c.hostname = strdup("host.example");
  assert_string_equal(dest_of(&c, ""), "mx:host.example"); /* <postmaster> */
  assert_int_equal(c.out.port, 25); /* [outbound] defaults */
  assert_true(c.out.dnssec);
  assert_true(c.out.mta_sts);
  assert_int_equal(c.out.connect_timeout_ms, 30000);
  assert_int_equal(c.out.timeout_ms, 300000);
  assert_null(c.out.helo);
  assert_null(c.relay_url);
  assert_false(c.relay_set);
  assert_true(c.outbound_keys); /* target = mx */
  assert_true(cfg_relay_is_mx(&c));
  assert_true(c.relay_verify);
  cfg_free(&c);
}

/* Configurations without the keys of outbound mail route as before:
 * everything that is accepted goes to the target (an authenticated
 * user's mail to another domain too: Maildir, pipe, or Step 7's next
 * hop). Any such key ([outbound] here) makes [delivery] relay default
 * to mx, and the queue follows when users can relay; relay = local
 * keeps the old way. */
static void test_route_compat(void **state) {
  struct cfg c;
  char err[ERR_CAP];
  (void)state;
  load_good("good-mx.ini", &c); /* maildir, accept example.org */
  assert_false(cfg_uses_outbound(&c));
  assert_false(cfg_uses_queue(&c));
  assert_false(cfg_relay_is_mx(&c));
  assert_string_equal(dest_of(&c, "example.org"), "local");
  assert_string_equal(dest_of(&c, "gmail.com"), "local");
  assert_int_equal(cfg_set(&c, "delivery", "queue", "yes", err, sizeof err), 0);
  assert_string_equal(dest_of(&c, "gmail.com"), "local");
  cfg_free(&c);

  load_good("good-submission.ini", &c); /* smtp target, AUTH users */
  assert_string_equal(dest_of(&c, "example.org"), "local");
  assert_string_equal(dest_of(&c, "gmail.com"), "local"); /* the smarthost */
  assert_false(cfg_uses_outbound(&c));
  assert_int_equal(cfg_set(&c, "outbound", "port", "2526", err, sizeof err), 0);
  assert_true(c.outbound_keys);
  assert_int_equal(c.out.port, 2526);
  assert_true(cfg_relay_is_mx(&c));
  assert_true(cfg_uses_outbound(&c));
  assert_string_equal(dest_of(&c, "gmail.com"), "mx:gmail.com");
  assert_int_equal(cfg_set(&c, "delivery", "relay", "local", err, sizeof err),
                   0);
  assert_false(cfg_relay_is_mx(&c));
  assert_false(cfg_uses_outbound(&c));
  assert_string_equal(dest_of(&c, "gmail.com"), "local");
  cfg_free(&c);

  /* an inbound MX with the queue and [outbound], nobody to relay for:
   * the queue's bounces to senders elsewhere leave through MX */
  load_good("good-mx.ini", &c);
  assert_int_equal(cfg_set(&c, "outbound", "helo", "mx.example.org", err,
                           sizeof err), 0);
  assert_false(cfg_uses_outbound(&c));
  assert_false(cfg_uses_queue(&c));
  assert_int_equal(cfg_set(&c, "delivery", "queue", "yes", err, sizeof err), 0);
  assert_true(cfg_uses_outbound(&c));
  assert_string_equal(dest_of(&c, "sender.example"), "mx:sender.example");
  cfg_free(&c);

  cfg_defaults(&c); /* accept any: everything local, nobody relays */
  assert_int_equal(cfg_set(&c, "delivery", "relay", "mx", err, sizeof err), 0);
  assert_string_equal(dest_of(&c, "gmail.com"), "local");
  assert_false(cfg_uses_outbound(&c));
  assert_false(cfg_uses_queue(&c));
  assert_int_equal(cfg_set(&c, "routes", "x.example", "mx", err, sizeof err),
                   -1);
  assert_non_null(strstr(err, "unknown section [routes]"));
  cfg_free(&c);
}

/* A reload applies [routes], [tls_policy], [dkim], [outbound] and the
 * relay live; a route that needs the queue where there was none needs
 * a restart (delivery.queue). */
static void test_restart_keys_step8(void **state) {
  struct cfg a, b;
  char keys[256];
  (void)state;
  load_good("good-step8.ini", &a);
  load_good("good-step8.ini", &b);
  free(b.routes[0].url);
  b.routes[0].url = strdup("smtp://10.9.9.9:25");
  b.out.port = 25;
  b.tls_policies[0].level = TERN_TLS_POLICY_DANE;
  b.ndkim = 1;
  free((char *)b.dkim[1].domain);
  free((char *)b.dkim[1].selector);
  free((char *)b.dkim[1].key_file);
  free((char *)b.dkim[1].headers);
  free(b.dkim_name[1]);
  assert_int_equal(cfg_restart_keys(&a, &b, false, keys, sizeof keys), 0);
  cfg_free(&b);
  cfg_free(&a);
  load_good("good-mx.ini", &a); /* no queue */
  load_good("good-mx.ini", &b);
  b.routes[0] = (struct cfg_route){strdup("*"), CFG_ROUTE_MX, NULL, 1};
  b.nroutes = 1;
  assert_int_equal(cfg_restart_keys(&a, &b, false, keys, sizeof keys), 1);
  assert_string_equal(keys, "delivery.queue");
  cfg_free(&a);
  cfg_free(&b);
}

/* Step 7: every [queue] key, and [delivery] queue. */
/* No open relay: a forwarding target with no [domains] accept is
 * refused (bad-check-open-relay*.ini) unless every listener is local
 * or requires AUTH, or the domains are listed. */
static void test_relay_policy(void **state) {
  struct cfg c;
  (void)state;
  load_good("good-relay-local.ini", &c); /* smarthost for this host */
  assert_int_equal(c.target, CFG_SMTP);
  assert_true(c.accept_any);
  assert_int_equal(c.nlisteners, 3);
  cfg_free(&c);
  load_good("good-relay-domains.ini", &c);
  assert_false(c.accept_any);
  assert_int_equal(c.ndomains, 1);
  cfg_free(&c);
  load_good("good-relay-auth.ini", &c);
  assert_true(c.accept_any);
  assert_int_equal(c.listeners[0].auth, CFG_AUTH_REQUIRED);
  cfg_free(&c);
}

/* [queue] directory and control are absolute once loaded: a relative
 * one is taken from the working directory at load time. */
static void test_queue_paths_absolute(void **state) {
  struct cfg c;
  char err[ERR_CAP], cwd[512], want[700];
  (void)state;
  assert_non_null(getcwd(cwd, sizeof cwd));
  cfg_defaults(&c);
  assert_int_equal(cfg_set(&c, "queue", "directory", "./spool/q", err,
                           sizeof err), 0);
  assert_int_equal(cfg_set(&c, "queue", "control", "ctl.sock", err,
                           sizeof err), 0);
  snprintf(want, sizeof want, "%s/spool/q", cwd);
  assert_string_equal(c.queue_dir, want);
  snprintf(want, sizeof want, "%s/ctl.sock", cwd);
  assert_string_equal(c.queue_control, want);
  cfg_free(&c);
}

static void test_good_queue(void **state) {
  struct cfg c;
  char ctl[64];
  (void)state;
  load_good("good-queue.ini", &c);
  assert_int_equal(c.target, CFG_SMTP);
  assert_int_equal(c.queue, 1);
  assert_true(cfg_uses_queue(&c));
  assert_string_equal(c.queue_dir, "/var/spool/tern");
  assert_int_equal(c.queue_lifetime_s, 3 * 24 * 3600);
  assert_int_equal(c.queue_retry_min_s, 60);
  assert_int_equal(c.queue_retry_max_s, 7200);
  assert_int_equal(c.queue_delay_warning_s, 4 * 3600);
  assert_int_equal(c.queue_concurrency, 10);
  assert_int_equal(c.queue_max_active, 50);
  assert_false(c.queue_fsync);
  assert_string_equal(c.queue_postmaster, "postmaster@example.org");
  assert_string_equal(c.queue_control, "/run/tern/control");
  assert_int_equal(cfg_queue_control_path(&c, ctl, sizeof ctl), 0);
  assert_string_equal(ctl, "/run/tern/control");
  cfg_free(&c);

  load_good("good-queue-off.ini", &c);
  assert_int_equal(c.target, CFG_LMTP);
  assert_int_equal(c.queue, 0);
  assert_false(cfg_uses_queue(&c));
  assert_null(c.queue_postmaster);
  assert_int_equal(c.queue_lifetime_s, 86400);
  cfg_free(&c);
}

/* Which targets queue by default; [delivery] queue overrides. */
static void test_uses_queue(void **state) {
  struct cfg c;
  char err[ERR_CAP];
  (void)state;
  cfg_defaults(&c);
  static const struct {
    enum cfg_target t;
    bool queued;
  } def[] = {{CFG_MAILDIR, false},
             {CFG_PIPE, false},
             {CFG_LMTP, true},
             {CFG_SMTP, true}};
  for (size_t i = 0; i < 4; i++) {
    c.target = def[i].t;
    c.queue = -1;
    assert_int_equal(cfg_uses_queue(&c), def[i].queued);
    c.queue = 1;
    assert_true(cfg_uses_queue(&c));
    c.queue = 0;
    assert_false(cfg_uses_queue(&c));
  }
  assert_int_equal(cfg_set(&c, "queue", "postmaster",
                           "<pm@example.org>", err, sizeof err), 0);
  assert_string_equal(c.queue_postmaster, "pm@example.org");
  assert_int_equal(cfg_set(&c, "queue", "lifetime", "2d", err, sizeof err),
                   0);
  assert_int_equal(c.queue_lifetime_s, 2 * 86400);
  assert_int_equal(cfg_set(&c, "queue", "postmaster", "<>", err, sizeof err),
                   -1);
  assert_int_equal(
      cfg_set(&c, "queue", "postmaster", "@a,@b:x@c.org", err, sizeof err),
      -1);
  cfg_free(&c);
}

static void test_good_haproxy(void **state) {
  struct cfg c;
  (void)state;
  load_good("good-haproxy.ini", &c);
  assert_string_equal(c.xclient_networks, "127.0.0.0/8 ::1 10.1.0.0/16");
  assert_int_equal(c.nlisteners, 1);
  assert_true(c.listeners[0].proxy);
  assert_true(c.listeners[0].starttls);
  assert_true(c.listeners[0].xclient);
  assert_string_equal(c.certs[0].cert_file, "certs/mx.pem");
  assert_int_equal(c.target, CFG_MAILDIR);
  assert_string_equal(c.maildir, "/srv/mail/%a");
  assert_false(c.fsync);
  cfg_free(&c);
}

static void test_good_long_line(void **state) {
  struct cfg c;
  char name[32];
  (void)state;
  load_good("good-long-accept.ini", &c);
  assert_int_equal(c.ndomains, 40);
  for (int i = 0; i < 40; i++) {
    snprintf(name, sizeof name, "d%03d.example.org", i);
    assert_string_equal(c.domains[i], name);
  }
  assert_false(c.relay_authenticated);
  cfg_free(&c);
}

/* A file that is not there: "FILE: cannot open: reason". */
static void test_missing_file(void **state) {
  struct cfg c;
  char err[ERR_CAP];
  (void)state;
  cfg_defaults(&c);
  assert_int_equal(cfg_load(&c, "no-such-file.ini", err, sizeof err), -1);
  assert_string_equal(
      err, "no-such-file.ini: cannot open: No such file or directory");
  cfg_free(&c);
}

/* Value syntaxes. */
static void test_values(void **state) {
  uint64_t v;
  bool b;
  (void)state;
  assert_int_equal(cfg_parse_size("512K", &v), 0);
  assert_true(v == 512 * 1024);
  assert_int_equal(cfg_parse_size("30M", &v), 0);
  assert_true(v == 30u * 1024 * 1024);
  assert_int_equal(cfg_parse_size("1g", &v), 0);
  assert_true(v == 1024ull * 1024 * 1024);
  assert_int_equal(cfg_parse_size("1000", &v), 0);
  assert_true(v == 1000);
  assert_int_equal(cfg_parse_size("", &v), -1);
  assert_int_equal(cfg_parse_size("M", &v), -1);
  assert_int_equal(cfg_parse_size("1.5M", &v), -1);
  assert_int_equal(cfg_parse_size("-1", &v), -1);
  assert_int_equal(cfg_parse_size("30MB", &v), -1);
  assert_int_equal(cfg_parse_duration_ms("500ms", &v), 0);
  assert_true(v == 500);
  assert_int_equal(cfg_parse_duration_ms("5s", &v), 0);
  assert_true(v == 5000);
  assert_int_equal(cfg_parse_duration_ms("2m", &v), 0);
  assert_true(v == 120000);
  assert_int_equal(cfg_parse_duration_ms("1h", &v), 0);
  assert_true(v == 3600000);
  assert_int_equal(cfg_parse_duration_ms("30", &v), 0);
  assert_true(v == 30000);
  assert_int_equal(cfg_parse_duration_ms("ms", &v), -1);
  assert_int_equal(cfg_parse_duration_ms("5 s", &v), -1);
  assert_int_equal(cfg_parse_duration_ms("5d", &v), -1);
  /* the [queue] variant takes days, and the rest as above */
  assert_int_equal(cfg_parse_duration_days_ms("5d", &v), 0);
  assert_true(v == 5ull * 86400000);
  assert_int_equal(cfg_parse_duration_days_ms("90m", &v), 0);
  assert_true(v == 5400000);
  assert_int_equal(cfg_parse_duration_days_ms("250ms", &v), 0);
  assert_true(v == 250);
  assert_int_equal(cfg_parse_duration_days_ms("d", &v), -1);
  assert_int_equal(cfg_parse_duration_days_ms("1w", &v), -1);
  assert_int_equal(cfg_parse_duration_days_ms("-1d", &v), -1);
  assert_int_equal(cfg_parse_duration_days_ms("99999999999999999d", &v), -1);
  const char *yes[] = {"yes", "true", "on", "1", "YES", "True"};
  const char *no[] = {"no", "false", "off", "0", "No", "OFF"};
  for (size_t i = 0; i < 6; i++) {
    b = false;
    assert_int_equal(cfg_parse_bool(yes[i], &b), 0);
    assert_true(b);
    assert_int_equal(cfg_parse_bool(no[i], &b), 0);
    assert_false(b);
  }
  assert_int_equal(cfg_parse_bool("y", &b), -1);
  assert_int_equal(cfg_parse_bool("", &b), -1);
}

/* cfg_set: flags on the command line, same checks. */
static void test_set(void **state) {
  struct cfg c;
  char err[ERR_CAP];
  (void)state;
  cfg_defaults(&c);
  assert_int_equal(
      cfg_set(&c, "server", "max_message_size", "10M", err, sizeof err), 0);
  assert_true(c.max_message_size == 10u * 1024 * 1024);
  assert_int_equal(
      cfg_set(&c, "delivery", "maildir", "/tmp/m/%u", err, sizeof err), 0);
  assert_string_equal(c.maildir, "/tmp/m/%u");
  assert_int_equal(cfg_set(&c, "server", "workers", "many", err, sizeof err),
                   -1);
  assert_string_equal(err, "command line: bad value 'many' for workers: "
                           "expected a number from 0 (one per core) to 1024");
  assert_int_equal(cfg_set(&c, "server", "nope", "1", err, sizeof err), -1);
  assert_string_equal(err, "command line: unknown key 'nope' in [server]");
  assert_int_equal(cfg_set(&c, "tls", "cert", "x", err, sizeof err), -1);
  cfg_free(&c);
}

/* cfg_check on a configuration built in memory: the template checks
 * that the file's own key checks make unreachable from a file. */
static void test_check_templates(void **state) {
  struct cfg c;
  char err[ERR_CAP];
  (void)state;
  cfg_defaults(&c);
  free(c.maildir);
  c.maildir = strdup("/m/%x");
  assert_int_equal(cfg_check(&c, err, sizeof err), -1);
  assert_string_equal(err, "tern serve: maildir = /m/%x: unknown %-escape "
                           "(known: %u %d %a %%)");
  c.target = CFG_PIPE;
  assert_int_equal(cfg_check(&c, err, sizeof err), -1);
  assert_string_equal(err, "tern serve: target = pipe needs a command");
  c.command = strdup("/bin/deliver %q");
  assert_int_equal(cfg_check(&c, err, sizeof err), -1);
  assert_string_equal(err, "tern serve: command = /bin/deliver %q: unknown "
                           "%-escape (known: %s %r %a %u %d %%)");
  cfg_free(&c);
}

/* ---- users ------------------------------------------------------------------
 */

static void test_users_good(void **state) {
  struct users *u = NULL;
  char err[ERR_CAP];
  (void)state;
  if (users_load("users-good", &u, err, sizeof err) != 0)
    fail_msg("%s", err);
  assert_int_equal(users_count(u), 3);
  assert_int_equal(users_check(u, "alice", "secret"), 0);
  assert_int_equal(users_check(u, "alice", "Secret"), -1);
  assert_int_equal(users_check(u, "alice", ""), -1);
  assert_int_equal(users_check(u, "bob@example.org", "hunter2"), 0);
  assert_int_equal(users_check(u, "bob", "hunter2"), -1);
  assert_int_equal(users_check(u, "carol", "pw"), 0);
  assert_int_equal(users_check(u, "Carol", "pw"), -1); /* case matters */
  /* An unknown user is refused even with a known user's password. */
  assert_int_equal(users_check(u, "mallory", "secret"), -1);
  assert_int_equal(users_check(u, "", "secret"), -1);
  users_free(u);
  users_free(NULL);
}

static void test_users_missing(void **state) {
  struct users *u = NULL;
  char err[ERR_CAP];
  (void)state;
  assert_int_equal(users_load("no-such-users", &u, err, sizeof err), -1);
  assert_string_equal(err,
                      "no-such-users: cannot open: No such file or directory");
}

/* A yescrypt hash made here, written to a file, loaded, verified; then a
 * reload with a new password (the caller swaps the tables). */
static void test_users_yescrypt_reload(void **state) {
  char setting[CRYPT_GENSALT_OUTPUT_SIZE];
  struct crypt_data *cd = calloc(1, sizeof *cd);
  char path[] = "/tmp/tern-users-XXXXXX";
  char err[ERR_CAP];
  struct users *u = NULL, *u2 = NULL;
  (void)state;
  assert_non_null(cd);
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);

  assert_non_null(
      crypt_gensalt_rn("$y$", 0, NULL, 0, setting, (int)sizeof setting));
  const char *h = crypt_rn("correct horse", setting, cd, (int)sizeof *cd);
  assert_non_null(h);
  assert_true(strncmp(h, "$y$", 3) == 0);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fprintf(f, "# made by the test\n\nzed:%s\r\n", h);
  fclose(f);
  if (users_load(path, &u, err, sizeof err) != 0)
    fail_msg("%s", err);
  assert_int_equal(users_check(u, "zed", "correct horse"), 0);
  assert_int_equal(users_check(u, "zed", "correct horse "), -1);
  assert_int_equal(users_check(u, "zee", "correct horse"), -1);

  /* Reload: a new table with a new password; the old one still works
   * until it is freed. */
  memset(cd, 0, sizeof *cd);
  assert_non_null(
      crypt_gensalt_rn("$y$", 0, NULL, 0, setting, (int)sizeof setting));
  h = crypt_rn("battery staple", setting, cd, (int)sizeof *cd);
  assert_non_null(h);
  f = fopen(path, "w");
  assert_non_null(f);
  fprintf(f, "zed:%s\n", h);
  fclose(f);
  if (users_load(path, &u2, err, sizeof err) != 0)
    fail_msg("%s", err);
  assert_int_equal(users_check(u, "zed", "correct horse"), 0);
  users_free(u);
  u = u2;
  assert_int_equal(users_check(u, "zed", "correct horse"), -1);
  assert_int_equal(users_check(u, "zed", "battery staple"), 0);
  users_free(u);

  /* An empty file is a valid, empty table: every check fails. */
  f = fopen(path, "w");
  assert_non_null(f);
  fputs("# nobody\n", f);
  fclose(f);
  assert_int_equal(users_load(path, &u, err, sizeof err), 0);
  assert_int_equal(users_count(u), 0);
  assert_int_equal(users_check(u, "zed", "battery staple"), -1);
  users_free(u);

  unlink(path);
  free(cd);
}

/* ---- main: one test per file -------------------------------------------- */

static int by_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static size_t list(const char *prefix, const char *suffix, char ***out) {
  DIR *d = opendir(".");
  struct dirent *de;
  char **v = NULL;
  size_t n = 0;
  if (d == NULL)
    return 0;
  while ((de = readdir(d)) != NULL) {
    size_t l = strlen(de->d_name), sl = strlen(suffix);
    if (strncmp(de->d_name, prefix, strlen(prefix)) != 0 || l < sl ||
        strcmp(de->d_name + l - sl, suffix) != 0)
      continue;
    v = realloc(v, (n + 1) * sizeof *v);
    v[n++] = strdup(de->d_name);
  }
  closedir(d);
  qsort(v, n, sizeof *v, by_name);
  *out = v;
  return n;
}

int main(int argc, char **argv) {
  if (argc > 1 && chdir(argv[1]) != 0) {
    perror(argv[1]);
    return 2;
  }
  static const struct CMUnitTest fixed[] = {
      cmocka_unit_test(test_defaults),
      cmocka_unit_test(test_good_embedded),
      cmocka_unit_test(test_good_mx),
      cmocka_unit_test(test_good_submission),
      cmocka_unit_test(test_good_submissions),
      cmocka_unit_test(test_good_lmtp),
      cmocka_unit_test(test_good_limits),
      cmocka_unit_test(test_good_haproxy),
      cmocka_unit_test(test_good_queue),
      cmocka_unit_test(test_uses_queue),
      cmocka_unit_test(test_good_long_line),
      cmocka_unit_test(test_missing_file),
      cmocka_unit_test(test_values),
      cmocka_unit_test(test_set),
      cmocka_unit_test(test_check_templates),
      cmocka_unit_test(test_relay_policy),
      cmocka_unit_test(test_queue_paths_absolute),
      cmocka_unit_test(test_users_good),
      cmocka_unit_test(test_users_missing),
      cmocka_unit_test(test_users_yescrypt_reload),
      cmocka_unit_test(test_good_step8),
      cmocka_unit_test(test_route_dest),
      cmocka_unit_test(test_target_mx),
      cmocka_unit_test(test_route_compat),
      cmocka_unit_test(test_restart_keys_step8),
      cmocka_unit_test(test_summary),
  };
  char **bad = NULL, **ubad = NULL;
  size_t nbad = list("bad-", ".ini", &bad);
  size_t nubad = list("users-bad-", "", &ubad);
  if (nbad == 0 || nubad == 0) {
    fprintf(stderr, "no bad-*.ini or users-bad-* here; run in "
                    "tests/serve/configs\n");
    return 2;
  }
  size_t nfixed = sizeof fixed / sizeof fixed[0];
  size_t n = nfixed + nbad + nubad;
  struct CMUnitTest *tests = calloc(n, sizeof *tests);
  memcpy(tests, fixed, sizeof fixed);
  for (size_t i = 0; i < nbad; i++) {
    struct CMUnitTest t = cmocka_unit_test_prestate(test_bad_config, bad[i]);
    t.name = bad[i];
    tests[nfixed + i] = t;
  }
  for (size_t i = 0; i < nubad; i++) {
    struct CMUnitTest t = cmocka_unit_test_prestate(test_bad_users, ubad[i]);
    t.name = ubad[i];
    tests[nfixed + nbad + i] = t;
  }
  int rc = _cmocka_run_group_tests("serve_config", tests, n, NULL, NULL);
  for (size_t i = 0; i < nbad; i++)
    free(bad[i]);
  for (size_t i = 0; i < nubad; i++)
    free(ubad[i]);
  free(bad);
  free(ubad);
  free(tests);
  return rc;
}
