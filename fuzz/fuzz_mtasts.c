/*
 * libFuzzer target for the MTA-STS parsers (src/core/mtasts.c,
 * tern/mtasts.h).
 *
 * The input, from an exact-size heap copy so AddressSanitizer traps any
 * read past its end, is read three ways, and the documented contracts
 * are checked (a violation traps):
 *   - as a _mta-sts TXT record: the result is 0, TERN_ESYNTAX or
 *     TERN_ENOSPACE; on 0 the id is 1..32 alphanumerics and the same
 *     input with a smaller buffer gives TERN_ENOSPACE;
 *   - as a policy file: 0 (mode 0..2, max_age <= 31557600, nmx <= 1000,
 *     at least one mx unless mode is none, every pattern lower case and
 *     matching itself, or its wildcard one label more), TERN_ESYNTAX or
 *     TERN_ETOOLONG, with nothing allocated on failure;
 *   - split at its first NUL as pattern and host for tern_mtasts_mx_match,
 *     which must agree with itself whatever the case of the host.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#include "tern/mtasts.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(bool ok) {
  if (!ok)
    __builtin_trap();
}

static void fuzz_txt(const char *buf, size_t n) {
  char id[33];
  size_t k, len;
  int rc = tern_mtasts_txt_parse(buf, n, id, sizeof id);
  check(rc == 0 || rc == TERN_ESYNTAX || rc == TERN_ENOSPACE);
  if (rc != 0)
    return;
  len = strlen(id);
  check(len >= 1 && len <= 32);
  for (k = 0; k < len; k++)
    check(tern__is_alnum((unsigned char)id[k]));
  check(tern_mtasts_txt_parse(buf, n, id, len) == TERN_ENOSPACE);
}

static void fuzz_policy(const char *buf, size_t n) {
  struct tern_mtasts_parsed p;
  size_t i;
  int rc = tern_mtasts_policy_parse(buf, n, &p);
  check(rc == 0 || rc == TERN_ESYNTAX || rc == TERN_ETOOLONG ||
        rc == TERN_ENOMEM);
  if (rc != 0) {
    check(p.mx == NULL && p.nmx == 0);
    return;
  }
  check(p.mode >= 0 && p.mode <= 2);
  check(p.max_age <= 31557600u);
  check(p.nmx <= 1000);
  check(p.mode == 0 || p.nmx >= 1);
  for (i = 0; i < p.nmx; i++) {
    const char *m = p.mx[i];
    size_t k;
    for (k = 0; m[k]; k++)
      check(!(m[k] >= 'A' && m[k] <= 'Z'));
    if (m[0] == '*') {
      char host[300] = "x";
      check(strlen(m) < sizeof host - 1);
      memcpy(host + 1, m + 1, strlen(m)); /* "x.rest" */
      check(tern_mtasts_mx_match(m, host));
    } else {
      check(tern_mtasts_mx_match(m, m));
    }
  }
  tern_mtasts_parsed_free(&p);
  check(p.mx == NULL);
}

static void fuzz_match(const char *buf, size_t n) {
  const char *nul = memchr(buf, '\0', n);
  char *host, *upper;
  size_t hl, k;
  bool a, b;
  if (nul == NULL)
    return;
  hl = n - (size_t)(nul - buf) - 1;
  host = malloc(hl + 1);
  upper = malloc(hl + 1);
  if (host == NULL || upper == NULL)
    __builtin_trap();
  memcpy(host, nul + 1, hl);
  host[hl] = '\0';
  for (k = 0; k <= hl; k++)
    upper[k] = (char)tern__upper((unsigned char)host[k]);
  a = tern_mtasts_mx_match(buf, host);
  b = tern_mtasts_mx_match(buf, upper);
  check(a == b);
  free(host);
  free(upper);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *buf = malloc(size ? size : 1);
  if (buf == NULL)
    __builtin_trap();
  if (size)
    memcpy(buf, data, size);
  fuzz_txt(buf, size);
  fuzz_policy(buf, size);
  fuzz_match(buf, size);
  free(buf);
  return 0;
}
