/*
 * DSN composition (tern/dsn.h, src/core/dsn.c): every field where RFC
 * 3464 puts it, every refused input, folding of long fields, the RFC
 * 6533 types, the size tag, and each allocation failing in turn (malloc
 * and free are wrapped, tests/CMakeLists.txt, so that failures can be
 * injected and leaks counted). tests/unit/dsn_parse.py reads the same
 * reports with Python's email package.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka.h needs the four above first */
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tern/dsn.h"

/* ---- malloc with failure injection --------------------------------------- */

void *__real_malloc(size_t n);
void __real_free(void *p);

static long fail_at = -1; /* fail the allocation with this number (0-based) */
static long calls, live;

void *__wrap_malloc(size_t n) {
  if (fail_at >= 0 && calls++ == fail_at)
    return NULL;
  void *p = __real_malloc(n);
  if (p && fail_at >= -1)
    live++;
  return p;
}

void __wrap_free(void *p) {
  if (p)
    live--;
  __real_free(p);
}

/* ---- a report to vary ---------------------------------------------------- */

struct fx {
  struct tern_dsn d;
  struct tern_dsn_rcpt r[2];
};

static void fx_init(struct fx *f) {
  memset(f, 0, sizeof *f);
  tern_dsn_init(&f->d);
  f->d.reporting_mta = "mx.example.org";
  f->d.from = "MAILER-DAEMON@mx.example.org";
  f->d.to = "alice@example.org";
  f->d.date = "Tue, 1 Dec 2026 10:00:00 +0000";
  f->d.message_id = "<dsn-1@mx.example.org>";
  f->d.boundary = "b0undary";
  f->d.rcpts = f->r;
  f->d.nrcpts = 1;
  f->r[0].final_rcpt = "bob@example.net";
  f->r[0].action = "failed";
  f->r[0].status = "5.1.1";
}

static char *head(const struct tern_dsn *d) {
  char *out = (char *)1;
  size_t len = 0;
  assert_int_equal(tern_dsn_head(d, &out, &len), 0);
  assert_non_null(out);
  assert_int_equal(strlen(out), len);
  return out;
}

static int head_rc(const struct tern_dsn *d) {
  char *out = (char *)1;
  int rc = tern_dsn_head(d, &out, NULL);
  if (rc)
    assert_null(out);
  free(out);
  return rc;
}

static bool has(const char *out, const char *s) { return strstr(out, s); }

/* Every line of out ends with CRLF and is at most max octets long. */
static void lines_ok(const char *out, size_t max) {
  const char *p = out;
  while (*p) {
    const char *e = strstr(p, "\r\n");
    assert_non_null(e);
    assert_true((size_t)(e - p) <= max);
    assert_null(memchr(p, '\r', (size_t)(e - p)));
    assert_null(memchr(p, '\n', (size_t)(e - p)));
    p = e + 2;
  }
}

/* The value of the first field `name` after `from`, unfolded (RFC 5322
 * §2.2.3: CRLF before WSP removed). Caller frees. */
static char *field(const char *from, const char *name) {
  char key[64];
  snprintf(key, sizeof key, "\r\n%s: ", name);
  const char *p = strstr(from, key);
  if (!p)
    return NULL;
  p += strlen(key);
  char *v = malloc(strlen(p) + 1);
  size_t n = 0;
  for (;;) {
    if (p[0] == '\r' && p[1] == '\n') {
      if (p[2] == ' ' || p[2] == '\t') {
        p += 2;
        continue;
      }
      break;
    }
    v[n++] = *p++;
  }
  v[n] = '\0';
  return v;
}

static void field_is(const char *from, const char *name, const char *want) {
  char *v = field(from, name);
  if (!v)
    fail_msg("no field %s", name);
  if (strcmp(v, want) != 0)
    fail_msg("%s: got \"%s\", want \"%s\"", name, v, want);
  free(v);
}

/* ---- fields -------------------------------------------------------------- */

static void test_top_header(void **state) {
  (void)state;
  struct fx f;
  fx_init(&f);
  char *o = head(&f.d);
  assert_true(strncmp(o, "From: MAILER-DAEMON@mx.example.org\r\n", 36) == 0);
  field_is(o, "To", "alice@example.org");
  field_is(o, "Subject", "Undelivered Mail Returned to Sender");
  field_is(o, "Date", "Tue, 1 Dec 2026 10:00:00 +0000");
  field_is(o, "Message-ID", "<dsn-1@mx.example.org>");
  field_is(o, "Auto-Submitted", "auto-replied");
  field_is(o, "MIME-Version", "1.0");
  field_is(o, "Content-Type",
           "multipart/report; report-type=delivery-status;"
           " boundary=\"b0undary\"");
  assert_false(has(o, "Content-Transfer-Encoding"));
  /* the header ends before the first part */
  assert_true(has(o, "\r\n\r\nThis is a MIME-encapsulated message.\r\n\r\n"
                     "--b0undary\r\nContent-Description: Notification\r\n"
                     "Content-Type: text/plain; charset=us-ascii\r\n\r\n"));
  assert_true(has(o, "\r\n--b0undary\r\nContent-Description: Delivery report"
                     "\r\nContent-Type: message/delivery-status\r\n\r\n"
                     "Reporting-MTA: dns; mx.example.org\r\n\r\n"
                     "Final-Recipient: rfc822; bob@example.net\r\n"
                     "Action: failed\r\nStatus: 5.1.1\r\n\r\n--b0undary\r\n"));
  /* RET=FULL by default: ends with the third part's header */
  const char *end = "\r\n--b0undary\r\nContent-Description: Original message"
                    "\r\nContent-Type: message/rfc822\r\n\r\n";
  assert_string_equal(o + strlen(o) - strlen(end), end);
  lines_ok(o, 78);
  free(o);
}

static void test_subjects(void **state) {
  (void)state;
  struct fx f;
  fx_init(&f);
  f.r[0].action = "delayed";
  f.r[0].status = "4.4.1";
  char *o = head(&f.d);
  field_is(o, "Subject", "Delayed Mail (still being retried)");
  free(o);
  f.r[0].action = "Delivered"; /* action values compare without case */
  f.r[0].status = "2.0.0";
  o = head(&f.d);
  field_is(o, "Subject", "Successful Mail Delivery Report");
  field_is(o, "Action", "delivered");
  free(o);
  /* a failure among others decides */
  f.d.nrcpts = 2;
  f.r[1] = f.r[0];
  f.r[1].action = "failed";
  f.r[1].status = "5.0.0";
  o = head(&f.d);
  field_is(o, "Subject", "Undelivered Mail Returned to Sender");
  free(o);
  f.d.subject = "Your mail";
  o = head(&f.d);
  field_is(o, "Subject", "Your mail");
  free(o);
}

static void test_per_message(void **state) {
  (void)state;
  struct fx f;
  fx_init(&f);
  f.d.envid = "QQ314159";
  f.d.received_from_mta = "dns; client.example.org ([192.0.2.1])";
  f.d.arrival_date = "Tue, 1 Dec 2026 09:00:00 +0000";
  char *o = head(&f.d);
  /* RFC 3464 §2.2 order */
  assert_true(has(o, "Content-Type: message/delivery-status\r\n\r\n"
                     "Original-Envelope-Id: QQ314159\r\n"
                     "Reporting-MTA: dns; mx.example.org\r\n"
                     "Received-From-MTA: dns; client.example.org "
                     "([192.0.2.1])\r\n"
                     "Arrival-Date: Tue, 1 Dec 2026 09:00:00 +0000\r\n\r\n"
                     "Final-Recipient: rfc822; bob@example.net\r\n"));
  free(o);
}

static void test_per_recipient(void **state) {
  (void)state;
  struct fx f;
  fx_init(&f);
  f.d.nrcpts = 2;
  f.r[0].orcpt = "rfc822;Bob@Example.NET";
  f.r[0].remote_mta = "mx.example.net";
  f.r[0].diagnostic = "550 5.1.1 no such user";
  f.r[0].last_attempt = "Tue, 1 Dec 2026 09:59:00 +0000";
  f.r[0].will_retry_until = "Sun, 6 Dec 2026 09:00:00 +0000"; /* not delayed */
  f.r[1].final_rcpt = "carol@example.net";
  f.r[1].action = "delayed";
  f.r[1].status = "4.7.0";
  f.r[1].will_retry_until = "Sun, 6 Dec 2026 09:00:00 +0000";
  char *o = head(&f.d);
  /* RFC 3464 §2.3 order; Will-Retry-Until only for delayed (§2.3.9) */
  assert_true(has(o, "Reporting-MTA: dns; mx.example.org\r\n\r\n"
                     "Original-Recipient: rfc822;Bob@Example.NET\r\n"
                     "Final-Recipient: rfc822; bob@example.net\r\n"
                     "Action: failed\r\n"
                     "Status: 5.1.1\r\n"
                     "Remote-MTA: dns; mx.example.net\r\n"
                     "Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"
                     "Last-Attempt-Date: Tue, 1 Dec 2026 09:59:00 +0000\r\n"
                     "\r\n"
                     "Final-Recipient: rfc822; carol@example.net\r\n"
                     "Action: delayed\r\n"
                     "Status: 4.7.0\r\n"
                     "Will-Retry-Until: Sun, 6 Dec 2026 09:00:00 +0000\r\n"
                     "\r\n--b0undary\r\n"));
  /* the human part names both, with the reply and the retry date */
  assert_true(has(o, "<bob@example.net>: failed (5.1.1)\r\n"
                     "    mx.example.net said: 550 5.1.1 no such user\r\n"));
  assert_true(has(o, "<carol@example.net>: delayed (4.7.0)\r\n"
                     "    Will retry until Sun, 6 Dec 2026 09:00:00 +0000."));
  free(o);
}

/* A reply made here (no remote MTA: a null MX, a failed lookup) is not
 * something "the server said". */
static void test_local_reason(void **state) {
  (void)state;
  struct fx f;
  fx_init(&f);
  f.r[0].diagnostic = "550 5.1.10 Recipient address has null MX";
  f.r[0].status = "5.1.10";
  char *o = head(&f.d);
  assert_true(has(o, "    Reason: 550 5.1.10 Recipient address has null MX"));
  assert_false(has(o, "said:"));
  assert_false(has(o, "Remote-MTA:"));
  free(o);
}

static void test_multiline_reply(void **state) {
  (void)state;
  struct fx f;
  fx_init(&f);
  f.r[0].diagnostic = "550-5.1.1 The email account that you tried to reach "
                      "does not exist.\r\n550-5.1.1 Please try double-"
                      "checking the recipient's email\n550 5.1.1 address "
                      "for typos.  \r\n";
  char *o = head(&f.d);
  field_is(o, "Diagnostic-Code",
           "smtp; 550-5.1.1 The email account that you tried to reach does "
           "not exist. 550-5.1.1 Please try double-checking the recipient's "
           "email 550 5.1.1 address for typos.");
  lines_ok(o, 78);
  free(o);
}

static void test_fold_long_word(void **state) {
  (void)state;
  struct fx f;
  char word[2101];
  fx_init(&f);
  memset(word, 'x', sizeof word - 1);
  word[sizeof word - 1] = '\0';
  char *diag = malloc(sizeof word + 16);
  snprintf(diag, sizeof word + 16, "550 %s end", word);
  f.r[0].diagnostic = diag;
  char *o = head(&f.d);
  lines_ok(o, 998);
  /* Cut where a line would pass 998 octets: unfolding shows the cuts as
   * spaces, and nothing else changed. */
  char *v = field(o, "Diagnostic-Code");
  size_t spaces = 0, xs = 0;
  for (char *p = v + strlen("smtp; 550 "); *p; p++)
    spaces += *p == ' ', xs += *p == 'x';
  assert_int_equal(xs, sizeof word - 1);
  assert_int_equal(spaces, 2 + 1); /* two cuts, then " end" */
  assert_true(strncmp(v, "smtp; 550 xxx", 13) == 0);
  free(v);
  free(o);
  free(diag);
}

static void test_fold_subject(void **state) {
  (void)state;
  struct fx f;
  fx_init(&f);
  f.d.subject = "a rather long subject line that goes on and on past the "
                "seventy-eight octets that RFC 5322 would like a line to keep";
  char *o = head(&f.d);
  lines_ok(o, 78);
  field_is(o, "Subject", f.d.subject);
  assert_true(has(o, "\r\n seventy-eight") || has(o, "\r\n octets") ||
              has(o, "\r\n that"));
  free(o);
}

static void test_include(void **state) {
  (void)state;
  struct fx f;
  char *o, *t;
  size_t tl;
  fx_init(&f);
  f.d.include = TERN_RET_HDRS;
  o = head(&f.d);
  assert_true(has(o, "--b0undary\r\nContent-Description: Original message "
                     "header\r\nContent-Type: text/rfc822-headers\r\n\r\n"));
  free(o);
  assert_int_equal(tern_dsn_tail(&f.d, &t, &tl), 0);
  assert_string_equal(t, "\r\n--b0undary--\r\n");
  assert_int_equal(tl, 16);
  free(t);

  f.d.include = TERN_RET_UNSPECIFIED;
  o = head(&f.d);
  const char *end = "Status: 5.1.1\r\n\r\n--b0undary--\r\n";
  assert_string_equal(o + strlen(o) - strlen(end), end);
  assert_false(has(o, "attached"));
  free(o);
  assert_int_equal(tern_dsn_tail(&f.d, &t, &tl), 0);
  assert_string_equal(t, "");
  assert_int_equal(tl, 0);
  free(t);

  f.d.include = TERN_RET_FULL;
  f.d.eight_bit = true;
  o = head(&f.d);
  field_is(o, "Content-Transfer-Encoding", "8bit"); /* the top one */
  const char *end8 = "Content-Type: message/rfc822\r\n"
                     "Content-Transfer-Encoding: 8bit\r\n\r\n";
  assert_string_equal(o + strlen(o) - strlen(end8), end8);
  assert_true(has(o, "charset=us-ascii"));
  free(o);
}

static void test_utf8(void **state) {
  (void)state;
  struct fx f;
  fx_init(&f);
  f.d.utf8 = true;
  f.d.to = "j\xc3\xbcrgen@example.org";
  f.r[0].final_rcpt = "\xe7\x94\xa8\xe6\x88\xb7@example.net";
  f.r[0].orcpt = "utf-8;\xe7\x94\xa8\xe6\x88\xb7@example.net";
  f.d.include = TERN_RET_HDRS;
  char *o = head(&f.d);
  field_is(o, "Content-Type",
           "multipart/report; "
           "report-type=global-delivery-status; "
           "boundary=\"b0undary\"");
  assert_true(has(o, "Content-Type: text/plain; charset=utf-8\r\n"
                     "Content-Transfer-Encoding: 8bit\r\n"));
  assert_true(has(o, "Content-Type: message/global-delivery-status\r\n"
                     "Content-Transfer-Encoding: 8bit\r\n"));
  assert_true(has(o, "Final-Recipient: utf-8; \xe7\x94\xa8\xe6\x88\xb7"
                     "@example.net\r\n"));
  assert_true(has(o, "Original-Recipient: utf-8;\xe7\x94\xa8\xe6\x88\xb7"
                     "@example.net\r\n"));
  assert_true(has(o, "Content-Type: message/global-headers\r\n"));
  free(o);
  f.d.include = TERN_RET_FULL;
  f.r[0].final_rcpt = "bob@example.net"; /* ASCII: rfc822 even in utf8 */
  o = head(&f.d);
  assert_true(has(o, "Final-Recipient: rfc822; bob@example.net\r\n"));
  assert_true(has(o, "Content-Type: message/global\r\n"
                     "Content-Transfer-Encoding: 8bit\r\n\r\n"));
  free(o);
}

static void test_human(void **state) {
  (void)state;
  struct fx f;
  fx_init(&f);
  f.d.human = "Line one.\nLine two.\r\n\r\nAfter a blank line.\n";
  char *o = head(&f.d);
  assert_true(has(o, "charset=us-ascii\r\n\r\nLine one.\r\nLine two.\r\n\r\n"
                     "After a blank line.\r\n\r\n--b0undary\r\n"));
  free(o);
  /* a line longer than 998 octets is cut */
  char *big = malloc(2100);
  memset(big, 'y', 2099);
  big[2099] = '\0';
  f.d.human = big;
  o = head(&f.d);
  lines_ok(o, 998);
  free(o);
  /* the boundary at a line start, even where a long line is cut */
  f.d.human = "fine\n--b0undary\nmore";
  assert_int_equal(head_rc(&f.d), TERN_EINVAL);
  f.d.human = "--b0undary--";
  assert_int_equal(head_rc(&f.d), TERN_EINVAL);
  memcpy(big + 998, "--b0undary", 10);
  f.d.human = big;
  assert_int_equal(head_rc(&f.d), TERN_EINVAL);
  f.d.human = "a line with --b0undary inside is fine";
  assert_int_equal(head_rc(&f.d), 0);
  f.d.human = "bare\rCR";
  assert_int_equal(head_rc(&f.d), TERN_EINVAL);
  f.d.human = "CR at the end\r";
  assert_int_equal(head_rc(&f.d), TERN_EINVAL);
  free(big);
}

/* ---- refused inputs ------------------------------------------------------ */

static void test_required(void **state) {
  (void)state;
  struct fx f;
  const char **req[] = {&f.d.reporting_mta, &f.d.from,       &f.d.to,
                        &f.d.date,          &f.d.message_id, &f.d.boundary,
                        &f.r[0].final_rcpt, &f.r[0].action,  &f.r[0].status};
  for (size_t i = 0; i < sizeof req / sizeof req[0]; i++) {
    fx_init(&f);
    *req[i] = NULL;
    assert_int_equal(head_rc(&f.d), TERN_EINVAL);
    fx_init(&f);
    *req[i] = "";
    assert_int_equal(head_rc(&f.d), TERN_EINVAL);
  }
  fx_init(&f);
  f.d.nrcpts = 0;
  assert_int_equal(head_rc(&f.d), TERN_EINVAL);
  fx_init(&f);
  f.d.rcpts = NULL;
  assert_int_equal(head_rc(&f.d), TERN_EINVAL);
  fx_init(&f);
  char *o;
  assert_int_equal(tern_dsn_head(NULL, &o, NULL), TERN_EINVAL);
  assert_null(o);
  assert_int_equal(tern_dsn_head(&f.d, NULL, NULL), TERN_EINVAL);
  assert_int_equal(tern_dsn_tail(&f.d, NULL, NULL), TERN_EINVAL);
  f.d.to = NULL;
  o = (char *)1;
  assert_int_equal(tern_dsn_tail(&f.d, &o, NULL), TERN_EINVAL);
  assert_null(o);
}

/* CR, LF and other controls in every field; non-ASCII without utf8. */
static void test_line_breaks(void **state) {
  (void)state;
  struct fx f;
  const char **all[] = {&f.d.reporting_mta,
                        &f.d.from,
                        &f.d.to,
                        &f.d.date,
                        &f.d.message_id,
                        &f.d.subject,
                        &f.d.envid,
                        &f.d.received_from_mta,
                        &f.d.arrival_date,
                        &f.r[0].final_rcpt,
                        &f.r[0].orcpt,
                        &f.r[0].remote_mta,
                        &f.r[0].last_attempt,
                        &f.r[0].will_retry_until};
  const char *bad[] = {"a\r\nBcc: x", "a\nb",    "a\rb",    "a\x01",
                       "a\x7f",       "<x\r\n>", "dns;\nx", "rfc822;a\rb"};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
      fx_init(&f);
      *all[i] = bad[k];
      if (head_rc(&f.d) != TERN_EINVAL)
        fail_msg("field %zu accepted \"%s\"", i, bad[k]);
    }
  const char **ascii[] = {
      &f.d.reporting_mta, &f.d.from,         &f.d.to,
      &f.d.subject,       &f.d.envid,        &f.r[0].final_rcpt,
      &f.r[0].remote_mta, &f.r[0].diagnostic};
  for (size_t i = 0; i < sizeof ascii / sizeof ascii[0]; i++) {
    fx_init(&f);
    *ascii[i] = "j\xc3\xbcrgen";
    assert_int_equal(head_rc(&f.d), TERN_EINVAL); /* not without utf8 */
    f.d.utf8 = true;
    assert_int_equal(head_rc(&f.d), 0);
    *ascii[i] = "j\xc3rgen"; /* not UTF-8 */
    assert_int_equal(head_rc(&f.d), TERN_EINVAL);
    *ascii[i] = "j\xc0\xafrgen"; /* overlong */
    assert_int_equal(head_rc(&f.d), TERN_EINVAL);
  }
  /* dates and the Message-ID stay ASCII even with utf8 */
  fx_init(&f);
  f.d.utf8 = true;
  f.d.date = "Tue, 1 D\xc3\xa9"
             "c 2026";
  assert_int_equal(head_rc(&f.d), TERN_EINVAL);
  /* a diagnostic may have line breaks, but no bare CR and not be empty */
  fx_init(&f);
  f.r[0].diagnostic = "550 a\rb";
  assert_int_equal(head_rc(&f.d), TERN_EINVAL);
  f.r[0].diagnostic = "\r\n \r\n";
  assert_int_equal(head_rc(&f.d), TERN_EINVAL);
  f.r[0].diagnostic = "550 \x01";
  assert_int_equal(head_rc(&f.d), TERN_EINVAL);
  /* a CR counts as a line break only before an LF (found by fuzz_dsn:
   * a CR at the very end used to loop forever) */
  f.r[0].diagnostic = "550 no such user\r";
  assert_int_equal(head_rc(&f.d), TERN_EINVAL);
  f.r[0].diagnostic = "550-a\r\r\n550 b";
  assert_int_equal(head_rc(&f.d), TERN_EINVAL);
  f.r[0].diagnostic = "550-a\n550 b";
  assert_int_equal(head_rc(&f.d), 0);
  /* tabs are text */
  f.d.subject = "a\tb";
  assert_int_equal(head_rc(&f.d), 0);
}

static void test_status(void **state) {
  (void)state;
  struct fx f;
  const char *good[] = {"2.0.0", "4.4.1", "5.1.1", "5.999.999", "4.10.20"};
  const char *bad[] = {"1.0.0",    "3.1.1",    "6.0.0",  "5.1",  "5.1.1.1",
                       "5.1234.1", "5.1.1234", "5.a.1",  "5..1", "5.1.",
                       "51.1.1",   " 5.1.1",   "5.1.1 ", "550",  "5-1-1"};
  fx_init(&f);
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    f.r[0].status = good[i];
    char *o = head(&f.d);
    field_is(o, "Status", good[i]);
    free(o);
  }
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    f.r[0].status = bad[i];
    if (head_rc(&f.d) != TERN_EINVAL)
      fail_msg("status \"%s\" accepted", bad[i]);
  }
}

static void test_action(void **state) {
  (void)state;
  struct fx f;
  const char *good[] = {"failed", "delayed", "delivered", "relayed",
                        "expanded"};
  const char *bad[] = {"fail", "bounced", "failed ", "deferred", "sent"};
  fx_init(&f);
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    f.r[0].action = good[i];
    char *o = head(&f.d);
    field_is(o, "Action", good[i]);
    free(o);
  }
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    f.r[0].action = bad[i];
    assert_int_equal(head_rc(&f.d), TERN_EINVAL);
  }
}

static void test_boundary(void **state) {
  (void)state;
  struct fx f;
  char b70[71], b71[72];
  memset(b70, 'b', 70);
  b70[70] = '\0';
  memset(b71, 'b', 71);
  b71[71] = '\0';
  const char *good[] = {"a", b70, "0123456789'()+_,-./:=?AZaz"};
  const char *bad[] = {b71, "a b", "a\"b", "a;b", "a\\b", "a*b", "\xc3\xa9"};
  fx_init(&f);
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    f.d.boundary = good[i];
    assert_int_equal(head_rc(&f.d), 0);
  }
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    f.d.boundary = bad[i];
    assert_int_equal(head_rc(&f.d), TERN_EINVAL);
  }
}

static void test_other_checks(void **state) {
  (void)state;
  struct fx f;
  const char *orcpt_bad[] = {"bob@example.net", ";bob@example.net",
                             "rfc822;",         "rfc822; ",
                             "rfc 822;bob",     "rfc822:bob"};
  for (size_t i = 0; i < sizeof orcpt_bad / sizeof orcpt_bad[0]; i++) {
    fx_init(&f);
    f.r[0].orcpt = orcpt_bad[i];
    assert_int_equal(head_rc(&f.d), TERN_EINVAL);
  }
  fx_init(&f);
  f.r[0].orcpt = "x-local; bob";
  assert_int_equal(head_rc(&f.d), 0);
  const char *mid_bad[] = {"dsn@host", "<dsn@host", "dsn@host>", "<>",
                           "<a b@host>"};
  for (size_t i = 0; i < sizeof mid_bad / sizeof mid_bad[0]; i++) {
    fx_init(&f);
    f.d.message_id = mid_bad[i];
    assert_int_equal(head_rc(&f.d), TERN_EINVAL);
  }
  fx_init(&f);
  f.d.reporting_mta = "mx example";
  assert_int_equal(head_rc(&f.d), TERN_EINVAL);
  fx_init(&f);
  f.r[0].remote_mta = "mx example";
  assert_int_equal(head_rc(&f.d), TERN_EINVAL);
  fx_init(&f);
  f.d.received_from_mta = "client.example.org"; /* "dns; name" expected */
  assert_int_equal(head_rc(&f.d), TERN_EINVAL);
  fx_init(&f);
  f.d.include = (enum tern_dsn_ret)7;
  assert_int_equal(head_rc(&f.d), TERN_EINVAL);
}

/* The size tag (DESIGN §1): an older caller's shorter struct keeps our
 * defaults; a newer caller's longer one only with zero unknown fields. */
static void test_size_tag(void **state) {
  (void)state;
  struct fx f;
  struct {
    struct tern_dsn d;
    unsigned char future[16];
  } big;
  fx_init(&f);
  memset(&big, 0, sizeof big);
  big.d = f.d;
  big.d.size = sizeof big;
  assert_int_equal(head_rc(&big.d), 0);
  big.future[3] = 1;
  assert_int_equal(head_rc(&big.d), TERN_EINVAL);
  f.d.size = 2;
  assert_int_equal(head_rc(&f.d), TERN_EINVAL);
  /* a caller that knows fields up to nrcpts only: include stays FULL,
   * utf8 and eight_bit false, whatever lies beyond */
  fx_init(&f);
  f.d.size = offsetof(struct tern_dsn, include);
  f.d.include = TERN_RET_UNSPECIFIED;
  f.d.utf8 = true;
  char *o = head(&f.d);
  assert_true(has(o, "Content-Type: message/rfc822\r\n"));
  assert_true(has(o, "report-type=delivery-status;"));
  free(o);
}

/* Each allocation failing in turn: TERN_ENOMEM, *out NULL, no leak. */
static void test_enomem(void **state) {
  (void)state;
  struct fx f;
  char big[3000];
  fx_init(&f);
  memset(big, 'z', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  f.d.subject = big; /* several buffer growths */
  f.r[0].diagnostic = big;
  f.r[0].remote_mta = "mx.example.net";
  int (*fn[])(const struct tern_dsn *, char **, size_t *) = {tern_dsn_head,
                                                             tern_dsn_tail};
  for (size_t k = 0; k < 2; k++) {
    bool done = false;
    for (long n = 0; !done && n < 1000; n++) {
      char *o = (char *)1;
      calls = 0;
      live = 0;
      fail_at = n;
      int rc = fn[k](&f.d, &o, NULL);
      fail_at = -1;
      if (rc == 0) {
        assert_non_null(o);
        free(o);
        assert_int_equal(live, 0);
        done = true;
      } else {
        assert_int_equal(rc, TERN_ENOMEM);
        assert_null(o);
        assert_int_equal(live, 0);
      }
    }
    assert_true(done);
  }
  fail_at = -2; /* stop counting */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_top_header),
      cmocka_unit_test(test_subjects),
      cmocka_unit_test(test_per_message),
      cmocka_unit_test(test_per_recipient),
      cmocka_unit_test(test_local_reason),
      cmocka_unit_test(test_multiline_reply),
      cmocka_unit_test(test_fold_long_word),
      cmocka_unit_test(test_fold_subject),
      cmocka_unit_test(test_include),
      cmocka_unit_test(test_utf8),
      cmocka_unit_test(test_human),
      cmocka_unit_test(test_required),
      cmocka_unit_test(test_line_breaks),
      cmocka_unit_test(test_status),
      cmocka_unit_test(test_action),
      cmocka_unit_test(test_boundary),
      cmocka_unit_test(test_other_checks),
      cmocka_unit_test(test_size_tag),
      cmocka_unit_test(test_enomem),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
