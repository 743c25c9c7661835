/*
 * dsn_sample KIND — write one DSN (tern_dsn_head, a fake original,
 * tern_dsn_tail) to stdout, for tests/unit/dsn_parse.py to read with
 * Python's email package. KIND:
 *   full    two failed recipients (one with ORCPT and a multi-line
 *           reply), one delayed; ENVID; the whole original
 *   hdrs    one failed recipient; the original's header only
 *   none    one delivered recipient; nothing included
 *   utf8    a UTF-8 recipient and original (RFC 6533 types)
 *   noeol   the whole original, which does not end with CRLF
 * Exit status 0, or 1 with a message on stderr.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tern/dsn.h"

static const char original[] = "From: Alice <alice@example.org>\r\n"
                               "To: bob@example.net, carol@example.net\r\n"
                               "Subject: Lunch on Friday\r\n"
                               "Message-ID: <orig-1@example.org>\r\n"
                               "\r\n"
                               "Shall we meet at noon?\r\n";

static const char original_utf8[] =
    "From: J\xc3\xbcrgen <j\xc3\xbcrgen@example.org>\r\n"
    "To: \xe7\x94\xa8\xe6\x88\xb7@example.net\r\n"
    "Subject: Gr\xc3\xbc\xc3\x9f"
    "e\r\n"
    "Message-ID: <orig-2@example.org>\r\n"
    "\r\n"
    "Hallo.\r\n";

static int emit(const char *s, size_t n) {
  return fwrite(s, 1, n, stdout) == n ? 0 : 1;
}

int main(int argc, char **argv) {
  const char *kind = argc > 1 ? argv[1] : "full";
  struct tern_dsn d;
  struct tern_dsn_rcpt r[3];
  const char *orig = original;
  size_t olen = sizeof original - 1;

  memset(r, 0, sizeof r);
  tern_dsn_init(&d);
  d.reporting_mta = "mx.example.org";
  d.from = "MAILER-DAEMON@mx.example.org";
  d.to = "alice@example.org";
  d.date = "Tue, 1 Dec 2026 10:00:00 +0000";
  d.message_id = "<dsn-1@mx.example.org>";
  d.boundary = "tern-dsn=_0123456789";
  d.arrival_date = "Tue, 1 Dec 2026 09:00:00 +0000";
  d.received_from_mta = "dns; client.example.org";
  d.rcpts = r;

  r[0].final_rcpt = "bob@example.net";
  r[0].action = "failed";
  r[0].status = "5.1.1";
  r[0].remote_mta = "mx.example.net";
  r[0].diagnostic = "550 5.1.1 <bob@example.net>: Recipient address rejected: "
                    "User unknown in virtual mailbox table";
  r[0].last_attempt = "Tue, 1 Dec 2026 09:59:00 +0000";

  if (strcmp(kind, "full") == 0 || strcmp(kind, "noeol") == 0) {
    d.envid = "ENV-42";
    r[1].final_rcpt = "carol@example.net";
    r[1].orcpt = "rfc822;Carol@Example.NET";
    r[1].action = "failed";
    r[1].status = "5.2.2";
    r[1].remote_mta = "mx.example.net";
    r[1].diagnostic = "552-5.2.2 The mailbox is full.\r\n"
                      "552-5.2.2 Please ask carol to make room\r\n"
                      "552 5.2.2 and try again later.";
    r[2].final_rcpt = "dave@example.net";
    r[2].action = "delayed";
    r[2].status = "4.4.1";
    r[2].diagnostic = "421 4.4.1 Connection timed out";
    r[2].will_retry_until = "Sun, 6 Dec 2026 09:00:00 +0000";
    d.nrcpts = 3;
    if (strcmp(kind, "noeol") == 0)
      olen -= 2;
  } else if (strcmp(kind, "hdrs") == 0) {
    d.nrcpts = 1;
    d.include = TERN_RET_HDRS;
    olen = (size_t)(strstr(original, "\r\n\r\n") - original) + 4;
  } else if (strcmp(kind, "none") == 0) {
    r[0].action = "delivered";
    r[0].status = "2.0.0";
    r[0].diagnostic = "250 2.0.0 Ok: queued as 7F3A";
    d.nrcpts = 1;
    d.include = TERN_RET_UNSPECIFIED;
  } else if (strcmp(kind, "utf8") == 0) {
    d.utf8 = true;
    d.to = "j\xc3\xbcrgen@example.org";
    r[0].final_rcpt = "\xe7\x94\xa8\xe6\x88\xb7@example.net";
    r[0].orcpt = "utf-8;\xe7\x94\xa8\xe6\x88\xb7@example.net";
    r[0].diagnostic = "550 5.1.1 \xe7\x94\xa8\xe6\x88\xb7: no such user";
    d.nrcpts = 1;
    orig = original_utf8;
    olen = sizeof original_utf8 - 1;
  } else {
    fprintf(stderr, "dsn_sample: unknown kind %s\n", kind);
    return 1;
  }

  char *h = NULL, *t = NULL;
  size_t hl = 0, tl = 0;
  int rc = tern_dsn_head(&d, &h, &hl);
  if (rc == 0)
    rc = tern_dsn_tail(&d, &t, &tl);
  if (rc) {
    fprintf(stderr, "dsn_sample: %s\n", tern_strerror(rc));
    return 1;
  }
  int bad = emit(h, hl);
  if (d.include != TERN_RET_UNSPECIFIED)
    bad |= emit(orig, olen);
  bad |= emit(t, tl);
  free(h);
  free(t);
  return bad || fflush(stdout) ? 1 : 0;
}
