/*
 * tern — RFC 5321 §4.1.2 paths (the <...> in MAIL FROM and RCPT TO).
 */
#ifndef TERN_ADDRESS_H
#define TERN_ADDRESS_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Options for tern_path_parse(). */
enum tern_path_opt {
  TERN_PATH_ALLOW_NULL = 1u << 0,       /* accept "<>" (MAIL FROM) */
  TERN_PATH_ALLOW_UTF8 = 1u << 1,       /* RFC 6531 UTF-8 local/domain */
  TERN_PATH_ALLOW_POSTMASTER = 1u << 2, /* "<Postmaster>" without domain */
  TERN_PATH_ALLOW_NO_BRACKETS = 1u << 3 /* leniency: "a@b" without <> */
};

/* Facts about a parsed path, set in tern_path.flags. */
enum tern_path_flag {
  TERN_PATHF_NULL = 1u << 0,       /* the null path <> */
  TERN_PATHF_UTF8 = 1u << 1,       /* contains non-ASCII (valid UTF-8) */
  TERN_PATHF_QUOTED = 1u << 2,     /* local part is a quoted string */
  TERN_PATHF_LITERAL = 1u << 3,    /* domain is an address literal [...] */
  TERN_PATHF_ROUTE = 1u << 4,      /* a source route was present, dropped */
  TERN_PATHF_POSTMASTER = 1u << 5  /* bare <Postmaster> */
};

/* RFC 5321 §4.5.3.1 size limits, in octets. */
#define TERN_LOCAL_PART_MAX 64
#define TERN_DOMAIN_MAX 255
#define TERN_PATH_MAX 256

/*
 * A parsed path. All strings point into the parsed input, exactly as sent
 * (a quoted local part keeps its quotes and backslashes), and live as long
 * as that input.
 *   mailbox: "local@domain" without brackets and without a source route;
 *            empty for <>; "Postmaster" for a bare postmaster.
 *   local:   the local part; domain: the domain or "[literal]" (empty
 *            for <> and bare Postmaster).
 */
struct tern_path {
  struct tern_str mailbox;
  struct tern_str local;
  struct tern_str domain;
  unsigned flags;
};

/*
 * tern_path_parse() parses a path at the start of s[0..len): "<", an
 * optional source route (accepted and dropped, RFC 5321 §4.1.2 and
 * Appendix C), a mailbox, ">". On success fills *out, stores the number of
 * bytes consumed (through the ">") in *consumed, and returns 0. Errors:
 *   TERN_ESYNTAX    malformed path
 *   TERN_ETOOLONG   local part > 64, domain > 255 or path > 256 octets
 *   TERN_ENONASCII  8-bit bytes without TERN_PATH_ALLOW_UTF8
 *   TERN_EBADUTF8   8-bit bytes that are not valid UTF-8
 *   TERN_EINVAL     NULL arguments
 * Pure function; thread-safe.
 */
TERN_EXTERN int tern_path_parse(const char *s, size_t len, unsigned opts,
                                struct tern_path *out, size_t *consumed);

#ifdef __cplusplus
}
#endif
#endif /* TERN_ADDRESS_H */
