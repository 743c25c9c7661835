/*
 * tern — ESMTP parameters of MAIL FROM and RCPT TO (RFC 5321 §4.1.2
 * Mail-parameters / Rcpt-parameters) and RFC 3461 xtext.
 *
 * The caller's buffer is split into SP-separated "keyword[=value]"
 * tokens. Each token is first checked against the generic esmtp-param
 * syntax, then looked up; a keyword whose extension is switched off is
 * unknown (RFC 5321 §4.1.1.11: 555 for parameters the server "does not
 * recognize or cannot implement"). xtext values are decoded in place,
 * only once the whole token has been checked, so that *bad always shows
 * the token exactly as the client sent it.
 */
#include <limits.h>

#include "internal.h"

/* A "keyword[=value]" token inside the caller's buffer. */
struct param {
  char *tok;
  size_t toklen;
  const char *key;
  size_t keylen;
  char *val; /* NULL when there is no "=" */
  size_t vallen;
};

#define ENVID_MAX 100
#define ORCPT_MAX 500

/* Value of an upper-case hex digit (checked by the caller). */
static unsigned hexval(char c) {
  return tern__is_digit((unsigned char)c) ? (unsigned)(c - '0')
                                          : (unsigned)(c - 'A' + 10);
}

/*
 * Check RFC 3461 §4 xtext and return its decoded length, or TERN_ESYNTAX.
 *   xtext   = *( xchar / hexchar )
 *   xchar   = %d33-126 except "+" and "="
 *   hexchar = "+" 2(DIGIT / "A".."F")   -- upper case only
 * With `printable`, every decoded octet must also be printable US-ASCII
 * (%d32-126): RFC 3461 §4.2 and §4.4 require it of ORCPT and ENVID, and
 * it keeps control bytes out of logs and DSNs.
 */
static long xtext_check(const char *s, size_t len, bool printable) {
  size_t i = 0, n = 0;

  while (i < len) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == '+') {
      unsigned v;
      if (len - i < 3 || !tern__is_hex_upper((unsigned char)s[i + 1]) ||
          !tern__is_hex_upper((unsigned char)s[i + 2]))
        return TERN_ESYNTAX;
      v = hexval(s[i + 1]) * 16 + hexval(s[i + 2]);
      if (printable && (v < 32 || v > 126))
        return TERN_ESYNTAX;
      i += 3;
    } else {
      if (ch < 33 || ch > 126 || ch == '=')
        return TERN_ESYNTAX;
      i++;
    }
    n++;
  }
  if (n > (size_t)LONG_MAX)
    return TERN_ESYNTAX;
  return (long)n;
}

/* Decode xtext that xtext_check() accepted. Returns the new length. */
static size_t xtext_unescape(char *s, size_t len) {
  size_t i = 0, o = 0;

  while (i < len) {
    if (s[i] == '+') {
      s[o++] = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
      i += 3;
    } else {
      s[o++] = s[i++];
    }
  }
  return o;
}

/*
 * tern__xtext_decode() decodes RFC 3461 §4 xtext in s[0..len) in place
 * ("+HH" with upper-case hex digits becomes the octet HH; other bytes
 * must be %d33-126 except "+" and "="). Decoding only shrinks, so the
 * result fits; any octet, even NUL, may come out of "+HH". Returns the
 * decoded length, or TERN_ESYNTAX with s left unchanged.
 */
long tern__xtext_decode(char *s, size_t len) {
  long n;

  if (s == NULL)
    return len == 0 ? 0 : TERN_ESYNTAX;
  n = xtext_check(s, len, false);
  if (n < 0)
    return n;
  return (long)xtext_unescape(s, len);
}

/*
 * Split the next token off args[*pos..len) (skipping leading SPs) and
 * check it against the generic syntax of RFC 5321 §4.1.2:
 *   esmtp-param   = esmtp-keyword ["=" esmtp-value]
 *   esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
 *   esmtp-value   = 1*(%d33-60 / %d62-126)
 * RFC 6531 §3.3 adds UTF8-non-ascii to esmtp-value when SMTPUTF8 is on;
 * the value must then be well-formed UTF-8. Returns 1 with *p filled, 0
 * at the end of the input, or TERN_ESYNTAX (*p still names the token).
 */
static int next_param(char *args, size_t len, size_t *pos, bool utf8,
                      struct param *p) {
  size_t i = *pos, start, eq;
  bool high = false;

  while (i < len && args[i] == ' ')
    i++;
  if (i == len) {
    *pos = i;
    return 0;
  }
  start = i;
  while (i < len && args[i] != ' ')
    i++;
  *pos = i;

  memset(p, 0, sizeof *p);
  p->tok = args + start;
  p->toklen = i - start;
  for (eq = 0; eq < p->toklen && p->tok[eq] != '='; eq++)
    ;
  p->key = p->tok;
  p->keylen = eq;
  if (eq < p->toklen) {
    p->val = p->tok + eq + 1;
    p->vallen = p->toklen - eq - 1;
  }

  if (p->keylen == 0 || !tern__is_alnum((unsigned char)p->key[0]))
    return TERN_ESYNTAX;
  for (size_t k = 1; k < p->keylen; k++)
    if (!tern__is_alnum((unsigned char)p->key[k]) && p->key[k] != '-')
      return TERN_ESYNTAX;
  if (p->val == NULL)
    return 1;
  if (p->vallen == 0)
    return TERN_ESYNTAX;
  for (size_t k = 0; k < p->vallen; k++) {
    unsigned char ch = (unsigned char)p->val[k];
    if (ch >= 0x80)
      high = true;
    else if (ch < 33 || ch > 126 || ch == '=')
      return TERN_ESYNTAX;
  }
  if (high && (!utf8 || !tern__utf8_valid((const unsigned char *)p->val,
                                           p->vallen)))
    return TERN_ESYNTAX;
  return 1;
}

static bool key_is(const struct param *p, const char *lit) {
  return tern__str_ieq(p->key, p->keylen, lit);
}

static bool val_is(const struct param *p, const char *lit) {
  return tern__str_ieq(p->val, p->vallen, lit);
}

/*
 * Check, then decode in place, an xtext value of at most `max` decoded
 * octets (0 = no limit) that must be printable ASCII once decoded.
 */
static int xtext_value(char *val, size_t vallen, size_t max,
                       struct tern_str *dst) {
  long n = xtext_check(val, vallen, true);

  if (n <= 0)
    return TERN_ESYNTAX;
  if (max != 0 && (size_t)n > max)
    return TERN_ESYNTAX;
  dst->ptr = val;
  dst->len = xtext_unescape(val, vallen);
  return 0;
}

/* ---- the keywords: each takes its checked value into the output ---------- */

/* RFC 1870 §3: size-param = "SIZE=" 1*20DIGIT */
static int take_size(const struct param *p, unsigned ext, void *out) {
  struct tern_mail_params *mp = out;
  (void)ext;
  int r = tern__parse_u64(p->val, p->vallen, UINT64_MAX, &mp->size);
  mp->has_size = r == 0;
  return r;
}

/* RFC 6152 §2: BODY=7BIT / 8BITMIME; RFC 3030 §3: BINARYMIME. A value of
 * an extension that is off is unknown, as the keyword would be. */
static int take_body(const struct param *p, unsigned ext, void *out) {
  struct tern_mail_params *mp = out;
  if (val_is(p, "7BIT"))
    mp->body = TERN_BODY_7BIT;
  else if (val_is(p, "8BITMIME"))
    mp->body = TERN_BODY_8BITMIME;
  else if (val_is(p, "BINARYMIME"))
    mp->body = TERN_BODY_BINARYMIME;
  else
    return TERN_ESYNTAX;
  if ((mp->body == TERN_BODY_8BITMIME && !(ext & TERN_EXT_8BITMIME)) ||
      (mp->body == TERN_BODY_BINARYMIME && !(ext & TERN_EXT_BINARYMIME)))
    return TERN_EUNKNOWN;
  return 0;
}

/* RFC 6531 §3.4: SMTPUTF8 has no value. */
static int take_smtputf8(const struct param *p, unsigned ext, void *out) {
  (void)p, (void)ext;
  ((struct tern_mail_params *)out)->smtputf8 = true;
  return 0;
}

/* RFC 8689 §4.1: REQUIRETLS has no value. */
static int take_requiretls(const struct param *p, unsigned ext, void *out) {
  (void)p, (void)ext;
  ((struct tern_mail_params *)out)->requiretls = true;
  return 0;
}

/* RFC 3461 §4.3: ret-value = "FULL" / "HDRS" */
static int take_ret(const struct param *p, unsigned ext, void *out) {
  struct tern_mail_params *mp = out;
  (void)ext;
  if (val_is(p, "FULL"))
    mp->ret = TERN_RET_FULL;
  else if (val_is(p, "HDRS"))
    mp->ret = TERN_RET_HDRS;
  else
    return TERN_ESYNTAX;
  return 0;
}

/* RFC 3461 §4.4: envid-parameter = "ENVID=" xtext */
static int take_envid(const struct param *p, unsigned ext, void *out) {
  (void)ext;
  return xtext_value(p->val, p->vallen, ENVID_MAX,
                     &((struct tern_mail_params *)out)->envid);
}

/* RFC 4954 §5: auth-param = "AUTH=" xtext; "<>" for an unknown identity
 * (both are xchars, so it needs no special case). */
static int take_auth(const struct param *p, unsigned ext, void *out) {
  (void)ext;
  return xtext_value(p->val, p->vallen, 0,
                     &((struct tern_mail_params *)out)->auth);
}

/* RFC 3461 §4.1: NOTIFY=NEVER, or a comma list of SUCCESS, FAILURE and
 * DELAY, each at most once. */
static int notify_value(const char *v, size_t len, unsigned *out) {
  unsigned bits = 0;
  size_t i = 0;

  for (;;) {
    size_t e = i;
    unsigned bit;

    while (e < len && v[e] != ',')
      e++;
    if (tern__str_ieq(v + i, e - i, "NEVER"))
      bit = TERN_NOTIFY_NEVER;
    else if (tern__str_ieq(v + i, e - i, "SUCCESS"))
      bit = TERN_NOTIFY_SUCCESS;
    else if (tern__str_ieq(v + i, e - i, "FAILURE"))
      bit = TERN_NOTIFY_FAILURE;
    else if (tern__str_ieq(v + i, e - i, "DELAY"))
      bit = TERN_NOTIFY_DELAY;
    else
      return TERN_ESYNTAX; /* includes an empty element */
    if (bits & bit)
      return TERN_ESYNTAX;
    bits |= bit;
    if (e == len)
      break;
    i = e + 1;
  }
  if ((bits & TERN_NOTIFY_NEVER) && bits != TERN_NOTIFY_NEVER)
    return TERN_ESYNTAX;
  *out = bits;
  return 0;
}

/* RFC 5322 §3.2.3 atext, ASCII only (addr-type is an atom). */
static bool is_atext(unsigned char ch) {
  return tern__is_alnum(ch) ||
         (ch != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", ch) != NULL);
}

/* RFC 3461 §4.1 */
static int take_notify(const struct param *p, unsigned ext, void *out) {
  (void)ext;
  return notify_value(p->val, p->vallen,
                      &((struct tern_rcpt_params *)out)->notify);
}

/* RFC 3461 §4.2: orcpt-parameter = "ORCPT=" original-recipient-address;
 * original-recipient-address = addr-type ";" xtext; addr-type = atom */
static int take_orcpt(const struct param *p, unsigned ext, void *out) {
  struct tern_rcpt_params *rp = out;
  size_t semi;
  (void)ext;
  for (semi = 0; semi < p->vallen && p->val[semi] != ';'; semi++)
    if (!is_atext((unsigned char)p->val[semi]))
      return TERN_ESYNTAX;
  if (semi == 0 || semi == p->vallen)
    return TERN_ESYNTAX;
  int r = xtext_value(p->val + semi + 1, p->vallen - semi - 1, ORCPT_MAX,
                      &rp->orcpt);
  if (r == 0) {
    rp->orcpt_type.ptr = p->val;
    rp->orcpt_type.len = semi;
  }
  return r;
}

/*
 * A parameter keyword: offered only with one of the `ext` bits (else it
 * is unknown, RFC 5321 §4.1.1.11); KEY=VALUE or, without `value`, the
 * keyword alone; at most once per command (RFC 5321 §4.1.2 does not
 * allow a parameter twice; every extension defines each keyword once).
 */
struct keyword {
  const char *key;
  unsigned ext;
  bool value;
  int (*take)(const struct param *p, unsigned ext, void *out);
};

static const struct keyword mail_keys[] = {
    {"SIZE", TERN_EXT_SIZE, true, take_size},
    {"BODY", TERN_EXT_8BITMIME | TERN_EXT_BINARYMIME, true, take_body},
    {"SMTPUTF8", TERN_EXT_SMTPUTF8, false, take_smtputf8},
    {"REQUIRETLS", TERN_EXT_REQUIRETLS, false, take_requiretls},
    {"RET", TERN_EXT_DSN, true, take_ret},
    {"ENVID", TERN_EXT_DSN, true, take_envid},
    {"AUTH", TERN_EXT_AUTH, true, take_auth},
};

static const struct keyword rcpt_keys[] = {
    {"NOTIFY", TERN_EXT_DSN, true, take_notify},
    {"ORCPT", TERN_EXT_DSN, true, take_orcpt},
};

/* One parameter; `seen` has a bit per keyword of the table. */
static int one_param(const struct param *p, unsigned ext, bool mail,
                     void *out, unsigned *seen) {
  const struct keyword *keys = mail ? mail_keys : rcpt_keys;
  size_t n = mail ? sizeof mail_keys / sizeof mail_keys[0]
                  : sizeof rcpt_keys / sizeof rcpt_keys[0];
  for (size_t k = 0; k < n; k++) {
    if (!key_is(p, keys[k].key))
      continue;
    if (!(ext & keys[k].ext))
      return TERN_EUNKNOWN;
    if (*seen & (1u << k))
      return TERN_EDUPLICATE;
    *seen |= 1u << k;
    if ((p->val != NULL) != keys[k].value)
      return TERN_ESYNTAX;
    return keys[k].take(p, ext, out);
  }
  return TERN_EUNKNOWN;
}

/* Both parsers; `mail` selects the keyword table, `out` is zeroed first. */
static int parse_all(char *args, size_t len, unsigned ext, bool mail,
                     void *out, size_t out_size, struct tern_str *bad) {
  unsigned seen = 0;
  size_t pos = 0;
  bool utf8 = (ext & TERN_EXT_SMTPUTF8) != 0;
  struct param p;
  int r;

  if (bad != NULL) {
    bad->ptr = NULL;
    bad->len = 0;
  }
  if (out == NULL || (args == NULL && len > 0))
    return TERN_EINVAL;
  memset(out, 0, out_size);
  /* RFC 3030 §3: BINARYMIME needs CHUNKING. */
  if (!(ext & TERN_EXT_CHUNKING))
    ext &= ~(unsigned)TERN_EXT_BINARYMIME;
  for (;;) {
    r = next_param(args, len, &pos, utf8, &p);
    if (r == 0)
      return 0;
    if (r > 0)
      r = one_param(&p, ext, mail, out, &seen);
    if (r != 0) {
      if (bad != NULL) {
        bad->ptr = p.tok;
        bad->len = p.toklen;
      }
      return r;
    }
  }
}

/*
 * tern__mail_params_parse() parses the ESMTP parameters after the MAIL
 * FROM path; see internal.h for the contract. Details: parameters are
 * separated by one or more SP, leading and trailing SPs are allowed,
 * keywords and the BODY/RET values are case-insensitive. Values with
 * 8-bit bytes are accepted only when ext has TERN_EXT_SMTPUTF8 and the
 * bytes are UTF-8 (RFC 6531 §3.3). ENVID (≤ 100 octets decoded) and AUTH
 * must decode to printable ASCII. *out is zeroed first; on error it may
 * hold the parameters before the bad one. bad may be NULL; it is {NULL,0}
 * on success. Returns TERN_EINVAL for NULL out, or args NULL with len > 0.
 */
int tern__mail_params_parse(char *args, size_t len, unsigned ext,
                            struct tern_mail_params *out,
                            struct tern_str *bad) {
  return parse_all(args, len, ext, true, out, sizeof *out, bad);
}

/*
 * tern__rcpt_params_parse() parses the parameters after the RCPT TO path
 * the same way (see tern__mail_params_parse()). With TERN_EXT_DSN it
 * knows NOTIFY (RFC 3461 §4.1: NEVER alone, or a comma list of SUCCESS,
 * FAILURE, DELAY without repeats) and ORCPT (§4.2: atom ";" xtext that
 * decodes to 1..500 printable ASCII octets; orcpt_type points at the
 * atom as sent). Every other keyword is TERN_EUNKNOWN.
 */
int tern__rcpt_params_parse(char *args, size_t len, unsigned ext,
                            struct tern_rcpt_params *out,
                            struct tern_str *bad) {
  return parse_all(args, len, ext, false, out, sizeof *out, bad);
}

/*
 * tern__xtext_encode() is the inverse of tern__xtext_decode(), for the
 * client's ENVID and ORCPT values. RFC 3461 §4: "xchar" is %d33-126
 * except "+" and "="; every other octet is sent as "+" and two upper-case
 * hex digits.
 */
long tern__xtext_encode(char *dst, size_t cap, const char *src, size_t len) {
  static const char hex[] = "0123456789ABCDEF";
  size_t o = 0;

  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)src[i];
    if (ch >= 33 && ch <= 126 && ch != '+' && ch != '=') {
      if (o + 1 > cap)
        return TERN_ENOSPACE;
      dst[o++] = (char)ch;
    } else {
      if (o + 3 > cap)
        return TERN_ENOSPACE;
      dst[o++] = '+';
      dst[o++] = hex[ch >> 4];
      dst[o++] = hex[ch & 15];
    }
  }
  return (long)o;
}
