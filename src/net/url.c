/*
 * Endpoint URL parsing (see url.h).
 */
#include "internal.h"

#include "url.h"

static const struct {
  const char *prefix;
  enum tern__scheme scheme;
  int port;
} schemes[] = {
    {"smtp+starttls://", TERN__SMTP_STARTTLS, 587},
    {"smtps://", TERN__SMTPS, 465},
    {"smtp://", TERN__SMTP, 25},
    {"lmtp://", TERN__LMTP, 24},
};

int tern__url_parse(const char *text, struct tern__url *out) {
  size_t k, n = sizeof schemes / sizeof schemes[0];
  if (!text || !out)
    return TERN_EINVAL;
  memset(out, 0, sizeof *out);
  for (k = 0; k < n; k++)
    if (!strncmp(text, schemes[k].prefix, strlen(schemes[k].prefix)))
      break;
  if (k == n)
    return TERN_ESYNTAX;
  out->scheme = schemes[k].scheme;
  out->port = schemes[k].port;
  const char *p = text + strlen(schemes[k].prefix);

  if (*p == '/') { /* unix socket: the rest is the path */
    size_t len = strlen(p);
    if (len < 2 || len >= sizeof out->path)
      return TERN_ESYNTAX;
    memcpy(out->path, p, len + 1);
    out->is_unix = true;
    out->port = 0;
    return 0;
  }
  const char *h = p, *he;
  if (*p == '[') { /* [IPv6] */
    h = p + 1;
    he = strchr(h, ']');
    if (!he)
      return TERN_ESYNTAX;
    p = he + 1;
  } else {
    he = p;
    while (*he && *he != ':' && *he != '/')
      he++;
    p = he;
  }
  if (he == h || (size_t)(he - h) >= sizeof out->host)
    return TERN_ESYNTAX;
  memcpy(out->host, h, (size_t)(he - h));
  if (*p == ':') {
    uint64_t port;
    const char *ps = ++p;
    while (tern__is_digit((unsigned char)*p))
      p++;
    if (tern__parse_u64(ps, (size_t)(p - ps), 65535, &port) != 0)
      return TERN_ESYNTAX;
    out->port = (int)port;
  }
  if (*p == '/')
    p++;
  return *p ? TERN_ESYNTAX : 0;
}
