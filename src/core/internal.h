/*
 * Internal declarations shared inside src/core. First include of every
 * core .c file. Nothing here is public API; names are tern__<module>_*.
 *
 * src/core does no I/O: no <uv.h>, no OpenSSL SSL headers, no sockets, no
 * clock, no <ctype.h> (locale-free helpers below instead).
 */
#ifndef TERN_CORE_INTERNAL_H
#define TERN_CORE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tern/tern.h"

/* ---- allocation (mem.c) ------------------------------------------------ */

/* Allocate/free through hooks (NULL hooks = libc). Never abort. */
void *tern__malloc(const struct tern_mem *m, size_t n);
void tern__free(const struct tern_mem *m, void *p);
/* n*size with overflow check; NULL on overflow or failure. */
void *tern__calloc_array(const struct tern_mem *m, size_t n, size_t size);

/* Copy a size-tagged public struct over defaults (ABI rule, DESIGN §1):
 * shorter is fine, longer only with zero unknown fields. 0/TERN_EINVAL. */
int tern__copy_sized(void *dst, size_t dst_size, const void *src);

/* A constructor's config and callbacks copied over the defaults in cfg
 * and cb (tern__copy_sized; NULL keeps the defaults), and the config's
 * allocator hooks (*hooks, its `mem` field) moved into *mem. 0 or
 * TERN_EINVAL. */
int tern__copy_args(void *cfg, size_t cfg_size, const void *cfg_in, void *cb,
                    size_t cb_size, const void *cb_in,
                    const struct tern_mem **hooks, struct tern_mem *mem);

/* ---- ASCII helpers (str.c), locale-free ----------------------------------- */

static inline bool tern__is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static inline bool tern__is_alpha(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
static inline bool tern__is_alnum(unsigned char c) {
  return tern__is_alpha(c) || tern__is_digit(c);
}
static inline unsigned char tern__upper(unsigned char c) {
  return (c >= 'a' && c <= 'z') ? (unsigned char)(c - 32) : c;
}
static inline bool tern__is_hex_upper(unsigned char c) {
  return tern__is_digit(c) || (c >= 'A' && c <= 'F');
}

/* Case-insensitive (ASCII) equality of a[0..alen) and the NUL-terminated
 * upper-case literal `lit`. */
bool tern__str_ieq(const char *a, size_t alen, const char *lit);

/* Parse a decimal unsigned integer that must fill s[0..len) exactly;
 * no sign, no spaces, at least one digit. Returns 0, TERN_ESYNTAX or
 * TERN_ERANGE (> max). */
int tern__parse_u64(const char *s, size_t len, uint64_t max, uint64_t *out);

/* Valid UTF-8 (RFC 3629: no overlongs, no surrogates, ≤ U+10FFFF)? */
bool tern__utf8_valid(const unsigned char *s, size_t len);

/*
 * Bounded string building: append str[0..len) to buf[0..cap) at offset
 * n and NUL-terminate; what does not fit (cap - 1 octets at most) is cut
 * off. Returns the new length, or n unchanged when n >= cap. Callers size
 * their buffers so that nothing is ever cut. _cats() appends a C string,
 * _cat_u64() a number in decimal.
 */
size_t tern__cat(char *buf, size_t cap, size_t n, const char *str, size_t len);
size_t tern__cats(char *buf, size_t cap, size_t n, const char *str);
size_t tern__cat_u64(char *buf, size_t cap, size_t n, uint64_t v);

/* An output queue's octets [*off, *len) of which n (at most all) went
 * out; an empty queue starts over at 0. Server and client sessions. */
static inline void tern__out_consume(size_t *off, size_t *len, size_t n) {
  if (n > *len - *off)
    n = *len - *off;
  *off += n;
  if (*off == *len)
    *off = *len = 0;
}

/* ---- SASL texts (str.c), one rule for server and client ---------------- */

/* RFC 4422 §3.1: sasl-mech = 1*20mech-char; mech-char = UPPER-ALPHA /
 * DIGIT / "-" / "_" (lower case accepted: names compare without case). */
bool tern__mech_name_ok(const char *m, size_t n);

/* Is mechanism m[0..len) in the space-separated list (ASCII case
 * insensitive)? */
bool tern__mech_listed(const char *list, const char *m, size_t len);

/*
 * Is p[0..n) an AUTH response line (RFC 4954 §4) that may go on the wire?
 * The one rule, for what the server accepts and what the client sends:
 * RFC 4648 §4 base64 — the alphabet A-Z a-z 0-9 + /, a length that is a
 * multiple of 4, at most two "=" and only at the end (padding required,
 * no spaces, no line breaks) — plus the two empty responses of RFC 4954
 * §4: "" (an empty continuation line) and "=" (an empty initial
 * response). It checks the form only; decoding is the SASL layer's job.
 * "*" (cancel) is not base64 and is handled before this.
 */
bool tern__base64_ok(const char *p, size_t n);

/* ---- ESMTP parameters (params.c) ------------------------------------------ */

/*
 * Parse the parameters after a MAIL FROM path: `args` is the text after
 * the ">" (leading spaces allowed), writable because xtext values are
 * decoded in place (decoding only shrinks). `ext` is the effective
 * TERN_EXT_* mask of the session (a parameter of an extension that is off
 * is unknown; REQUIRETLS is passed only when TLS is active). On failure
 * *bad is the offending "KEY[=VALUE]" text.
 * Returns 0 or:
 *   TERN_EUNKNOWN    unknown parameter           -> 555 5.5.4
 *   TERN_ESYNTAX     bad value or syntax          -> 501 5.5.4
 *   TERN_EDUPLICATE  parameter given twice        -> 501 5.5.4
 *   TERN_ERANGE      SIZE value not a number that fits -> 501 5.5.4
 */
int tern__mail_params_parse(char *args, size_t len, unsigned ext,
                            struct tern_mail_params *out, struct tern_str *bad);

/* The same for RCPT TO (NOTIFY, ORCPT with DSN on). */
int tern__rcpt_params_parse(char *args, size_t len, unsigned ext,
                            struct tern_rcpt_params *out, struct tern_str *bad);

/* An IPv4 dotted quad (RFC 5321 §4.1.3 IPv4-address-literal) / an IPv6
 * address in the IPv6-addr forms of §4.1.3, exactly p[0..n). */
bool tern__ipv4_valid(const char *p, size_t n);
bool tern__ipv6_valid(const char *p, size_t n);

/* Decode RFC 3461 §4 xtext in place ("+HH" with upper-case hex). Returns
 * the new length, or TERN_ESYNTAX (bad "+", chars outside 33..126, '='). */
long tern__xtext_decode(char *s, size_t len);

/* ---- server session, for the runtime (server.c) ------------------------------ */

/* The notify hook a session carries, so the runtime can tell its own
 * sessions from ones an application created. */
tern_server_notify_fn
tern__server_session_notify_fn(const struct tern_server_session *s);

/* ---- replies (reply.c) ------------------------------------------------------ */

/* Longest reply the session will format: every reply fits the output
 * buffer's reserve (RFC 5321 §4.5.3.1.5 caps each line at 512 octets). */
#define TERN__REPLY_MAX 2048
#define TERN__REPLY_LINE_MAX 512

/* Is `enh` a valid RFC 3463 code of class code/100? */
bool tern__enhanced_valid(const char *enh, int code);

/*
 * Format a reply into out[0..cap): each text line (split on LF) becomes
 * "CODE-[ENH ]text\r\n", the last "CODE [ENH ]text\r\n". `enh` NULL
 * leaves the enhanced code out. Inputs must have passed the checks of
 * tern_reply_check(). Returns the length, or TERN_ENOSPACE/TERN_ETOOLONG
 * (a line over 512 octets).
 */
long tern__reply_format(char *out, size_t cap, int code, const char *enh,
                        const char *text);

/* ---- client session pieces (creply.c, dot.c, params.c) ----------------------- */

/* Reply parser limits (RFC 5321 §4.5.3.1.5 says 512 per line; we accept
 * more from real servers, but never without bound). */
#define TERN__CREPLY_LINE_MAX 2048 /* octets per line, CRLF included */
#define TERN__CREPLY_LINES 100     /* lines per reply */
#define TERN__CREPLY_MAX 16384     /* octets per reply, as received */
#define TERN__MECHS_MAX 512        /* AUTH mechanism list we keep */

/*
 * A server reply being assembled (RFC 5321 §4.2). `buf` is
 * TERN__CREPLY_MAX octets that the owner provides; the texts of the lines
 * are kept there (without "ddd-" and, when present, the enhanced code),
 * and lines[] point into it. The parser never allocates.
 */
struct tern__creply {
  char *buf;
  size_t len;      /* octets used in buf (finished lines + current one) */
  size_t raw;      /* octets of the reply received so far */
  size_t line_raw; /* octets of the current line received so far */
  size_t line_off; /* where the current line starts in buf */
  struct tern_str lines[TERN__CREPLY_LINES];
  size_t nlines; /* finished lines */
  int code;
  char enhanced[16]; /* "" or "c.s.d" of the first line */
};

/* Start with an empty reply; `buf` must hold TERN__CREPLY_MAX octets. */
void tern__creply_init(struct tern__creply *p, char *buf);

/* Forget the reply (after it was handled, or at STARTTLS). */
void tern__creply_reset(struct tern__creply *p);

/*
 * Parse buf[0..len). Returns the octets consumed: up to and including the
 * LF of the last line of a reply (then *done is true and the reply stays
 * available until tern__creply_reset()), or all of them. Returns
 * TERN_EPROTO for a malformed reply: bad code, mixed codes, a bare CR or
 * a NUL, or a limit above exceeded.
 */
long tern__creply_feed(struct tern__creply *p, const char *buf, size_t len,
                       bool *done);

/* The finished reply as the public struct; it points into *p. */
void tern__creply_get(const struct tern__creply *p,
                      struct tern_client_reply *r);

/* What an EHLO/LHLO reply offers. */
struct tern__caps {
  unsigned caps;     /* TERN_EXT_* */
  uint64_t max_size; /* SIZE n; 0 = none announced */
  unsigned rcptmax;  /* LIMITS RCPTMAX=n; 0 = none */
  char mechs[TERN__MECHS_MAX]; /* AUTH mechanisms, space-separated */
};

/* Parse the extension lines of a 2xx EHLO/LHLO reply into *out. Unknown
 * keywords are ignored; keywords are case-insensitive (RFC 5321 §2.4). */
void tern__ehlo_caps(const struct tern_client_reply *r,
                     struct tern__caps *out);

/*
 * The body encoder behind tern_dot_stuff(): CRLF-normalise src[0..len)
 * and, with `dots`, dot-stuff it; `final` closes the last line and, with
 * `dots`, adds ".\r\n". dst must hold 2 * len + 7 octets. Returns the
 * octets written. `state` as for tern_dot_stuff().
 */
size_t tern__stuff(unsigned *state, const char *src, size_t len, bool final,
                   bool dots, char *dst);

/*
 * Encode src[0..len) as RFC 3461 §4 xtext into dst[0..cap): octets
 * outside 33..126, "+" and "=" become "+HH" (upper-case hex). Returns the
 * length, or TERN_ENOSPACE when it does not fit (3 * len always does).
 */
long tern__xtext_encode(char *dst, size_t cap, const char *src, size_t len);

#endif /* TERN_CORE_INTERNAL_H */
