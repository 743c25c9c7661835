/*
 * tern — locale-free string helpers for the core. Nothing here looks at
 * the C locale: SMTP is defined over octets and ASCII, and a server must
 * parse "MAIL FROM" the same way whatever LC_CTYPE the process runs in.
 */
#include "internal.h"

/*
 * tern__str_ieq() says whether a[0..alen) equals the NUL-terminated
 * literal `lit`, ignoring ASCII case only (a Turkish locale cannot make
 * "i" match "I" differently). Bytes >= 0x80 compare exactly. `lit` is
 * normally upper case, but either case works. a may be NULL when alen is 0.
 */
bool tern__str_ieq(const char *a, size_t alen, const char *lit) {
  size_t i;

  for (i = 0; i < alen; i++) {
    if (lit[i] == '\0')
      return false;
    if (tern__upper((unsigned char)a[i]) != tern__upper((unsigned char)lit[i]))
      return false;
  }
  return lit[alen] == '\0';
}

/*
 * tern__parse_u64() parses s[0..len) as a decimal number: one or more
 * ASCII digits and nothing else (no sign, no spaces, no "0x"). Leading
 * zeros are allowed. Returns TERN_ESYNTAX for an empty string or any
 * non-digit, TERN_ERANGE when the value exceeds `max` (the check is done
 * before each multiplication, so it never wraps), else 0 with *out set.
 * *out is untouched on error.
 */
int tern__parse_u64(const char *s, size_t len, uint64_t max, uint64_t *out) {
  uint64_t v = 0;
  size_t i;

  if (s == NULL || len == 0)
    return TERN_ESYNTAX;
  /* Syntax first, so "99999999999999999999x" is a syntax error rather
   * than a range error. */
  for (i = 0; i < len; i++)
    if (!tern__is_digit((unsigned char)s[i]))
      return TERN_ESYNTAX;
  for (i = 0; i < len; i++) {
    unsigned d = (unsigned)((unsigned char)s[i] - '0');
    if (v > max / 10 || (v == max / 10 && d > max % 10))
      return TERN_ERANGE;
    v = v * 10 + d;
  }
  if (out != NULL)
    *out = v;
  return 0;
}

/*
 * tern__utf8_valid() says whether s[0..len) is well-formed UTF-8 as
 * RFC 3629 §4 defines it: no overlong forms (so no 0xC0, 0xC1 lead
 * bytes, no E0 80..9F, no F0 80..8F), no UTF-16 surrogates U+D800..DFFF
 * (ED A0..BF), nothing above U+10FFFF (F4 90.., F5..FF), no stray
 * continuation bytes and no sequence cut short by the end of the input.
 * An empty string is valid. s may be NULL when len is 0.
 */
bool tern__utf8_valid(const unsigned char *s, size_t len) {
  size_t i = 0;

  while (i < len) {
    unsigned char c = s[i];
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of 2nd byte */
    size_t need;

    if (c < 0x80) {
      i++;
      continue;
    }
    /* RFC 3629 §4: UTF8-2 .. UTF8-4 productions. */
    if (c >= 0xC2 && c <= 0xDF) {
      need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      need = 2;
      if (c == 0xE0)
        lo = 0xA0; /* overlong below U+0800 */
      else if (c == 0xED)
        hi = 0x9F; /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
      need = 3;
      if (c == 0xF0)
        lo = 0x90; /* overlong below U+10000 */
      else if (c == 0xF4)
        hi = 0x8F; /* above U+10FFFF */
    } else {
      return false; /* continuation byte, C0, C1 or F5..FF */
    }
    if (len - i - 1 < need)
      return false;
    if (s[i + 1] < lo || s[i + 1] > hi)
      return false;
    for (size_t k = 2; k <= need; k++)
      if (s[i + k] < 0x80 || s[i + k] > 0xBF)
        return false;
    i += need + 1;
  }
  return true;
}

/* ---- bounded string building, shared by server and client ---------------- */

size_t tern__cat(char *buf, size_t cap, size_t n, const char *str,
                 size_t len) {
  if (n >= cap)
    return n;
  if (len > cap - 1 - n)
    len = cap - 1 - n;
  memcpy(buf + n, str, len);
  n += len;
  buf[n] = '\0';
  return n;
}

size_t tern__cats(char *buf, size_t cap, size_t n, const char *str) {
  return tern__cat(buf, cap, n, str, strlen(str));
}

size_t tern__cat_u64(char *buf, size_t cap, size_t n, uint64_t v) {
  char d[24];
  size_t i = sizeof d;
  do {
    d[--i] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  return tern__cat(buf, cap, n, d + i, sizeof d - i);
}

/* ---- SASL (RFC 4422, RFC 4954), shared by server and client ------------- */

bool tern__mech_name_ok(const char *m, size_t n) {
  if (n < 1 || n > 20)
    return false;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)m[i];
    if (!tern__is_alnum(ch) && ch != '-' && ch != '_')
      return false;
  }
  return true;
}

bool tern__mech_listed(const char *list, const char *m, size_t len) {
  const char *p = list;
  while (*p) {
    while (*p == ' ')
      p++;
    size_t n = 0;
    while (p[n] && p[n] != ' ')
      n++;
    if (n && n == len) {
      size_t i = 0;
      while (i < n && tern__upper((unsigned char)p[i]) ==
                          tern__upper((unsigned char)m[i]))
        i++;
      if (i == n)
        return true;
    }
    p += n;
  }
  return false;
}

bool tern__base64_ok(const char *p, size_t n) {
  if (n == 1 && p[0] == '=')
    return true;
  if (n % 4)
    return false;
  size_t pad = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c == '=') {
      pad++;
      continue;
    }
    if (pad || !(tern__is_alnum(c) || c == '+' || c == '/'))
      return false;
  }
  return pad <= 2;
}
