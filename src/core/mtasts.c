/*
 * tern — the sans-IO parts of MTA-STS (RFC 8461): the `_mta-sts` TXT
 * record (§3.1), the policy file (§3.2) and MX pattern matching (§4.1).
 * Text in, values out: no I/O, no clock. The runtime (src/net/resolve.c)
 * fetches, caches and decides.
 */
#include "internal.h"

#include "tern/mtasts.h"

/* §3.2: "max_age: Max lifetime of the policy (plaintext non-negative
 * integer seconds, maximum value of 31557600)". */
#define MTASTS_MAX_AGE_MAX 31557600u
#define MTASTS_POLICY_MAX (64u * 1024u)
#define MTASTS_MX_MAX 1000u

static bool is_wsp(unsigned char c) { return c == ' ' || c == '\t'; }

static unsigned char lower(unsigned char c) {
  return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

/* Exactly the case-sensitive literal (RFC 7405 %s strings). */
static bool eq_lit(const char *s, size_t n, const char *lit) {
  size_t l = strlen(lit);
  return n == l && memcmp(s, lit, l) == 0;
}

/* §3.1 / §3.2 extension names: (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" /
 * "-" / "."). */
static bool ext_name_ok(const char *s, size_t n) {
  size_t i;
  if (n == 0 || n > 32 || !tern__is_alnum((unsigned char)s[0]))
    return false;
  for (i = 1; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!tern__is_alnum(c) && c != '_' && c != '-' && c != '.')
      return false;
  }
  return true;
}

/* ---- the TXT record (§3.1) ---------------------------------------------- */

/*
 *   sts-text-record = sts-version 1*(sts-sep sts-field) [sts-sep]
 *   sts-field       = sts-id / sts-extension
 *   sts-version     = %s"v=STSv1"
 *   sts-id          = %s"id=" 1*32(ALPHA / DIGIT)
 *   sts-sep         = *WSP %x3B *WSP
 *   sts-ext-value   = 1*(%x21-3A / %x3C / %x3E-7E)
 * A second id is refused: two ids cannot both say whether the policy
 * changed.
 */
int tern_mtasts_txt_parse(const char *txt, size_t len, char *id, size_t cap) {
  size_t i = 0, idlen = 0, nfields = 0;
  const char *idp = NULL;

  if (txt == NULL || len < 7 || memcmp(txt, "v=STSv1", 7) != 0)
    return TERN_ESYNTAX;
  i = 7;
  for (;;) {
    size_t start, eq, vend;
    /* sts-sep, or the end of the record */
    while (i < len && is_wsp((unsigned char)txt[i]))
      i++;
    if (i == len)
      break;
    if (txt[i] != ';')
      return TERN_ESYNTAX;
    i++;
    while (i < len && is_wsp((unsigned char)txt[i]))
      i++;
    if (i == len)
      break; /* the optional trailing sts-sep */
    start = i;
    while (i < len && txt[i] != '=' && txt[i] != ';' &&
           !is_wsp((unsigned char)txt[i]))
      i++;
    if (i == len || txt[i] != '=')
      return TERN_ESYNTAX;
    eq = i++;
    while (i < len) {
      unsigned char c = (unsigned char)txt[i];
      if (c < 0x21 || c > 0x7e || c == '=' || c == ';')
        break;
      i++;
    }
    vend = i;
    if (vend == eq + 1)
      return TERN_ESYNTAX;
    if (eq_lit(txt + start, eq - start, "id")) {
      size_t k;
      if (idp != NULL || vend - eq - 1 > 32)
        return TERN_ESYNTAX;
      for (k = eq + 1; k < vend; k++)
        if (!tern__is_alnum((unsigned char)txt[k]))
          return TERN_ESYNTAX;
      idp = txt + eq + 1;
      idlen = vend - eq - 1;
    } else if (!ext_name_ok(txt + start, eq - start)) {
      return TERN_ESYNTAX;
    }
    nfields++;
  }
  if (idp == NULL || nfields == 0)
    return TERN_ESYNTAX;
  if (id == NULL || cap <= idlen)
    return TERN_ENOSPACE;
  memcpy(id, idp, idlen);
  id[idlen] = '\0';
  return 0;
}

/* ---- the policy file (§3.2) -----------------------------------------------
 */

/*
 * sts-policy-mx-value = ["*."] Domain, Domain as in RFC 5321:
 * sub-domain *("." sub-domain), sub-domain = Let-dig [Ldh-str]. Labels of
 * at most 63 octets, the name at most 253.
 */
static bool mx_pattern_ok(const char *s, size_t n) {
  size_t i = 0, lab = 0;

  if (n >= 2 && s[0] == '*' && s[1] == '.')
    i = 2;
  if (n - i == 0 || n - i > 253)
    return false;
  for (; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '.') {
      if (lab == 0 || s[i - 1] == '-')
        return false;
      lab = 0;
      continue;
    }
    if (tern__is_alnum(c)) {
      lab++;
    } else if (c == '-') {
      if (lab == 0)
        return false;
      lab++;
    } else {
      return false;
    }
    if (lab > 63)
      return false;
  }
  return lab > 0 && s[n - 1] != '-';
}

/*
 * One pass over the policy. With `fill` NULL it checks and counts (the
 * mx patterns and their total length); with `fill` it writes the
 * patterns, lower case, into fill->mx (pointers) and `strings`.
 */
struct pol_scan {
  int mode;
  uint32_t max_age;
  size_t nmx, mxbytes;
};

static int policy_scan(const char *text, size_t len, struct pol_scan *sc,
                       char **mx, char *strings) {
  bool have_version = false, have_mode = false, have_max_age = false;
  size_t i = 0, nmx = 0, bytes = 0;

  memset(sc, 0, sizeof *sc);
  while (i < len) {
    size_t ls = i, le, kend, vs, ve;
    /* a line: up to LF; a CR just before the LF is part of the term */
    while (i < len && text[i] != '\n')
      i++;
    le = i;
    if (i < len)
      i++; /* the LF */
    if (le > ls && text[le - 1] == '\r')
      le--;
    if (le == ls)
      continue; /* blank lines: tolerated (many files end with one) */
    for (kend = ls; kend < le && text[kend] != ':'; kend++) {
      if (text[kend] == '\r' || text[kend] == '\0')
        return TERN_ESYNTAX;
    }
    if (kend == le)
      return TERN_ESYNTAX;
    vs = kend + 1;
    while (vs < le && is_wsp((unsigned char)text[vs]))
      vs++;
    ve = le;
    while (ve > vs && is_wsp((unsigned char)text[ve - 1]))
      ve--;
    {
      size_t k;
      for (k = vs; k < ve; k++) {
        unsigned char c = (unsigned char)text[k];
        if (c < 0x20 && c != '\t')
          return TERN_ESYNTAX; /* CR or a control inside a value */
        if (c == 0x7f)
          return TERN_ESYNTAX;
      }
    }
    if (eq_lit(text + ls, kend - ls, "version")) {
      if (have_version || !eq_lit(text + vs, ve - vs, "STSv1"))
        return TERN_ESYNTAX;
      have_version = true;
    } else if (eq_lit(text + ls, kend - ls, "mode")) {
      if (have_mode)
        return TERN_ESYNTAX;
      if (eq_lit(text + vs, ve - vs, "none"))
        sc->mode = 0;
      else if (eq_lit(text + vs, ve - vs, "testing"))
        sc->mode = 1;
      else if (eq_lit(text + vs, ve - vs, "enforce"))
        sc->mode = 2;
      else
        return TERN_ESYNTAX;
      have_mode = true;
    } else if (eq_lit(text + ls, kend - ls, "max_age")) {
      uint64_t v;
      /* sts-policy-max-age-value = 1*10(DIGIT). A value above the
       * maximum is cut to it rather than refused: refusing would drop an
       * enforce policy and fail open. */
      if (have_max_age || ve - vs > 10 ||
          tern__parse_u64(text + vs, ve - vs, UINT64_MAX, &v) != 0)
        return TERN_ESYNTAX;
      sc->max_age = v > MTASTS_MAX_AGE_MAX ? MTASTS_MAX_AGE_MAX : (uint32_t)v;
      have_max_age = true;
    } else if (eq_lit(text + ls, kend - ls, "mx")) {
      size_t k;
      if (!mx_pattern_ok(text + vs, ve - vs))
        return TERN_ESYNTAX;
      if (nmx == MTASTS_MX_MAX)
        return TERN_ETOOLONG;
      if (mx != NULL) {
        mx[nmx] = strings + bytes;
        for (k = vs; k < ve; k++)
          strings[bytes++] = (char)lower((unsigned char)text[k]);
        strings[bytes++] = '\0';
      } else {
        bytes += ve - vs + 1;
      }
      nmx++;
    } else if (!ext_name_ok(text + ls, kend - ls)) {
      return TERN_ESYNTAX; /* unknown keys are ignored, malformed ones not */
    }
  }
  if (!have_version || !have_mode || !have_max_age)
    return TERN_ESYNTAX;
  if (nmx == 0 && sc->mode != 0)
    return TERN_ESYNTAX;
  sc->nmx = nmx;
  sc->mxbytes = bytes;
  return 0;
}

/*
 * Two passes: the first checks everything and sizes the one block that
 * holds the pointer array and the patterns, the second fills it. On any
 * error nothing is allocated and *out is zeroed.
 */
int tern_mtasts_policy_parse(const char *text, size_t len,
                             struct tern_mtasts_parsed *out) {
  struct pol_scan sc;
  size_t ptrs;
  char **block;
  int rc;

  if (out == NULL)
    return TERN_EINVAL;
  memset(out, 0, sizeof *out);
  if (text == NULL && len != 0)
    return TERN_EINVAL;
  if (len > MTASTS_POLICY_MAX)
    return TERN_ETOOLONG;
  rc = policy_scan(text, len, &sc, NULL, NULL);
  if (rc != 0)
    return rc;
  ptrs = (sc.nmx ? sc.nmx : 1) * sizeof(char *);
  block = tern__malloc(NULL, ptrs + sc.mxbytes + 1);
  if (block == NULL)
    return TERN_ENOMEM;
  rc = policy_scan(text, len, &sc, block, (char *)block + ptrs);
  if (rc != 0) { /* cannot happen: the same bytes passed a moment ago */
    tern__free(NULL, block);
    return rc;
  }
  out->mode = sc.mode;
  out->max_age = sc.max_age;
  out->mx = block;
  out->nmx = sc.nmx;
  return 0;
}

void tern_mtasts_parsed_free(struct tern_mtasts_parsed *p) {
  if (p == NULL)
    return;
  tern__free(NULL, p->mx);
  memset(p, 0, sizeof *p);
}

/* ---- MX matching (§4.1) ----------------------------------------------------
 */

static bool ieq_n(const char *a, const char *b, size_t n) {
  size_t i;
  for (i = 0; i < n; i++)
    if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
      return false;
  return true;
}

/*
 * §4.1: "a candidate MX matches a pattern when ... the pattern
 * '*.example.com' matches 'mail.example.com' but not 'example.com' or
 * 'foo.bar.example.com'": a wildcard stands for exactly one whole label,
 * the leftmost. A trailing dot on the host (an absolute name) is ignored.
 */
bool tern_mtasts_mx_match(const char *pattern, const char *host) {
  size_t pl, hl, i;

  if (pattern == NULL || host == NULL)
    return false;
  pl = strlen(pattern);
  hl = strlen(host);
  if (hl > 0 && host[hl - 1] == '.')
    hl--;
  if (pl > 0 && pattern[pl - 1] == '.')
    pl--;
  if (pl == 0 || hl == 0)
    return false;
  if (pl >= 2 && pattern[0] == '*' && pattern[1] == '.') {
    const char *rest = pattern + 1; /* ".example.org" */
    size_t rl = pl - 1;
    if (rl < 2 || hl <= rl)
      return false;
    /* one label before the suffix: no dot in host[0 .. hl-rl), not empty */
    for (i = 0; i < hl - rl; i++)
      if (host[i] == '.')
        return false;
    return ieq_n(host + (hl - rl), rest, rl);
  }
  return pl == hl && ieq_n(pattern, host, pl);
}
