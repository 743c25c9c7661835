/*
 * tern — SMTP replies as data.
 *
 * A reply is {code, enhanced status code, text}. Applications build them;
 * the library validates and formats them in one place (src/core/reply.c),
 * so no decision is ever taken by sniffing a formatted string.
 */
#ifndef TERN_REPLY_H
#define TERN_REPLY_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * code:     a three-digit reply code, 200..599 (RFC 5321 §4.2).
 * enhanced: an RFC 3463 enhanced status code "c.s.d" whose class digit c
 *           equals the first digit of `code` (2, 4 or 5), or NULL for
 *           none: the library then sends the generic "c.0.0". NULL is the
 *           one way to say "none", here and in the replies a client
 *           session reports (tern_client_reply); "" is not a valid code
 *           (tern_reply_check() refuses it). Ignored for codes that
 *           never carry one (the 220 greeting, 334, 354, and the HELO/EHLO
 *           answer; RFC 2034 §3) and when the
 *           session has ENHANCEDSTATUSCODES switched off.
 * text:     NUL-terminated human-readable text, printable ASCII or UTF-8,
 *           without CR or NUL. A LF splits the reply into lines, each sent
 *           as its own "code-..." line. NULL means a default text.
 *
 * The library copies what it needs when the reply is submitted; the
 * strings may be freed right after.
 */
struct tern_reply {
  int code;
  const char *enhanced;
  const char *text;
};

/*
 * tern_reply_check() validates a reply: code range, the enhanced code's
 * syntax (class 2/4/5, subject 0-999, detail 0-999, RFC 3463 §2) and
 * class agreement, and the text's bytes. Returns 0 or TERN_EINVAL.
 */
TERN_EXTERN int tern_reply_check(const struct tern_reply *reply);

#ifdef __cplusplus
}
#endif
#endif /* TERN_REPLY_H */
