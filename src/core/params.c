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

/* Seen-bits for duplicate detection (RFC 5321 §4.1.2 does not allow a
 * parameter twice; every extension defines each keyword once). */
enum {
  SEEN_SIZE = 1u << 0,
  SEEN_BODY = 1u << 1,
  SEEN_SMTPUTF8 = 1u << 2,
  SEEN_REQUIRETLS = 1u << 3,
  SEEN_RET = 1u << 4,
  SEEN_ENVID = 1u << 5,
  SEEN_AUTH = 1u << 6,
  SEEN_NOTIFY = 1u << 7,
  SEEN_ORCPT = 1u << 8
};

/* RFC 3461 §4.4: "ENVID ... MUST NOT contain more than 100 characters";
 * §4.2: the original recipient address at most 500 characters. Both
 * measured after xtext decoding. */
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

static int claim(unsigned *seen, unsigned bit) {
  if (*seen & bit)
    return TERN_EDUPLICATE;
  *seen |= bit;
  return 0;
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

/* One MAIL FROM parameter. */
static int mail_param(const struct param *p, unsigned ext,
                      struct tern_mail_params *out, unsigned *seen) {
  int r;

  if (key_is(p, "SIZE")) {
    /* RFC 1870 §3: size-param = "SIZE=" 1*20DIGIT */
    if (!(ext & TERN_EXT_SIZE))
      return TERN_EUNKNOWN;
    if ((r = claim(seen, SEEN_SIZE)) != 0)
      return r;
    if (p->val == NULL)
      return TERN_ESYNTAX;
    if ((r = tern__parse_u64(p->val, p->vallen, UINT64_MAX, &out->size)) != 0)
      return r;
    out->has_size = true;
    return 0;
  }
  if (key_is(p, "BODY")) {
    /* RFC 6152 §2: BODY=7BIT / 8BITMIME; RFC 3030 §3: BINARYMIME,
     * which needs CHUNKING too. */
    bool bin = (ext & TERN_EXT_BINARYMIME) && (ext & TERN_EXT_CHUNKING);
    if (!(ext & TERN_EXT_8BITMIME) && !bin)
      return TERN_EUNKNOWN;
    if ((r = claim(seen, SEEN_BODY)) != 0)
      return r;
    if (p->val == NULL)
      return TERN_ESYNTAX;
    if (val_is(p, "7BIT")) {
      out->body = TERN_BODY_7BIT;
    } else if (val_is(p, "8BITMIME")) {
      if (!(ext & TERN_EXT_8BITMIME))
        return TERN_EUNKNOWN;
      out->body = TERN_BODY_8BITMIME;
    } else if (val_is(p, "BINARYMIME")) {
      if (!bin)
        return TERN_EUNKNOWN;
      out->body = TERN_BODY_BINARYMIME;
    } else {
      return TERN_ESYNTAX;
    }
    return 0;
  }
  if (key_is(p, "SMTPUTF8")) {
    /* RFC 6531 §3.4: the parameter has no value. */
    if (!(ext & TERN_EXT_SMTPUTF8))
      return TERN_EUNKNOWN;
    if ((r = claim(seen, SEEN_SMTPUTF8)) != 0)
      return r;
    if (p->val != NULL)
      return TERN_ESYNTAX;
    out->smtputf8 = true;
    return 0;
  }
  if (key_is(p, "REQUIRETLS")) {
    /* RFC 8689 §4.1: REQUIRETLS has no value. */
    if (!(ext & TERN_EXT_REQUIRETLS))
      return TERN_EUNKNOWN;
    if ((r = claim(seen, SEEN_REQUIRETLS)) != 0)
      return r;
    if (p->val != NULL)
      return TERN_ESYNTAX;
    out->requiretls = true;
    return 0;
  }
  if (key_is(p, "RET")) {
    /* RFC 3461 §4.3: ret-value = "FULL" / "HDRS" */
    if (!(ext & TERN_EXT_DSN))
      return TERN_EUNKNOWN;
    if ((r = claim(seen, SEEN_RET)) != 0)
      return r;
    if (p->val == NULL)
      return TERN_ESYNTAX;
    if (val_is(p, "FULL"))
      out->ret = TERN_RET_FULL;
    else if (val_is(p, "HDRS"))
      out->ret = TERN_RET_HDRS;
    else
      return TERN_ESYNTAX;
    return 0;
  }
  if (key_is(p, "ENVID")) {
    /* RFC 3461 §4.4: envid-parameter = "ENVID=" xtext */
    if (!(ext & TERN_EXT_DSN))
      return TERN_EUNKNOWN;
    if ((r = claim(seen, SEEN_ENVID)) != 0)
      return r;
    if (p->val == NULL)
      return TERN_ESYNTAX;
    return xtext_value(p->val, p->vallen, ENVID_MAX, &out->envid);
  }
  if (key_is(p, "AUTH")) {
    /* RFC 4954 §5: auth-param = "AUTH=" xtext; "<>" for an unknown
     * identity (both are xchars, so it needs no special case). */
    if (!(ext & TERN_EXT_AUTH))
      return TERN_EUNKNOWN;
    if ((r = claim(seen, SEEN_AUTH)) != 0)
      return r;
    if (p->val == NULL)
      return TERN_ESYNTAX;
    return xtext_value(p->val, p->vallen, 0, &out->auth);
  }
  return TERN_EUNKNOWN;
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

/* One RCPT TO parameter. */
static int rcpt_param(const struct param *p, unsigned ext,
                      struct tern_rcpt_params *out, unsigned *seen) {
  int r;

  if (key_is(p, "NOTIFY")) {
    if (!(ext & TERN_EXT_DSN))
      return TERN_EUNKNOWN;
    if ((r = claim(seen, SEEN_NOTIFY)) != 0)
      return r;
    if (p->val == NULL)
      return TERN_ESYNTAX;
    return notify_value(p->val, p->vallen, &out->notify);
  }
  if (key_is(p, "ORCPT")) {
    /* RFC 3461 §4.2: orcpt-parameter = "ORCPT=" original-recipient-address
     * original-recipient-address = addr-type ";" xtext; addr-type = atom */
    size_t semi;
    if (!(ext & TERN_EXT_DSN))
      return TERN_EUNKNOWN;
    if ((r = claim(seen, SEEN_ORCPT)) != 0)
      return r;
    if (p->val == NULL)
      return TERN_ESYNTAX;
    for (semi = 0; semi < p->vallen && p->val[semi] != ';'; semi++)
      if (!is_atext((unsigned char)p->val[semi]))
        return TERN_ESYNTAX;
    if (semi == 0 || semi == p->vallen)
      return TERN_ESYNTAX;
    if ((r = xtext_value(p->val + semi + 1, p->vallen - semi - 1, ORCPT_MAX,
                         &out->orcpt)) != 0)
      return r;
    out->orcpt_type.ptr = p->val;
    out->orcpt_type.len = semi;
    return 0;
  }
  return TERN_EUNKNOWN;
}

/* The shared loop of both parsers; `mail` selects the keyword table. */
static int parse_all(char *args, size_t len, unsigned ext, bool mail,
                     void *out, struct tern_str *bad) {
  unsigned seen = 0;
  size_t pos = 0;
  bool utf8 = (ext & TERN_EXT_SMTPUTF8) != 0;
  struct param p;
  int r;

  for (;;) {
    r = next_param(args, len, &pos, utf8, &p);
    if (r == 0)
      return 0;
    if (r > 0)
      r = mail ? mail_param(&p, ext, out, &seen)
               : rcpt_param(&p, ext, out, &seen);
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
  if (bad != NULL) {
    bad->ptr = NULL;
    bad->len = 0;
  }
  if (out == NULL || (args == NULL && len > 0))
    return TERN_EINVAL;
  memset(out, 0, sizeof *out);
  return parse_all(args, len, ext, true, out, bad);
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
  if (bad != NULL) {
    bad->ptr = NULL;
    bad->len = 0;
  }
  if (out == NULL || (args == NULL && len > 0))
    return TERN_EINVAL;
  memset(out, 0, sizeof *out);
  return parse_all(args, len, ext, false, out, bad);
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
