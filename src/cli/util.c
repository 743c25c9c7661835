/*
 * Helpers shared by `tern send` and `tern bench`: endpoint URLs, reply
 * formatting for messages, number parsing.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static bool has_prefix(const char *s, const char *p) {
  return strncmp(s, p, strlen(p)) == 0;
}

const char *cli_url_starttls(const char *url, bool starttls, char *buf,
                             size_t cap) {
  if (!starttls || !has_prefix(url, "smtp://"))
    return url;
  int n = snprintf(buf, cap, "smtp+starttls://%s", url + strlen("smtp://"));
  if (n < 0 || (size_t)n >= cap)
    return url;
  return buf;
}

bool cli_url_opportunistic(const char *url) {
  return has_prefix(url, "smtp://") || has_prefix(url, "lmtp://");
}

void cli_url_endpoint(const char *url, char *buf, size_t cap) {
  const char *p = strstr(url, "://");
  const char *dport = "25";
  if (has_prefix(url, "smtps://"))
    dport = "465";
  else if (has_prefix(url, "smtp+starttls://"))
    dport = "587";
  else if (has_prefix(url, "lmtp://"))
    dport = "24";
  if (!p) {
    snprintf(buf, cap, "%s", url);
    return;
  }
  p += 3;
  if (*p == '/') { /* unix socket */
    snprintf(buf, cap, "%s", p);
    return;
  }
  size_t n = strcspn(p, "/?#");
  /* a port is present when the last ':' follows any "]" */
  const char *rb = memchr(p, ']', n);
  const char *colon = NULL;
  for (size_t i = rb ? (size_t)(rb - p) : 0; i < n; i++)
    if (p[i] == ':')
      colon = p + i;
  if (colon)
    snprintf(buf, cap, "%.*s", (int)n, p);
  else
    snprintf(buf, cap, "%.*s:%s", (int)n, p, dport);
}

void cli_escape(const char *p, size_t n, char *buf, size_t cap) {
  size_t o = 0;
  if (cap == 0)
    return;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    char tmp[5];
    size_t k;
    if (c >= 0x20 && c < 0x7f) {
      tmp[0] = (char)c;
      k = 1;
    } else if (c >= 0x80) { /* UTF-8 text passes; a terminal copes */
      tmp[0] = (char)c;
      k = 1;
    } else {
      snprintf(tmp, sizeof tmp, "\\x%02x", c);
      k = 4;
    }
    if (o + k + 4 >= cap) {
      if (o + 3 < cap) {
        memcpy(buf + o, "...", 3);
        o += 3;
      }
      break;
    }
    memcpy(buf + o, tmp, k);
    o += k;
  }
  buf[o] = '\0';
}

void cli_format_reply(const struct tern_client_reply *r, char *buf,
                      size_t cap) {
  size_t o;
  const char *enh = r->enhanced ? r->enhanced : "";
  size_t elen = strlen(enh);
  int n = snprintf(buf, cap, "%d%s%s", r->code, elen ? " " : "", enh);
  if (n < 0 || (size_t)n >= cap)
    return;
  o = (size_t)n;
  for (size_t i = 0; i < r->nlines; i++) {
    const char *t = r->lines[i].ptr;
    size_t tl = r->lines[i].len;
    /* the text may still start with the enhanced code: show it once */
    if (elen && tl >= elen && !memcmp(t, enh, elen) &&
        (tl == elen || t[elen] == ' ')) {
      t += elen;
      tl -= elen;
      while (tl && *t == ' ')
        t++, tl--;
    }
    if (!tl)
      continue;
    if (o + 4 >= cap)
      break;
    const char *sep = i == 0 ? " " : " / ";
    size_t sl = strlen(sep);
    if (o + sl + 1 >= cap)
      break;
    memcpy(buf + o, sep, sl);
    o += sl;
    cli_escape(t, tl, buf + o, cap - o);
    o += strlen(buf + o);
  }
  buf[o] = '\0';
}

const char *cli_cmd_name(enum tern_client_cmd cmd) {
  switch (cmd) {
  case TERN_CMD_GREETING:
    return "greeting";
  case TERN_CMD_EHLO:
    return "EHLO";
  case TERN_CMD_STARTTLS:
    return "STARTTLS";
  case TERN_CMD_AUTH:
    return "AUTH";
  case TERN_CMD_MAIL:
    return "MAIL";
  case TERN_CMD_RCPT:
    return "RCPT";
  case TERN_CMD_DATA:
    return "DATA";
  case TERN_CMD_DATA_END:
    return "end of data";
  case TERN_CMD_BDAT:
    return "BDAT";
  case TERN_CMD_RSET:
    return "RSET";
  case TERN_CMD_NOOP:
    return "NOOP";
  case TERN_CMD_VRFY:
    return "VRFY";
  case TERN_CMD_QUIT:
    return "QUIT";
  }
  return "?";
}

int cli_parse_u64(const char *s, unsigned long long min,
                  unsigned long long max, unsigned long long *out) {
  char *end;
  if (!s || *s < '0' || *s > '9')
    return -1;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || *end || v < min || v > max)
    return -1;
  *out = v;
  return 0;
}

int cli_parse_seconds_ms(const char *s, unsigned *ms) {
  char *end;
  if (!s || !*s)
    return -1;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || *end || !(v > 0) || v > 86400 || isnan(v))
    return -1;
  double m = ceil(v * 1000.0);
  *ms = m < 1 ? 1 : (unsigned)m;
  return 0;
}
