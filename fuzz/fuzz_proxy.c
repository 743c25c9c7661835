/*
 * libFuzzer target for the PROXY protocol parser and the CIDR lists
 * (src/net/proxy.c).
 *
 * The input is parsed as the first bytes of a connection, from an
 * exact-size heap copy so AddressSanitizer traps any read past len. The
 * documented contract is checked and any violation traps:
 *   - the result is TERN_EPROXY or in [0, min(len, TERN__PROXY_MAX)];
 *   - 0 only while len < TERN__PROXY_MAX;
 *   - *out is untouched unless the result is positive, and then holds
 *     AF_INET/AF_INET6 addresses of one family, or is local;
 *   - the result depends only on the bytes: shorter prefixes give 0 (or
 *     TERN_EPROXY if the whole is invalid), longer inputs the same header.
 * Then the same bytes, as NUL-terminated text, are parsed as a CIDR list
 * and a few addresses (and the parsed header's, if any) are matched.
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "proxy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static long parse_copy(const uint8_t *data, size_t n, struct tern__proxy *p) {
  char *buf = malloc(n ? n : 1);
  long rc;

  if (buf == NULL)
    __builtin_trap();
  if (n)
    memcpy(buf, data, n);
  rc = tern__proxy_parse(buf, n, p);
  free(buf);
  return rc;
}

static void check_family(const struct tern__proxy *p) {
  if (p->local) {
    if (p->src.ss_family != AF_UNSPEC || p->dst.ss_family != AF_UNSPEC)
      __builtin_trap();
    return;
  }
  if (p->src.ss_family != p->dst.ss_family)
    __builtin_trap();
  if (p->src.ss_family != AF_INET && p->src.ss_family != AF_INET6)
    __builtin_trap();
}

static void check_parse(const uint8_t *data, size_t size) {
  struct tern__proxy p, q, pattern;
  size_t cap = size < TERN__PROXY_MAX ? size : TERN__PROXY_MAX;
  long rc, r2;

  memset(&pattern, 0x5A, sizeof pattern);
  p = pattern;
  rc = parse_copy(data, size, &p);
  if (rc != TERN_EPROXY && (rc < 0 || (size_t)rc > cap))
    __builtin_trap();
  if (rc == 0 && size >= TERN__PROXY_MAX)
    __builtin_trap();
  if (rc <= 0 && memcmp(&p, &pattern, sizeof p) != 0)
    __builtin_trap();
  if (rc > 0)
    check_family(&p);

  /* a prefix: half the input, and one byte short */
  for (int i = 0; i < 2; i++) {
    size_t k = i == 0 ? size / 2 : (size ? size - 1 : 0);
    q = pattern;
    r2 = parse_copy(data, k, &q);
    if (rc > 0 && (size_t)rc <= k) {
      /* the whole header is in the prefix: the same answer */
      if (r2 != rc || memcmp(&p, &q, sizeof p) != 0)
        __builtin_trap();
    } else if (rc > 0) {
      if (r2 != 0)
        __builtin_trap();
    } else if (rc == 0) {
      if (r2 != 0)
        __builtin_trap();
    } else if (r2 != 0 && r2 != TERN_EPROXY) {
      __builtin_trap();
    }
  }
}

static void match_some(const struct tern__cidr_list *l,
                       const struct tern__proxy *p) {
  static const char *const v4[] = {"127.0.0.1", "0.0.0.0", "192.0.2.7",
                                   "255.255.255.255", "10.1.2.3"};
  static const char *const v6[] = {"::1", "::", "::ffff:127.0.0.1",
                                   "2001:db8::1", "fe80::1"};
  struct sockaddr_in sin;
  struct sockaddr_in6 sin6;
  size_t i;

  for (i = 0; i < sizeof v4 / sizeof v4[0]; i++) {
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    if (inet_pton(AF_INET, v4[i], &sin.sin_addr) != 1)
      __builtin_trap();
    bool m4 = tern__cidr_match(l, (const struct sockaddr *)&sin);
    /* the IPv4-mapped form must agree with the IPv4 entries; it may match
     * more (IPv6 entries), never less */
    memset(&sin6, 0, sizeof sin6);
    sin6.sin6_family = AF_INET6;
    sin6.sin6_addr.s6_addr[10] = 0xff;
    sin6.sin6_addr.s6_addr[11] = 0xff;
    memcpy(&sin6.sin6_addr.s6_addr[12], &sin.sin_addr, 4);
    if (m4 && !tern__cidr_match(l, (const struct sockaddr *)&sin6))
      __builtin_trap();
  }
  for (i = 0; i < sizeof v6 / sizeof v6[0]; i++) {
    memset(&sin6, 0, sizeof sin6);
    sin6.sin6_family = AF_INET6;
    if (inet_pton(AF_INET6, v6[i], &sin6.sin6_addr) != 1)
      __builtin_trap();
    (void)tern__cidr_match(l, (const struct sockaddr *)&sin6);
  }
  if (p != NULL && !p->local) {
    (void)tern__cidr_match(l, (const struct sockaddr *)&p->src);
    (void)tern__cidr_match(l, (const struct sockaddr *)&p->dst);
  }
}

static void check_cidr(const uint8_t *data, size_t size) {
  struct tern__cidr_list *l = (struct tern__cidr_list *)&l;
  struct tern__proxy p;
  const struct tern__proxy *pp = NULL;
  size_t bad = (size_t)-1, tlen;
  char *text;
  int rc;

  text = malloc(size + 1);
  if (text == NULL)
    __builtin_trap();
  if (size)
    memcpy(text, data, size);
  text[size] = '\0';
  tlen = strlen(text);

  rc = tern__cidr_parse(&l, text, &bad);
  if (rc == 0) {
    if (l == NULL || bad != (size_t)-1)
      __builtin_trap();
    if (tern__proxy_parse((const char *)data, size, &p) > 0)
      pp = &p;
    match_some(l, pp);
    tern__cidr_free(l);
  } else {
    if (l != NULL || (rc != TERN_ESYNTAX && rc != TERN_ENOMEM))
      __builtin_trap();
    /* *bad is the start of a token inside the text */
    if (rc == TERN_ESYNTAX) {
      if (bad >= tlen)
        __builtin_trap();
      if (text[bad] == ' ' || text[bad] == ',' || text[bad] == '\t')
        __builtin_trap();
    }
  }
  free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  check_parse(data, size);
  check_cidr(data, size);
  return 0;
}
