/*
 * tern/mtasts.h — the sans-IO parts of MTA-STS (RFC 8461): the
 * `_mta-sts` TXT record, the policy file, and matching an MX host
 * against the policy's patterns. No I/O, no clock: the runtime
 * (tern/resolve.h) fetches and caches; these only read text.
 * Every function here is fuzzed (fuzz/fuzz_mtasts.c).
 */
#ifndef TERN_MTASTS_H
#define TERN_MTASTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <tern/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Read a `_mta-sts.DOMAIN` TXT record (its strings joined), e.g.
 * "v=STSv1; id=20160831085700Z;". Writes the id (1..32 alphanumerics)
 * into id[cap]. Returns 0; TERN_ESYNTAX (not "v=STSv1" first, no id,
 * a bad id or a malformed field); TERN_ENOSPACE (cap too small).
 * Unknown fields are ignored (§3.1).
 */
TERN_EXTERN int tern_mtasts_txt_parse(const char *txt, size_t len, char *id,
                                      size_t cap);

/* A parsed policy. Strings point into the parser's own copy. */
struct tern_mtasts_parsed {
  int mode;               /* enum tern_mtasts_mode (tern/resolve.h):
                             0 none, 1 testing, 2 enforce */
  uint32_t max_age;       /* seconds, 0..31557600 (a larger value of
                             at most 10 digits is cut to 31557600:
                             refusing it would drop the policy) */
  char **mx;              /* patterns, lower case */
  size_t nmx;
};

/*
 * Parse a policy file (§3.2): "version: STSv1", "mode:", "max_age:",
 * one or more "mx:" (required unless mode is none); lines end in CRLF
 * or LF; unknown keys are ignored. Fills *out (free with
 * tern_mtasts_parsed_free). Returns 0; TERN_ESYNTAX (a required field
 * missing or twice, a bad value; nothing allocated); TERN_ETOOLONG
 * (over 64 KiB or over 1000 mx lines); TERN_ENOMEM.
 */
TERN_EXTERN int tern_mtasts_policy_parse(const char *text, size_t len,
                                         struct tern_mtasts_parsed *out);
TERN_EXTERN void tern_mtasts_parsed_free(struct tern_mtasts_parsed *p);

/*
 * Does MX host `host` (no trailing dot, any case) match `pattern`? An
 * exact name, or "*.example.org" which matches exactly one more label
 * on the left ("mx.example.org", not "a.b.example.org", not
 * "example.org"). Case-insensitive.
 */
TERN_EXTERN bool tern_mtasts_mx_match(const char *pattern, const char *host);

#ifdef __cplusplus
}
#endif
#endif /* TERN_MTASTS_H */
