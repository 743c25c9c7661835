/*
 * tern — PROXY protocol v1/v2 header parser and CIDR network lists.
 *
 * The specification is HAProxy's doc/proxy-protocol.txt ("The PROXY
 * protocol, Versions 1 & 2"); section numbers below refer to it. Both
 * parsers are pure functions over a bounded buffer: they never read at or
 * past `len`, never look at the clock or the locale, and keep no state
 * between calls, so a caller feeds the bytes it has received so far and
 * calls again with more when the answer is 0.
 *
 * This file uses POSIX (inet_pton for IPv6 text, the sockaddr structures)
 * but no libuv and no OpenSSL: the fuzz build compiles it with the core.
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>

#include "internal.h"
#include "proxy.h"

/* ---- small helpers ------------------------------------------------------ */

/* §2.1: "the receiver must wait for the CRLF sequence" within "the first
 * 107 characters" (the worst-case UNKNOWN line, CRLF included). */
#define V1_MAX 107

/* §2.2: the fixed part of a v2 header (signature, ver/cmd, fam, len). */
#define V2_HDR 16

/* §2.2: "\x0D \x0A \x0D \x0A \x00 \x0D \x0A \x51 \x55 \x49 \x54 \x0A". It
 * holds a NUL, so it is always compared by length, never as a string. */
static const unsigned char v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                         0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* Longest IPv6 text inet_pton() can accept ("ffff:...:255.255.255.255"). */
#define IP6_TEXT_MAX 45

static bool is_hex(unsigned char c) {
  return tern__is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Do the n available bytes of b agree with the start of `lit`? (True when
 * n is shorter than lit and what is there matches, or n >= strlen(lit)
 * and lit is a prefix of b.) */
static bool agrees(const unsigned char *b, size_t n, const char *lit) {
  size_t i;

  for (i = 0; i < n && lit[i] != '\0'; i++)
    if (b[i] != (unsigned char)lit[i])
      return false;
  return true;
}

/*
 * A decimal number s[0..n) without sign or leading zeros ("0" itself is
 * fine), at most `max`. §2.1 forbids "heading zeroes ... in order to avoid
 * any possible confusion with octal numbers" for IPv4 octets and ports; the
 * CIDR prefix length follows the same rule. Returns true and sets *out.
 */
static bool parse_dec(const char *s, size_t n, unsigned max, unsigned *out) {
  unsigned v = 0;
  size_t i;

  if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
    return false;
  for (i = 0; i < n; i++) {
    if (!tern__is_digit((unsigned char)s[i]))
      return false;
    v = v * 10 + (unsigned)(s[i] - '0'); /* n <= 5: no overflow */
  }
  if (v > max)
    return false;
  *out = v;
  return true;
}

/*
 * IPv4 text s[0..n): §2.1 "exactly 4 integers in the range [0..255]
 * inclusive written in decimal representation separated by exactly one
 * dot", no leading zeros. Written out rather than left to inet_pton() so
 * that the rule does not depend on the C library.
 */
static bool parse_ip4(const char *s, size_t n, unsigned char out[4]) {
  size_t start = 0, i;
  int part = 0;

  for (i = 0; i <= n; i++) {
    if (i < n && s[i] != '.')
      continue;
    {
      unsigned v;
      if (part == 4 || !parse_dec(s + start, i - start, 255, &v))
        return false;
      out[part++] = (unsigned char)v;
    }
    start = i + 1;
  }
  return part == 4;
}

/*
 * IPv6 text s[0..n): §2.1 "sets of 4 hexadecimal digits (upper or lower
 * case) delimited by colons ... with the acceptance of one double colon";
 * RFC 4291 §2.2 form 3 (a dotted IPv4 tail) is accepted too, as
 * inet_pton() does. Only hex digits, ':' and '.' get as far as
 * inet_pton(), which needs a NUL-terminated copy.
 */
static bool parse_ip6(const char *s, size_t n, unsigned char out[16]) {
  char tmp[IP6_TEXT_MAX + 1];
  size_t i;

  if (n == 0 || n > IP6_TEXT_MAX)
    return false;
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!is_hex(c) && c != ':' && c != '.')
      return false;
  }
  memcpy(tmp, s, n);
  tmp[n] = '\0';
  return inet_pton(AF_INET6, tmp, out) == 1;
}

static void set_in4(struct sockaddr_storage *ss, const unsigned char addr[4],
                    const unsigned char port_be[2]) {
  struct sockaddr_in sin;

  memset(&sin, 0, sizeof sin);
  sin.sin_family = AF_INET;
  memcpy(&sin.sin_port, port_be, 2);
  memcpy(&sin.sin_addr, addr, 4);
  memset(ss, 0, sizeof *ss);
  memcpy(ss, &sin, sizeof sin);
}

static void set_in6(struct sockaddr_storage *ss, const unsigned char addr[16],
                    const unsigned char port_be[2]) {
  struct sockaddr_in6 sin6;

  memset(&sin6, 0, sizeof sin6);
  sin6.sin6_family = AF_INET6;
  memcpy(&sin6.sin6_port, port_be, 2);
  memcpy(&sin6.sin6_addr, addr, 16);
  memset(ss, 0, sizeof *ss);
  memcpy(ss, &sin6, sizeof sin6);
}

static void set_local(struct tern__proxy *p) {
  memset(p, 0, sizeof *p);
  p->local = true;
  p->src.ss_family = AF_UNSPEC;
  p->dst.ss_family = AF_UNSPEC;
}

/* ---- version 1 ---------------------------------------------------------- */

enum v1_proto { V1_TCP4, V1_TCP6, V1_UNKNOWN };

/*
 * The fields of a complete TCP4/TCP6 line after "PROXY TCPx ": §2.1
 * "src SP dst SP sport SP dport", each separated by "exactly one space".
 */
static bool v1_fields(const char *s, size_t n, enum v1_proto proto,
                      struct tern__proxy *p) {
  const char *f[4];
  size_t fl[4];
  size_t i, start = 0;
  int k = 0;
  unsigned char a_src[16], a_dst[16], port[2][2];

  for (i = 0; i <= n; i++) {
    if (i < n && s[i] != ' ')
      continue;
    if (k == 4 || i == start) /* a fifth field, or an empty one (two SP) */
      return false;
    f[k] = s + start;
    fl[k] = i - start;
    k++;
    start = i + 1;
  }
  if (k != 4)
    return false;
  for (i = 0; i < 2; i++) {
    unsigned v;
    if (!parse_dec(f[2 + i], fl[2 + i], 65535, &v))
      return false;
    port[i][0] = (unsigned char)(v >> 8);
    port[i][1] = (unsigned char)(v & 0xff);
  }
  /* "The advertised protocol family dictates what format to use": an
   * IPv6 address in a TCP4 line (or the reverse) is invalid. */
  if (proto == V1_TCP4) {
    if (!parse_ip4(f[0], fl[0], a_src) || !parse_ip4(f[1], fl[1], a_dst))
      return false;
    memset(p, 0, sizeof *p);
    set_in4(&p->src, a_src, port[0]);
    set_in4(&p->dst, a_dst, port[1]);
  } else {
    if (!parse_ip6(f[0], fl[0], a_src) || !parse_ip6(f[1], fl[1], a_dst))
      return false;
    memset(p, 0, sizeof *p);
    set_in6(&p->src, a_src, port[0]);
    set_in6(&p->dst, a_dst, port[1]);
  }
  p->local = false;
  return true;
}

/*
 * Checks that the bytes seen so far, b[0..m) (the line without its CRLF,
 * possibly not all of it yet), can still begin a valid line, so that a
 * wrong header is refused as soon as it is wrong rather than at 107 bytes.
 * Every test here is one the complete-line parse would also fail. Sets
 * *proto once the protocol word is known (else leaves it alone).
 */
static bool v1_prefix_ok(const unsigned char *b, size_t m,
                         enum v1_proto *proto) {
  const unsigned char *r;
  size_t rn, i;
  bool tcp4, tcp6, unk;

  /* §2.1: "PROXY" then "exactly one space"; upper case only. */
  if (!agrees(b, m, "PROXY "))
    return false;
  if (m <= 6)
    return true;
  r = b + 6;
  rn = m - 6;
  /* §2.1: only "TCP4", "TCP6" or "UNKNOWN", then a space (or, for
   * UNKNOWN, the end of the line). */
  tcp4 = agrees(r, rn, "TCP4 ");
  tcp6 = agrees(r, rn, "TCP6 ");
  unk = agrees(r, rn, "UNKNOWN") && (rn <= 7 || r[7] == ' ');
  if (!tcp4 && !tcp6 && !unk)
    return false;
  if (unk) {
    if (rn >= 7)
      *proto = V1_UNKNOWN;
    /* §2.1: "the receiver must ignore anything presented before the
     * CRLF" — the caller has already limited it to printable US-ASCII. */
    return true;
  }
  if (rn < 5)
    return true;
  *proto = tcp4 ? V1_TCP4 : V1_TCP6;
  /* Addresses and ports: digits and dots for TCP4; hex digits, colons
   * and dots (an IPv4 tail) for TCP6. */
  for (i = 5; i < rn; i++) {
    unsigned char c = r[i];
    if (c == ' ' || c == '.' || tern__is_digit(c))
      continue;
    if (*proto == V1_TCP6 && (c == ':' || is_hex(c)))
      continue;
    return false;
  }
  return true;
}

static long v1_parse(const unsigned char *b, size_t len,
                     struct tern__proxy *out) {
  size_t n = len < V1_MAX ? len : V1_MAX;
  size_t i, m, line = 0;
  enum v1_proto proto = V1_UNKNOWN;
  struct tern__proxy p;

  /* §2.1: "one line of US-ASCII text" ended by CRLF; "the receiver must
   * not tolerate a single CR or LF character to end the line". So a CR
   * must be followed by LF, and every other byte is printable. */
  for (i = 0; i < n; i++) {
    unsigned char c = b[i];
    if (c == '\r') {
      if (i + 1 == n)
        break; /* the LF may still come, unless n is already V1_MAX */
      if (b[i + 1] != '\n')
        return TERN_EPROXY;
      line = i + 2;
      break;
    }
    if (c < 0x20 || c > 0x7e)
      return TERN_EPROXY; /* bare LF, NUL, controls, 8-bit */
  }
  m = line ? line - 2 : i;
  if (!v1_prefix_ok(b, m, &proto))
    return TERN_EPROXY;
  if (line == 0)
    /* §2.1: "If the CRLF sequence is not found in the first 107
     * characters, the receiver should declare the line invalid." */
    return n == V1_MAX ? TERN_EPROXY : 0;

  if (m < 13) /* shorter than "PROXY UNKNOWN" / "PROXY TCP4 " */
    return TERN_EPROXY;
  if (proto == V1_UNKNOWN) {
    /* §2.1: with UNKNOWN the receiver uses "the real connection's
     * parameters as if there were no PROXY protocol header". */
    set_local(&p);
  } else if (!v1_fields((const char *)b + 11, m - 11, proto, &p)) {
    return TERN_EPROXY;
  }
  *out = p;
  return (long)line;
}

/* ---- version 2 ---------------------------------------------------------- */

/*
 * §2.2 TLVs after the address block: "type, length_hi, length_lo, value".
 * They are skipped, but they must tile the rest of the header exactly: a
 * TLV whose length runs past the header means the sender and we disagree
 * on where the header ends.
 */
static bool v2_tlvs_ok(const unsigned char *t, size_t n) {
  size_t i = 0;

  while (i < n) {
    size_t vlen;
    if (n - i < 3)
      return false;
    vlen = ((size_t)t[i + 1] << 8) | t[i + 2];
    if (n - i - 3 < vlen)
      return false;
    i += 3 + vlen;
  }
  return true;
}

static long v2_parse(const unsigned char *b, size_t len,
                     struct tern__proxy *out) {
  size_t n = len < sizeof v2_sig ? len : sizeof v2_sig;
  unsigned ver, cmd, fam, tproto;
  size_t alen, total, need;
  struct tern__proxy p;

  if (memcmp(b, v2_sig, n) != 0)
    return TERN_EPROXY;
  if (len < 13)
    return 0;
  /* §2.2 13th byte: version "must always be sent as \x2 and the receiver
   * must only accept this value"; commands other than LOCAL (0) and
   * PROXY (1): "Receivers must drop connections presenting unexpected
   * values here." */
  ver = b[12] >> 4;
  cmd = b[12] & 0x0f;
  if (ver != 2 || cmd > 1)
    return TERN_EPROXY;
  if (len < 14)
    return 0;
  /* §2.2 14th byte: family 0..3 and protocol 0..2; "other values ... must
   * be rejected as invalid by receivers". For LOCAL the family "is
   * ignored", so it is only checked for PROXY. */
  fam = b[13] >> 4;
  tproto = b[13] & 0x0f;
  if (cmd == 1 && (fam > 3 || tproto > 2))
    return TERN_EPROXY;
  /* SMTP runs over TCP: a proxied UDP flow is not a connection we can
   * serve, so DGRAM over AF_INET/AF_INET6 is refused. */
  if (cmd == 1 && (fam == 1 || fam == 2) && tproto == 2)
    return TERN_EPROXY;
  if (len < V2_HDR)
    return 0;
  /* §2.2 15th-16th bytes, network order: "the length of the protocol
   * header in bytes is always exactly 16 + this value". We cap it so the
   * whole header fits TERN__PROXY_MAX (§2.2 sizes everything to fit 536
   * bytes; 512 octets of TLVs is far more than senders use). */
  alen = ((size_t)b[14] << 8) | b[15];
  total = V2_HDR + alen;
  if (total > TERN__PROXY_MAX)
    return TERN_EPROXY;

  /* The address block a PROXY command must carry: 2*4+2*2 = 12 for
   * AF_INET, 2*16+2*2 = 36 for AF_INET6, 2*108 = 216 for AF_UNIX. */
  need = 0;
  if (cmd == 1 && tproto != 0) {
    if (fam == 1)
      need = 12;
    else if (fam == 2)
      need = 36;
    else if (fam == 3)
      need = 216;
  }
  if (alen < need)
    return TERN_EPROXY;
  /* §2.2: "The receiver must not start to parse an address before the
   * whole address block is received." */
  if (len < total)
    return 0;

  /* LOCAL: "must use the real connection endpoints and discard the
   * protocol block". UNSPEC family or protocol: "The receiver should
   * ignore address information." AF_UNIX: a socket path is no use to an
   * SMTP server as a client address, so it counts as local too. Their
   * contents are opaque and are skipped unchecked. */
  if (cmd == 0 || fam == 0 || fam == 3 || tproto == 0) {
    set_local(&p);
  } else {
    const unsigned char *a = b + V2_HDR;
    if (!v2_tlvs_ok(a + need, alen - need))
      return TERN_EPROXY;
    memset(&p, 0, sizeof p);
    if (fam == 1) {
      set_in4(&p.src, a, a + 8);
      set_in4(&p.dst, a + 4, a + 10);
    } else {
      set_in6(&p.src, a, a + 32);
      set_in6(&p.dst, a + 16, a + 34);
    }
    p.local = false;
  }
  *out = p;
  return (long)total;
}

/*
 * tern__proxy_parse() parses a PROXY protocol header at the start of
 * buf[0..len) (see proxy.h). §2.2 "Identifying the protocol version": a
 * v2 header starts with the 12-byte signature, a v1 header with "PROXY";
 * anything else "is not covered by this specification and the connection
 * must be dropped". Returns the header length (> 0) and fills *out; 0
 * when buf is a valid but incomplete prefix (never when len >=
 * TERN__PROXY_MAX); TERN_EPROXY as soon as the bytes cannot begin a valid
 * header. *out is written only on success. The result depends only on
 * buf[0..len), and a longer buf never turns TERN_EPROXY into anything
 * else nor changes a positive result.
 */
long tern__proxy_parse(const char *buf, size_t len, struct tern__proxy *out) {
  const unsigned char *b = (const unsigned char *)buf;

  if (len == 0)
    return 0;
  if (b[0] == 'P')
    return v1_parse(b, len, out);
  if (b[0] == v2_sig[0])
    return v2_parse(b, len, out);
  return TERN_EPROXY;
}

/* ---- CIDR lists ----------------------------------------------------------- */

struct cidr {
  unsigned char family; /* 4 or 6 */
  unsigned char bits;   /* prefix length */
  unsigned char addr[16];
};

struct tern__cidr_list {
  size_t n;
  struct cidr e[];
};

static bool is_sep(char c) { return c == ' ' || c == '\t' || c == ','; }

/* Do the first `bits` bits of a and b agree? */
static bool prefix_eq(const unsigned char *a, const unsigned char *b,
                      unsigned bits) {
  unsigned full = bits / 8, rest = bits % 8;

  if (memcmp(a, b, full) != 0)
    return false;
  if (rest != 0) {
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    if ((a[full] & mask) != (b[full] & mask))
      return false;
  }
  return true;
}

/*
 * One token s[0..n): "ADDR" or "ADDR/BITS". A bare address is a host
 * (/32 or /128). BITS is decimal without sign or leading zeros, at most
 * the address width (RFC 4632 §3.1 prefix notation; RFC 4291 §2.3 for
 * IPv6). Bits set past the prefix ("10.1.2.3/8") are refused rather than
 * masked: they usually mean a typo in the prefix length, and a typo there
 * can widen the list a great deal.
 */
static bool cidr_token(const char *s, size_t n, struct cidr *c) {
  size_t alen = n, i;
  unsigned width, bits;

  for (i = 0; i < n; i++)
    if (s[i] == '/') {
      alen = i;
      break;
    }
  memset(c, 0, sizeof *c);
  if (memchr(s, ':', alen) != NULL) {
    if (!parse_ip6(s, alen, c->addr))
      return false;
    c->family = 6;
    width = 128;
  } else {
    if (!parse_ip4(s, alen, c->addr))
      return false;
    c->family = 4;
    width = 32;
  }
  bits = width;
  if (alen < n && !parse_dec(s + alen + 1, n - alen - 1, width, &bits))
    return false;
  c->bits = (unsigned char)bits;
  /* host bits, the ones after the prefix, must be zero */
  for (i = bits; i < width; i++)
    if (c->addr[i / 8] & (0x80u >> (i % 8)))
      return false;
  return true;
}

/*
 * tern__cidr_parse() parses a list of networks from the NUL-terminated
 * `text`: tokens "ADDR[/BITS]" separated by any run of spaces, tabs and
 * commas (so "a, b" and "a b" are the same list). IPv4 addresses are
 * dotted quads without leading zeros; IPv6 addresses are what inet_pton()
 * accepts. An empty list is valid and matches nothing. On success *out is
 * a new list to free with tern__cidr_free() and 0 is returned. On failure
 * *out is NULL and the result is TERN_ESYNTAX with *bad (when bad is not
 * NULL) the offset in text of the first bad token, or TERN_ENOMEM.
 */
int tern__cidr_parse(struct tern__cidr_list **out, const char *text,
                     size_t *bad) {
  struct tern__cidr_list *l;
  size_t len = strlen(text), i, ntok = 0;

  *out = NULL;
  for (i = 0; i < len;) {
    if (is_sep(text[i])) {
      i++;
      continue;
    }
    ntok++;
    while (i < len && !is_sep(text[i]))
      i++;
  }
  /* ntok <= len / 1, and an entry is small: check the product anyway */
  if (ntok > (SIZE_MAX - sizeof *l) / sizeof l->e[0])
    return TERN_ENOMEM;
  l = tern__malloc(NULL, sizeof *l + ntok * sizeof l->e[0]);
  if (l == NULL)
    return TERN_ENOMEM;
  l->n = 0;
  for (i = 0; i < len;) {
    size_t start;
    if (is_sep(text[i])) {
      i++;
      continue;
    }
    start = i;
    while (i < len && !is_sep(text[i]))
      i++;
    if (!cidr_token(text + start, i - start, &l->e[l->n])) {
      if (bad != NULL)
        *bad = start;
      tern__free(NULL, l);
      return TERN_ESYNTAX;
    }
    l->n++;
  }
  *out = l;
  return 0;
}

/*
 * tern__cidr_match() tells whether the address of `sa` (AF_INET or
 * AF_INET6; the port is ignored) falls in one of the networks of l. An
 * IPv4-mapped IPv6 address (::ffff:a.b.c.d, RFC 4291 §2.5.5.2, what a
 * dual-stack socket reports for an IPv4 peer) also matches the IPv4
 * entries as a.b.c.d. NULL l or sa, or another family, match nothing.
 */
bool tern__cidr_match(const struct tern__cidr_list *l,
                      const struct sockaddr *sa) {
  static const unsigned char mapped[12] = {0, 0, 0, 0, 0,    0,
                                           0, 0, 0, 0, 0xff, 0xff};
  unsigned char a4[4], a6[16];
  bool has4 = false, has6 = false;
  size_t i;

  if (l == NULL || sa == NULL)
    return false;
  if (sa->sa_family == AF_INET) {
    struct sockaddr_in sin;
    memcpy(&sin, sa, sizeof sin);
    memcpy(a4, &sin.sin_addr, 4);
    has4 = true;
  } else if (sa->sa_family == AF_INET6) {
    struct sockaddr_in6 sin6;
    memcpy(&sin6, sa, sizeof sin6);
    memcpy(a6, &sin6.sin6_addr, 16);
    has6 = true;
    if (memcmp(a6, mapped, sizeof mapped) == 0) {
      memcpy(a4, a6 + 12, 4);
      has4 = true;
    }
  } else {
    return false;
  }
  for (i = 0; i < l->n; i++) {
    const struct cidr *c = &l->e[i];
    if (c->family == 4 && has4 && prefix_eq(c->addr, a4, c->bits))
      return true;
    if (c->family == 6 && has6 && prefix_eq(c->addr, a6, c->bits))
      return true;
  }
  return false;
}

/* tern__cidr_free() frees a list from tern__cidr_parse(); NULL is a
 * no-op. */
void tern__cidr_free(struct tern__cidr_list *l) { tern__free(NULL, l); }
