/*
 * tern — RFC 5321 §4.1.2 path parser (the <...> of MAIL FROM / RCPT TO).
 *
 * One forward cursor over s[0..len), never read past len, no allocation.
 * The grammar is LL(1) apart from the two special forms ("<>" and
 * "<Postmaster>"), which are recognised before the general mailbox
 * grammar is tried. All output strings point into the input.
 *
 * Non-ASCII policy: whenever the cursor reaches a byte >= 0x80, the UTF-8
 * sequence there is decoded first. Malformed UTF-8 is TERN_EBADUTF8 in
 * every mode; well-formed UTF-8 is TERN_ENONASCII without
 * TERN_PATH_ALLOW_UTF8, and accepted with it only where RFC 6531 §3.3
 * extends the grammar (atext, qtextSMTP, sub-domain).
 */
#include "internal.h"

struct cursor {
  const unsigned char *p;
  size_t len;
  size_t pos;
  unsigned opts;
  unsigned flags;   /* TERN_PATHF_* gathered while parsing */
  unsigned char stop; /* the byte that ends the path: '>' or ' ' */
};

/* The byte at the cursor, or -1 at the end of the input. */
static int peek(const struct cursor *c) {
  return c->pos < c->len ? c->p[c->pos] : -1;
}

/* Length of the well-formed UTF-8 sequence at p[0..n), or 0 if the bytes
 * there are not one (bad lead byte, truncated, overlong, surrogate, too
 * large). */
static size_t utf8_seq_len(const unsigned char *p, size_t n) {
  size_t need;

  if (p[0] >= 0xC2 && p[0] <= 0xDF)
    need = 2;
  else if (p[0] >= 0xE0 && p[0] <= 0xEF)
    need = 3;
  else if (p[0] >= 0xF0 && p[0] <= 0xF4)
    need = 4;
  else
    return 0;
  if (n < need || !tern__utf8_valid(p, need))
    return 0;
  return need;
}

/*
 * The error for a non-ASCII byte at the cursor that the grammar cannot
 * take here (or that the options forbid). Malformed UTF-8 anywhere up to
 * the end of the path wins over TERN_ENONASCII, so that Latin-1 and other
 * non-UTF-8 input is reported as such whatever the options say.
 */
static int nonascii_error(const struct cursor *c) {
  size_t end = c->pos;

  if (utf8_seq_len(c->p + c->pos, c->len - c->pos) == 0)
    return TERN_EBADUTF8;
  if (c->opts & TERN_PATH_ALLOW_UTF8)
    return TERN_ESYNTAX; /* valid UTF-8, but not allowed at this point */
  while (end < c->len && c->p[end] != c->stop)
    end++;
  if (!tern__utf8_valid(c->p + c->pos, end - c->pos))
    return TERN_EBADUTF8;
  return TERN_ENONASCII;
}

/* At a byte >= 0x80 where RFC 6531 §3.3 allows UTF8-non-ascii: take the
 * whole sequence, or fail as nonascii_error() says. */
static int take_utf8(struct cursor *c) {
  size_t n = utf8_seq_len(c->p + c->pos, c->len - c->pos);

  if (n == 0 || !(c->opts & TERN_PATH_ALLOW_UTF8))
    return nonascii_error(c);
  c->flags |= TERN_PATHF_UTF8;
  c->pos += n;
  return 0;
}

/* RFC 5322 §3.2.3 atext, ASCII part (the caller has handled >= 0x80). */
static bool is_atext(unsigned char ch) {
  return tern__is_alnum(ch) ||
         (ch != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", ch) != NULL);
}

/*
 * Local-part = Dot-string / Quoted-string (RFC 5321 §4.1.2), with
 * RFC 6531 §3.3's UTF8-non-ascii in atext and qtextSMTP. Limit 64
 * octets as sent, quotes included (RFC 5321 §4.5.3.1.1).
 */
static int parse_local(struct cursor *c) {
  size_t start = c->pos;
  int ch = peek(c);
  int r;

  if (ch == '"') {
    c->pos++;
    for (;;) {
      ch = peek(c);
      if (ch < 0)
        return TERN_ESYNTAX;
      if (ch == '"') {
        c->pos++;
        break;
      }
      if (ch >= 0x80) {
        if ((r = take_utf8(c)) != 0)
          return r;
        continue;
      }
      if (ch == '\\') {
        /* quoted-pairSMTP = %d92 %d32-126; RFC 6531 does not extend it */
        c->pos++;
        ch = peek(c);
        if (ch >= 0x80)
          return nonascii_error(c);
        if (ch < 32 || ch > 126)
          return TERN_ESYNTAX;
        c->pos++;
        continue;
      }
      /* qtextSMTP = %d32-33 / %d35-91 / %d93-126 ('"' and '\' done) */
      if (ch < 32 || ch > 126)
        return TERN_ESYNTAX;
      c->pos++;
    }
    c->flags |= TERN_PATHF_QUOTED;
  } else {
    /* Dot-string = Atom *("."  Atom); Atom = 1*atext */
    for (;;) {
      size_t atom = c->pos;
      while ((ch = peek(c)) >= 0) {
        if (ch >= 0x80) {
          if ((r = take_utf8(c)) != 0)
            return r;
          continue;
        }
        if (!is_atext((unsigned char)ch))
          break;
        c->pos++;
      }
      if (c->pos == atom)
        return TERN_ESYNTAX;
      if (peek(c) != '.')
        break;
      c->pos++;
    }
  }
  if (c->pos - start > TERN_LOCAL_PART_MAX)
    return TERN_ETOOLONG;
  return 0;
}

/*
 * Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str]
 * (RFC 5321 §4.1.2): letters, digits and hyphens, starting and ending
 * with a letter or digit. RFC 6531 §3.3 adds U-labels, so a UTF-8
 * character counts as a letter here.
 */
static int parse_dot_domain(struct cursor *c) {
  int ch, r;

  for (;;) {
    size_t label = c->pos;
    bool hyphen_last = false;

    while ((ch = peek(c)) >= 0) {
      if (ch >= 0x80) {
        if ((r = take_utf8(c)) != 0)
          return r;
        hyphen_last = false;
        continue;
      }
      if (ch == '-') {
        if (c->pos == label)
          return TERN_ESYNTAX;
        hyphen_last = true;
      } else if (tern__is_alnum((unsigned char)ch)) {
        hyphen_last = false;
      } else {
        break;
      }
      c->pos++;
    }
    if (c->pos == label || hyphen_last)
      return TERN_ESYNTAX;
    if (peek(c) != '.')
      return 0;
    c->pos++;
  }
}

/* Snum = 1*3DIGIT representing a decimal integer 0..255, four of them
 * joined by "." (RFC 5321 §4.1.3 IPv4-address-literal). */
static bool ipv4_valid(const unsigned char *p, size_t n) {
  size_t i = 0;

  for (int part = 0; part < 4; part++) {
    unsigned v = 0;
    size_t digits = 0;

    if (part > 0) {
      if (i >= n || p[i] != '.')
        return false;
      i++;
    }
    while (i < n && tern__is_digit(p[i]) && digits < 3) {
      v = v * 10 + (unsigned)(p[i] - '0');
      i++;
      digits++;
    }
    if (digits == 0 || v > 255)
      return false;
  }
  return i == n;
}

static bool is_hex(unsigned char ch) {
  return tern__is_hex_upper(tern__upper(ch));
}

/*
 * One side of an IPv6 literal (all of it, or one side of "::"): IPv6-hex
 * groups (1*4HEXDIG) separated by single ":", the last element optionally
 * an IPv4 address when `v4_ok`. Sets *groups (hex groups only) and *v4.
 * An empty side is allowed only when `empty_ok`.
 */
static bool ipv6_side(const unsigned char *p, size_t n, bool v4_ok,
                      bool empty_ok, unsigned *groups, bool *v4) {
  size_t i = 0;

  *groups = 0;
  *v4 = false;
  if (n == 0)
    return empty_ok;
  for (;;) {
    size_t e = i;
    bool dot = false;

    while (e < n && p[e] != ':') {
      if (p[e] == '.')
        dot = true;
      e++;
    }
    if (dot) {
      if (!v4_ok || e != n || !ipv4_valid(p + i, e - i))
        return false;
      *v4 = true;
      return true;
    }
    if (e == i || e - i > 4)
      return false;
    for (size_t k = i; k < e; k++)
      if (!is_hex(p[k]))
        return false;
    (*groups)++;
    if (*groups > 8)
      return false;
    if (e == n)
      return true;
    i = e + 1; /* skip ':'; a trailing ':' leaves an empty group */
    if (i == n)
      return false;
  }
}

/*
 * IPv6-addr after "IPv6:" (RFC 5321 §4.1.3):
 *   IPv6-full   = IPv6-hex 7(":" IPv6-hex)
 *   IPv6-comp   = [IPv6-hex *5(":" IPv6-hex)] "::" [IPv6-hex *5(":" IPv6-hex)]
 *                 ("No more than 6 groups in addition to the '::'")
 *   IPv6v4-full = IPv6-hex 5(":" IPv6-hex) ":" IPv4-address-literal
 *   IPv6v4-comp = [IPv6-hex *3(":" IPv6-hex)] "::"
 *                 [IPv6-hex *3(":" IPv6-hex) ":"] IPv4-address-literal
 *                 ("No more than 4 groups in addition to the '::' and
 *                 IPv4-address-literal")
 */
static bool ipv6_valid(const unsigned char *p, size_t n) {
  size_t dc = n;
  unsigned lg, rg;
  bool lv4, rv4;

  for (size_t i = 0; i + 1 < n; i++) {
    if (p[i] == ':' && p[i + 1] == ':') {
      if (dc != n)
        return false; /* a second "::" */
      dc = i;
      i++;
    }
  }
  if (dc == n) {
    if (!ipv6_side(p, n, true, false, &lg, &lv4))
      return false;
    return lv4 ? lg == 6 : lg == 8;
  }
  /* ":::" leaves a side that starts or ends with ':', which fails. */
  if (!ipv6_side(p, dc, false, true, &lg, &lv4))
    return false;
  if (!ipv6_side(p + dc + 2, n - dc - 2, true, true, &rg, &rv4))
    return false;
  return rv4 ? lg + rg <= 4 : lg + rg <= 6;
}

/*
 * address-literal = "[" ( IPv4-address-literal / IPv6-address-literal /
 * General-address-literal ) "]" (RFC 5321 §4.1.2, §4.1.3). The literal
 * ends at the first "]" since dcontent (%d33-90 / %d94-126) cannot hold
 * one. General-address-literal = Standardized-tag ":" 1*dcontent with
 * Standardized-tag = Ldh-str; the tag "IPv6" (case-insensitive, as ABNF
 * strings are) always means an IPv6 literal, which must then be valid.
 */
static int parse_literal(struct cursor *c) {
  const unsigned char *q;
  size_t start, n, colon;
  int ch;

  c->pos++; /* '[' */
  start = c->pos;
  for (;;) {
    ch = peek(c);
    if (ch < 0)
      return TERN_ESYNTAX;
    if (ch == ']')
      break;
    if (ch >= 0x80)
      return nonascii_error(c);
    if (ch < 33 || ch > 126 || ch == '[' || ch == '\\')
      return TERN_ESYNTAX;
    c->pos++;
  }
  q = c->p + start;
  n = c->pos - start;
  c->pos++; /* ']' */
  c->flags |= TERN_PATHF_LITERAL;

  for (colon = 0; colon < n && q[colon] != ':'; colon++)
    ;
  if (colon == n)
    return ipv4_valid(q, n) ? 0 : TERN_ESYNTAX;
  if (tern__str_ieq((const char *)q, colon, "IPV6"))
    return ipv6_valid(q + colon + 1, n - colon - 1) ? 0 : TERN_ESYNTAX;
  /* Ldh-str = *( ALPHA / DIGIT / "-" ) Let-dig */
  if (colon == 0 || !tern__is_alnum(q[colon - 1]) || colon + 1 == n)
    return TERN_ESYNTAX;
  for (size_t i = 0; i < colon; i++)
    if (!tern__is_alnum(q[i]) && q[i] != '-')
      return TERN_ESYNTAX;
  return 0;
}

/* Domain / address-literal, at most 255 octets (RFC 5321 §4.5.3.1.2). */
static int parse_domain(struct cursor *c) {
  size_t start = c->pos;
  int r;

  if (peek(c) == '[')
    r = parse_literal(c);
  else
    r = parse_dot_domain(c);
  if (r != 0)
    return r;
  if (c->pos - start > TERN_DOMAIN_MAX)
    return TERN_ETOOLONG;
  return 0;
}

/*
 * A-d-l = At-domain *( "," At-domain ) ":"; At-domain = "@" Domain
 * (RFC 5321 §4.1.2). RFC 5321 Appendix C: servers SHOULD accept and
 * ignore source routes, so it is only checked for syntax.
 */
static int parse_route(struct cursor *c) {
  int r;

  for (;;) {
    c->pos++; /* '@' */
    if ((r = parse_dot_domain(c)) != 0)
      return r;
    if (peek(c) == ':') {
      c->pos++;
      c->flags |= TERN_PATHF_ROUTE;
      return 0;
    }
    if (peek(c) != ',')
      return TERN_ESYNTAX;
    c->pos++;
    if (peek(c) != '@')
      return TERN_ESYNTAX;
  }
}

static struct tern_str span(const char *s, size_t from, size_t to) {
  struct tern_str t;
  t.ptr = s + from;
  t.len = to - from;
  return t;
}

/*
 * tern_path_parse() parses the path at the start of s[0..len): see
 * include/tern/address.h for the contract. Additional details:
 *   - *out and *consumed are zeroed first, and stay zeroed on error.
 *   - s == NULL is TERN_EINVAL even when len is 0.
 *   - With TERN_PATH_ALLOW_NO_BRACKETS and input not starting with "<",
 *     the mailbox must be followed by a space or the end of the input;
 *     consumed stops before the space, and the 256-octet path limit is
 *     applied to the mailbox plus the two brackets it lacks.
 *   - Bytes after the ">" are not looked at (the caller parses them).
 */
int tern_path_parse(const char *s, size_t len, unsigned opts,
                    struct tern_path *out, size_t *consumed) {
  struct cursor c;
  size_t mbox, local_end, dom, dom_end, total;
  bool bracket;
  int r;

  if (out == NULL || consumed == NULL || s == NULL)
    return TERN_EINVAL;
  memset(out, 0, sizeof *out);
  *consumed = 0;

  memset(&c, 0, sizeof c);
  c.p = (const unsigned char *)s;
  c.len = len;
  c.opts = opts;
  bracket = len > 0 && s[0] == '<';
  if (!bracket && !(opts & TERN_PATH_ALLOW_NO_BRACKETS))
    return TERN_ESYNTAX;
  c.stop = bracket ? '>' : ' ';
  c.pos = bracket ? 1 : 0;

  /* Reverse-path = Path / "<>" (RFC 5321 §4.1.2): MAIL FROM only. */
  if (bracket && peek(&c) == '>') {
    if (!(opts & TERN_PATH_ALLOW_NULL))
      return TERN_ESYNTAX;
    out->mailbox = out->local = out->domain = span(s, 1, 1);
    out->flags = TERN_PATHF_NULL;
    *consumed = 2;
    return 0;
  }

  /* RCPT TO:<Postmaster> with no domain, case-insensitive
   * (RFC 5321 §4.1.1.3, §4.5.1). */
  if ((opts & TERN_PATH_ALLOW_POSTMASTER) && len - c.pos >= 10 &&
      tern__str_ieq(s + c.pos, 10, "POSTMASTER")) {
    size_t after = c.pos + 10;
    bool ends = bracket ? (after < len && s[after] == '>')
                        : (after == len || s[after] == ' ');
    if (ends) {
      out->mailbox = out->local = span(s, c.pos, after);
      out->domain = span(s, after, after);
      out->flags = TERN_PATHF_POSTMASTER;
      *consumed = bracket ? after + 1 : after;
      return 0;
    }
  }

  if (bracket && peek(&c) == '@') {
    if ((r = parse_route(&c)) != 0)
      return r;
  }

  /* Mailbox = Local-part "@" ( Domain / address-literal ) */
  mbox = c.pos;
  if ((r = parse_local(&c)) != 0)
    return r;
  local_end = c.pos;
  if (peek(&c) != '@') {
    if (peek(&c) >= 0x80)
      return nonascii_error(&c);
    return TERN_ESYNTAX;
  }
  c.pos++;
  dom = c.pos;
  if ((r = parse_domain(&c)) != 0)
    return r;
  dom_end = c.pos;

  if (bracket) {
    if (peek(&c) != '>')
      return peek(&c) >= 0x80 ? nonascii_error(&c) : TERN_ESYNTAX;
    c.pos++;
    total = c.pos;
  } else {
    if (c.pos < len && s[c.pos] != ' ')
      return peek(&c) >= 0x80 ? nonascii_error(&c) : TERN_ESYNTAX;
    total = c.pos + 2;
  }
  /* RFC 5321 §4.5.3.1.3: 256 octets including the punctuation. */
  if (total > TERN_PATH_MAX)
    return TERN_ETOOLONG;

  out->mailbox = span(s, mbox, dom_end);
  out->local = span(s, mbox, local_end);
  out->domain = span(s, dom, dom_end);
  out->flags = c.flags;
  *consumed = c.pos;
  return 0;
}

/* The literal checks above, for XCLIENT values (command.c). */
bool tern__ipv4_valid(const char *p, size_t n) {
  return ipv4_valid((const unsigned char *)p, n);
}

bool tern__ipv6_valid(const char *p, size_t n) {
  return ipv6_valid((const unsigned char *)p, n);
}
