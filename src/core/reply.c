/*
 * Reply validation and formatting: the one place where a reply becomes
 * bytes (RFC 5321 §4.2, RFC 3463 §2, RFC 2034).
 */
#include "internal.h"

/* One RFC 3463 number: "0" or 1-3 digits without a leading zero. */
static const char *enh_number(const char *p) {
  if (*p == '0')
    return tern__is_digit((unsigned char)p[1]) ? NULL : p + 1;
  int n = 0;
  while (tern__is_digit((unsigned char)*p) && n < 3) {
    p++;
    n++;
  }
  return n && !tern__is_digit((unsigned char)*p) ? p : NULL;
}

bool tern__enhanced_valid(const char *enh, int code) {
  /* status-code = class "." subject "." detail; class = "2"/"4"/"5" */
  if (!enh || enh[0] != '0' + code / 100 || enh[1] != '.')
    return false;
  const char *p = enh_number(enh + 2);
  if (!p || *p != '.')
    return false;
  p = enh_number(p + 1);
  return p && *p == '\0';
}

int tern_reply_check(const struct tern_reply *r) {
  if (!r || r->code < 200 || r->code > 599)
    return TERN_EINVAL;
  if (r->enhanced && !tern__enhanced_valid(r->enhanced, r->code))
    return TERN_EINVAL;
  if (!r->text)
    return 0;
  size_t line = 0, total = 0;
  for (const unsigned char *p = (const unsigned char *)r->text; *p; p++) {
    if (*p == '\n') {
      line = 0;
      continue;
    }
    /* Printable ASCII, TAB or 8-bit (UTF-8) only: never CR or NUL. */
    if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
      return TERN_EINVAL;
    /* code, separator, enhanced code (≤ 11) and CRLF stay in 512. */
    if (++line > TERN__REPLY_LINE_MAX - 18 ||
        ++total > TERN__REPLY_MAX - 64)
      return TERN_EINVAL;
  }
  return 0;
}

long tern__reply_format(char *out, size_t cap, int code, const char *enh,
                        const char *text) {
  size_t n = 0;
  const char *t = text ? text : "";
  size_t elen = enh ? strlen(enh) : 0;

  for (;;) {
    const char *nl = strchr(t, '\n');
    size_t tl = nl ? (size_t)(nl - t) : strlen(t);
    size_t need = 4 + (elen ? elen + (tl ? 1 : 0) : 0) + tl + 2;
    if (need > TERN__REPLY_LINE_MAX)
      return TERN_ETOOLONG;
    if (need > cap - n)
      return TERN_ENOSPACE;
    out[n++] = (char)('0' + code / 100);
    out[n++] = (char)('0' + code / 10 % 10);
    out[n++] = (char)('0' + code % 10);
    out[n++] = nl ? '-' : ' ';
    if (elen) {
      memcpy(out + n, enh, elen);
      n += elen;
      if (tl)
        out[n++] = ' ';
    }
    memcpy(out + n, t, tl);
    n += tl;
    out[n++] = '\r';
    out[n++] = '\n';
    if (!nl)
      return (long)n;
    t = nl + 1;
  }
}
