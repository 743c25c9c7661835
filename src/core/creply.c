/*
 * Client side of replies: the reply parser (RFC 5321 §4.2) and the
 * EHLO/LHLO capability parser (RFC 5321 §4.1.1.1, §2.4).
 *
 * The parser works on one bounded buffer that the session owns: every
 * byte of a line is copied there once, the line is checked when its LF
 * arrives, and only its text (without "ddd-" and the enhanced code) is
 * kept, so a reply never needs more than TERN__CREPLY_MAX octets however
 * it is split across feeds.
 */
#include "internal.h"

void tern__creply_init(struct tern__creply *p, char *buf) {
  memset(p, 0, sizeof *p);
  p->buf = buf;
}

void tern__creply_reset(struct tern__creply *p) {
  p->len = p->raw = p->line_raw = p->line_off = p->nlines = 0;
  p->code = 0;
  p->enhanced[0] = '\0';
}

/*
 * RFC 3463 §2: status-code = class "." subject "." detail, where class is
 * 2, 4 or 5 and equals the reply's first digit (RFC 2034 §4). Sets
 * p->enhanced from the start of t[0..n) when it holds one followed by SP
 * or the end of the line.
 */
static void parse_enhanced(struct tern__creply *p, const char *t, size_t n) {
  int cls = p->code / 100;
  size_t k = 0;

  if (cls != 2 && cls != 4 && cls != 5)
    return;
  while (k < n && t[k] != ' ')
    k++;
  if (k < 5 || k >= sizeof p->enhanced)
    return;
  char e[sizeof p->enhanced];
  memcpy(e, t, k);
  e[k] = '\0';
  if (tern__enhanced_valid(e, p->code))
    memcpy(p->enhanced, e, k + 1);
}

/* A whole line (its LF included) sits at buf + line_off. */
static int line_done(struct tern__creply *p, bool *done) {
  char *l = p->buf + p->line_off;
  size_t n = p->line_raw - 1; /* without the LF */
  bool last;

  /* CRLF ends a line; a bare LF is accepted as well (leniency towards
   * old servers that cannot hurt: replies carry no data). */
  if (n && l[n - 1] == '\r')
    n--;
  /* A CR anywhere else, or a NUL, is not text (RFC 5321 §4.2: textstring
   * is HT, SP and printable characters). */
  if (memchr(l, '\r', n) || memchr(l, '\0', n))
    return TERN_EPROTO;
  /* Reply-line = *( Reply-code "-" [ textstring ] CRLF )
   *              Reply-code [ SP textstring ] CRLF          (§4.2) */
  if (n < 3 || !tern__is_digit((unsigned char)l[0]) ||
      !tern__is_digit((unsigned char)l[1]) ||
      !tern__is_digit((unsigned char)l[2]))
    return TERN_EPROTO;
  int code = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
  if (code < 200 || code > 599)
    return TERN_EPROTO;
  if (n == 3)
    last = true;
  else if (l[3] == ' ')
    last = true;
  else if (l[3] == '-')
    last = false;
  else
    return TERN_EPROTO;
  /* §4.2.1: every line of a multiline reply carries the same code. */
  if (p->nlines && code != p->code)
    return TERN_EPROTO;
  if (p->nlines == TERN__CREPLY_LINES)
    return TERN_EPROTO;
  p->code = code;

  const char *t = n > 3 ? l + 4 : l + 3;
  size_t tl = n > 3 ? n - 4 : 0;
  if (!p->nlines)
    parse_enhanced(p, t, tl);
  size_t el = strlen(p->enhanced);
  if (el && tl >= el && memcmp(t, p->enhanced, el) == 0 &&
      (tl == el || t[el] == ' ')) {
    t += el + (tl > el);
    tl -= el + (tl > el);
  }
  memmove(l, t, tl);
  p->lines[p->nlines].ptr = l;
  p->lines[p->nlines].len = tl;
  p->nlines++;
  p->line_off += tl;
  p->len = p->line_off;
  p->line_raw = 0;
  *done = last;
  return 0;
}

long tern__creply_feed(struct tern__creply *p, const char *buf, size_t len,
                       bool *done) {
  const char *nl = memchr(buf, '\n', len);
  size_t take = nl ? (size_t)(nl - buf) + 1 : len;

  *done = false;
  if (take > TERN__CREPLY_LINE_MAX - p->line_raw ||
      take > TERN__CREPLY_MAX - p->raw)
    return TERN_EPROTO;
  /* line_off + line_raw <= raw: the kept texts are never longer than
   * what was received, so the copy stays inside buf. */
  memcpy(p->buf + p->line_off + p->line_raw, buf, take);
  p->line_raw += take;
  p->raw += take;
  if (nl && line_done(p, done) < 0)
    return TERN_EPROTO;
  return (long)take;
}

void tern__creply_get(const struct tern__creply *p,
                      struct tern_client_reply *r) {
  r->code = p->code;
  r->enhanced = p->enhanced[0] ? p->enhanced : NULL;
  r->lines = p->lines;
  r->nlines = p->nlines;
}

/* ---- capabilities ----------------------------------------------------------- */

/* The next space-separated word of a[0..n) from *i into *w; false when
 * there is none. */
static bool next_word(const char *a, size_t n, size_t *i, struct tern_str *w) {
  while (*i < n && a[*i] == ' ')
    (*i)++;
  w->ptr = a + *i;
  while (*i < n && a[*i] != ' ')
    (*i)++;
  w->len = (size_t)(a + *i - w->ptr);
  return w->len > 0;
}

/* Add the mechanisms in a[0..n) to the list (no duplicates, no junk). */
static void add_mechs(struct tern__caps *c, const char *a, size_t n) {
  size_t i = 0, have = strlen(c->mechs);
  struct tern_str w;
  while (next_word(a, n, &i, &w)) {
    if (!tern__mech_name_ok(w.ptr, w.len) ||
        tern__mech_listed(c->mechs, w.ptr, w.len))
      continue;
    if (have + (have > 0) + w.len + 1 > sizeof c->mechs)
      return;
    if (have)
      c->mechs[have++] = ' ';
    memcpy(c->mechs + have, w.ptr, w.len);
    have += w.len;
    c->mechs[have] = '\0';
  }
}

/* RFC 9422 §4.1: "LIMITS" *(SP limit-name "=" value); only RCPTMAX is
 * used by this client. */
static void parse_limits(struct tern__caps *c, const char *a, size_t n) {
  size_t i = 0;
  struct tern_str w;
  while (next_word(a, n, &i, &w)) {
    uint64_t v;
    if (w.len > 8 && tern__str_ieq(w.ptr, 8, "RCPTMAX=") &&
        tern__parse_u64(w.ptr + 8, w.len - 8, UINT32_MAX, &v) == 0)
      c->rcptmax = (unsigned)v;
  }
}

void tern__ehlo_caps(const struct tern_client_reply *r,
                     struct tern__caps *out) {
  static const struct {
    const char *kw;
    unsigned bit;
  } simple[] = {
      {"PIPELINING", TERN_EXT_PIPELINING},   /* RFC 2920 */
      {"8BITMIME", TERN_EXT_8BITMIME},       /* RFC 6152 */
      {"SMTPUTF8", TERN_EXT_SMTPUTF8},       /* RFC 6531 */
      {"ENHANCEDSTATUSCODES", TERN_EXT_ENHANCEDSTATUSCODES}, /* RFC 2034 */
      {"CHUNKING", TERN_EXT_CHUNKING},       /* RFC 3030 */
      {"BINARYMIME", TERN_EXT_BINARYMIME},   /* RFC 3030 */
      {"DSN", TERN_EXT_DSN},                 /* RFC 3461 */
      {"STARTTLS", TERN_EXT_STARTTLS},       /* RFC 3207 */
      {"REQUIRETLS", TERN_EXT_REQUIRETLS},   /* RFC 8689 */
  };

  memset(out, 0, sizeof *out);
  /* The first line is the server's domain and greeting; each further
   * line is ehlo-line = ehlo-keyword *( SP ehlo-param ) (§4.1.1.1). */
  for (size_t i = 1; i < r->nlines; i++) {
    const char *t = r->lines[i].ptr;
    size_t n = r->lines[i].len, k = 0;
    while (k < n && t[k] != ' ' && t[k] != '=')
      k++;
    /* "AUTH=LOGIN PLAIN" is the pre-RFC 4954 form some servers still
     * send; it is read like "AUTH LOGIN PLAIN". */
    const char *a = t + k + (k < n);
    size_t an = n - k - (k < n);
    bool known = false;
    for (size_t j = 0; j < sizeof simple / sizeof simple[0]; j++) {
      if (tern__str_ieq(t, k, simple[j].kw)) {
        out->caps |= simple[j].bit;
        known = true;
      }
    }
    if (known)
      continue;
    if (tern__str_ieq(t, k, "SIZE")) { /* RFC 1870 §4: SIZE [number] */
      uint64_t v;
      out->caps |= TERN_EXT_SIZE;
      while (an && *a == ' ') {
        a++;
        an--;
      }
      if (an && tern__parse_u64(a, an, UINT64_MAX, &v) == 0)
        out->max_size = v;
    } else if (tern__str_ieq(t, k, "AUTH")) { /* RFC 4954 §3 */
      out->caps |= TERN_EXT_AUTH;
      add_mechs(out, a, an);
    } else if (tern__str_ieq(t, k, "LIMITS")) {
      out->caps |= TERN_EXT_LIMITS;
      parse_limits(out, a, an);
    }
  }
}
