/*
 * tern/dsn.h — delivery status notifications (RFC 3464, RFC 3461,
 * RFC 3462; RFC 6533 for SMTPUTF8 messages), composed without I/O.
 *
 * A DSN is a multipart/report; report-type=delivery-status message:
 *   1. text/plain: words for people,
 *   2. message/delivery-status: per-message and per-recipient fields,
 *   3. the original message (message/rfc822) or its header
 *      (text/rfc822-headers), as RET asked; absent when not included.
 * The original can be any size, so it is not passed here: the caller
 * writes tern_dsn_head(), then the original (or its header, up to and
 * including the blank line), then tern_dsn_tail(). The core has no clock
 * and no randomness: dates, the Message-ID and the MIME boundary are the
 * caller's.
 */
#ifndef TERN_DSN_H
#define TERN_DSN_H

#include <stdbool.h>
#include <stddef.h>

#include <tern/common.h>
#include <tern/server.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One recipient's report (RFC 3464 §2.3). Fields are written as given
 * after the checks below; NULL leaves an optional field out. */
struct tern_dsn_rcpt {
  const char *final_rcpt;    /* the address (written "rfc822; ADDR", or
                                "utf-8; ADDR" when not ASCII); required */
  const char *orcpt;         /* ORCPT as "type;address", or NULL */
  const char *action;        /* "failed", "delayed", "delivered",
                                "relayed" or "expanded"; required */
  const char *status;        /* "5.1.1" (RFC 3463); required */
  const char *remote_mta;    /* "mx.example.org" → "dns; mx.example.org" */
  const char *diagnostic;    /* the reply as received, "550 5.1.1 ..." →
                                "smtp; 550 5.1.1 ..."; the only field that
                                may hold line breaks (CRLF or LF): the
                                lines of a multi-line reply are joined
                                with spaces, then folded */
  const char *last_attempt;  /* RFC 5322 date */
  const char *will_retry_until; /* RFC 5322 date; written for "delayed"
                                   only (RFC 3464 §2.3.9), left out for
                                   the other actions */
};

struct tern_dsn {
  size_t size;                 /* sizeof (struct tern_dsn) */
  const char *reporting_mta;   /* our name; required */
  const char *from;            /* "MAILER-DAEMON@host"; required */
  const char *to;              /* the envelope sender; required */
  const char *date;            /* RFC 5322 date of now; required */
  const char *message_id;      /* "<id@host>"; required */
  const char *boundary;        /* MIME boundary, 1-70 of [0-9A-Za-z'()+_,-./:=?];
                                  must not occur in the original */
  const char *subject;         /* NULL: from the actions ("Undelivered
                                  Mail Returned to Sender", "Delayed
                                  Mail (still being retried)", ...) */
  const char *human;           /* NULL: a default explanation; may hold
                                  line breaks (CRLF or LF); no line may
                                  start with "--" and the boundary */
  const char *envid;           /* Original-Envelope-Id, or NULL */
  const char *received_from_mta; /* "dns; name" or NULL */
  const char *arrival_date;    /* RFC 5322 date, or NULL */
  const struct tern_dsn_rcpt *rcpts;
  size_t nrcpts;               /* >= 1 */
  /* What follows the head: TERN_RET_FULL the whole message
   * (message/rfc822, or message/global when utf8), TERN_RET_HDRS its
   * header (text/rfc822-headers, or message/global-headers when utf8),
   * TERN_RET_UNSPECIFIED nothing (no third part). */
  enum tern_dsn_ret include;
  bool utf8;                   /* RFC 6533 types (message/global-*,
                                  report-type=global-delivery-status as
                                  RFC 6522 §3 names the second part's
                                  subtype); fields may then be UTF-8 */
  bool eight_bit;              /* the original has 8-bit octets
                                  (BODY=8BITMIME): the report and its
                                  third part say Content-Transfer-Encoding:
                                  8bit (implied by utf8) */
};

static inline void tern_dsn_init(struct tern_dsn *d) {
  struct tern_dsn z = {0};
  z.size = sizeof z;
  z.include = TERN_RET_FULL;
  *d = z;
}

/*
 * Every text field must be ASCII without control characters (HTAB
 * allowed); with utf8 it may be UTF-8 (well formed). Header fields are
 * folded at spaces (RFC 5322 §2.2.3) to lines of 78 octets where the
 * words allow; a word that would make a line longer than 998 octets is
 * cut, and the cut shows as a space when the field is unfolded.
 *
 * The report from its first header field to the start of the third
 * part (its part header and blank line written), or to its end when
 * nothing is included. *out is malloc()ed (the caller frees it), CRLF
 * lines. Returns 0, TERN_EINVAL (a required field missing, a field with
 * CR, LF or NUL, a bad boundary, status or action, non-ASCII text without
 * utf8), TERN_ENOMEM. On failure *out is NULL.
 */
TERN_EXTERN int tern_dsn_head(const struct tern_dsn *d, char **out,
                              size_t *len);

/* What closes the report after the original: a CRLF (in case the
 * original did not end with one) and the closing boundary. Same rules
 * and errors as tern_dsn_head (empty when nothing is included). */
TERN_EXTERN int tern_dsn_tail(const struct tern_dsn *d, char **out,
                              size_t *len);

#ifdef __cplusplus
}
#endif

#endif /* TERN_DSN_H */
