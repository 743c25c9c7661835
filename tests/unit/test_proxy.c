/*
 * Unit tests for the PROXY protocol parser and the CIDR lists
 * (src/net/proxy.c), against HAProxy's doc/proxy-protocol.txt.
 *
 * Every input is copied into an exact-size heap block before it is parsed,
 * so AddressSanitizer reports any read at or past len. A valid header is
 * also fed as each of its prefixes (which must all give 0, as when it
 * arrives one byte at a time) and followed by SMTP bytes (which must not
 * change the result). An invalid one is fed as each of its prefixes too:
 * those give 0 or TERN_EPROXY, and once TERN_EPROXY always TERN_EPROXY.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "internal.h"
#include "proxy.h"

/* ---- helpers ---------------------------------------------------------------- */

/* Parse a copy of p[0..n) in a block of exactly n bytes. *out is filled
 * with a pattern first; on a result <= 0 it must come back untouched. */
static long parse_exact(const void *p, size_t n, struct tern__proxy *out) {
  struct tern__proxy pattern;
  char *buf = malloc(n ? n : 1);
  long rc;

  assert_non_null(buf);
  if (n)
    memcpy(buf, p, n);
  memset(out, 0xA5, sizeof *out);
  memset(&pattern, 0xA5, sizeof pattern);
  rc = tern__proxy_parse(buf, n, out);
  if (rc <= 0)
    assert_memory_equal(out, &pattern, sizeof pattern);
  free(buf);
  return rc;
}

/* "a.b.c.d:port", "[v6]:port" or "local"/"unspec" for an address. */
static void addr_text(const struct sockaddr_storage *ss, char *txt,
                      size_t cap) {
  char ip[INET6_ADDRSTRLEN];

  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
    assert_non_null(inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof ip));
    snprintf(txt, cap, "%s:%u", ip, (unsigned)ntohs(sin->sin_port));
  } else if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
    assert_non_null(inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof ip));
    assert_int_equal(sin6->sin6_flowinfo, 0);
    assert_int_equal(sin6->sin6_scope_id, 0);
    snprintf(txt, cap, "[%s]:%u", ip, (unsigned)ntohs(sin6->sin6_port));
  } else {
    snprintf(txt, cap, "family %d", (int)ss->ss_family);
  }
}

/*
 * A valid header h[0..n): every shorter prefix gives 0, the whole gives n,
 * and so does the header followed by an SMTP command. src/dst NULL means
 * a local result (v1 UNKNOWN, v2 LOCAL/UNSPEC/UNIX).
 */
static void check_valid(const void *h, size_t n, const char *src,
                        const char *dst) {
  struct tern__proxy p;
  char txt[128];
  size_t k;
  unsigned char *more;
  static const char smtp[] = "EHLO client.example\r\nMAIL FROM:<a@b>\r\n";

  for (k = 0; k < n; k++) {
    long rc = parse_exact(h, k, &p);
    if (rc != 0)
      fail_msg("prefix of %zu/%zu bytes gave %ld, want 0", k, n, rc);
  }
  assert_int_equal(parse_exact(h, n, &p), (long)n);
  if (src == NULL) {
    assert_true(p.local);
    assert_int_equal(p.src.ss_family, AF_UNSPEC);
    assert_int_equal(p.dst.ss_family, AF_UNSPEC);
  } else {
    assert_false(p.local);
    addr_text(&p.src, txt, sizeof txt);
    assert_string_equal(txt, src);
    addr_text(&p.dst, txt, sizeof txt);
    assert_string_equal(txt, dst);
  }

  /* Bytes after the header belong to SMTP: the length stops at the end. */
  more = malloc(n + sizeof smtp);
  assert_non_null(more);
  memcpy(more, h, n);
  memcpy(more + n, smtp, sizeof smtp - 1);
  for (k = n; k < n + sizeof smtp; k++)
    assert_int_equal(parse_exact(more, k, &p), (long)n);
  free(more);
}

/* An invalid input b[0..n): TERN_EPROXY whole; each prefix 0 or
 * TERN_EPROXY, and never 0 after a shorter prefix gave TERN_EPROXY. */
static void check_invalid(const void *b, size_t n) {
  struct tern__proxy p;
  bool seen_err = false;
  size_t k;

  for (k = 0; k <= n; k++) {
    long rc = parse_exact(b, k, &p);
    if (rc != 0 && rc != TERN_EPROXY)
      fail_msg("prefix of %zu/%zu bytes gave %ld", k, n, rc);
    if (seen_err && rc != TERN_EPROXY)
      fail_msg("prefix of %zu/%zu bytes gave %ld after TERN_EPROXY", k, n,
               rc);
    if (rc == TERN_EPROXY)
      seen_err = true;
  }
  if (!seen_err)
    fail_msg("input of %zu bytes was accepted as incomplete", n);
}

static void check_invalid_str(const char *s) { check_invalid(s, strlen(s)); }

/* ---- version 1 ------------------------------------------------------------ */

#define V6MAX "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"

static void test_v1_valid(void **state) {
  static const struct {
    const char *line, *src, *dst;
  } t[] = {
      /* §2.1 example */
      {"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
       "192.168.0.1:56324", "192.168.0.11:443"},
      {"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
       "255.255.255.255:65535", "255.255.255.255:65535"},
      {"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n", "0.0.0.0:0", "0.0.0.0:0"},
      {"PROXY TCP4 10.0.0.1 10.0.0.2 1 25\r\n", "10.0.0.1:1", "10.0.0.2:25"},
      {"PROXY TCP6 2001:db8::1 2001:db8::2 1234 25\r\n", "[2001:db8::1]:1234",
       "[2001:db8::2]:25"},
      {"PROXY TCP6 " V6MAX " " V6MAX " 65535 65535\r\n",
       "[" V6MAX "]:65535", "[" V6MAX "]:65535"},
      {"PROXY TCP6 FE80::A 2001:DB8:0:0:0:0:0:1 587 465\r\n", "[fe80::a]:587",
       "[2001:db8::1]:465"},
      {"PROXY TCP6 ::ffff:192.0.2.1 ::1 40000 25\r\n",
       "[::ffff:192.0.2.1]:40000", "[::1]:25"},
      {"PROXY TCP6 :: :: 0 0\r\n", "[::]:0", "[::]:0"},
      /* UNKNOWN: "the receiver must ignore anything presented before the
       * CRLF" */
      {"PROXY UNKNOWN\r\n", NULL, NULL},
      {"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n", NULL, NULL},
      {"PROXY UNKNOWN whatever the sender likes: ~!@#$%^&*()\r\n", NULL,
       NULL},
      {"PROXY UNKNOWN \r\n", NULL, NULL},
      /* the 107-octet worst case of §2.1 */
      {"PROXY UNKNOWN " V6MAX " " V6MAX " 65535 65535\r\n", NULL, NULL},
  };
  size_t i;

  (void)state;
  assert_int_equal(strlen(t[5].line), 104);
  assert_int_equal(strlen(t[13].line), 107);
  for (i = 0; i < sizeof t / sizeof t[0]; i++)
    check_valid(t[i].line, strlen(t[i].line), t[i].src, t[i].dst);
}

static void test_v1_invalid(void **state) {
  static const char *const t[] = {
      /* line ending: §2.1 "must not tolerate a single CR or LF" */
      "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n",
      "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\rX",
      "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\r\n",
      "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n\r",
      "PROXY\r\n",
      "PROXY \r\n",
      "PROXY TCP4\r\n",
      "PROXY TCP4 \r\n",
      "PROXY UNKNOWN\n",
      "PROXY UNKNOWN\rfoo\r\n",
      /* keyword and protocol: exact, upper case */
      "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
      "Proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
      "PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
      "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
      "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
      "PROXY TCP 1.2.3.4 5.6.7.8 1 2\r\n",
      "PROXY unknown\r\n",
      "PROXY UNKNOWNX\r\n",
      "PROXY UNKNOWN\t\r\n",
      "PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
      " PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
      "PROXY:TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
      /* spaces: "exactly one space" between fields, none at the end */
      "PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
      "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
      "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8  1 2\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
      "PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n",
      /* field count */
      "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
      /* ports: decimal 0..65535, no sign, no leading zeros */
      "PROXY TCP4 1.2.3.4 5.6.7.8 65536 25\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 25 65536\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 99999 25\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 100000 25\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 0000000000000000025 25\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 -1 25\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 +1 25\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 025 25\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 00 25\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 0x19 25\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 1.5 25\r\n",
      "PROXY TCP6 ::1 ::1 ab 25\r\n",
      "PROXY TCP6 ::1 ::1 25 :\r\n",
      /* IPv4: 4 decimal octets 0..255, no leading zeros */
      "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
      "PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n",
      "PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.999 1 2\r\n",
      "PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
      "PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n",
      "PROXY TCP4 1..3.4 5.6.7.8 1 2\r\n",
      "PROXY TCP4 1.2.3.4. 5.6.7.8 1 2\r\n",
      "PROXY TCP4 .1.2.3.4 5.6.7.8 1 2\r\n",
      "PROXY TCP4 1.2.3.4 . 1 2\r\n",
      "PROXY TCP4 16909060 5.6.7.8 1 2\r\n",
      "PROXY TCP4 1.2.3.1000 5.6.7.8 1 2\r\n",
      "PROXY TCP4 0x1.2.3.4 5.6.7.8 1 2\r\n",
      /* the family dictates the format */
      "PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
      "PROXY TCP4 1.2.3.4 2001:db8::1 1 2\r\n",
      "PROXY TCP4 ::ffff:1.2.3.4 5.6.7.8 1 2\r\n",
      "PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
      "PROXY TCP6 ::1 5.6.7.8 1 2\r\n",
      /* IPv6 syntax */
      "PROXY TCP6 ::: ::1 1 2\r\n",
      "PROXY TCP6 1::2::3 ::1 1 2\r\n",
      "PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n",
      "PROXY TCP6 1:2:3:4:5:6:7 ::1 1 2\r\n",
      "PROXY TCP6 12345::1 ::1 1 2\r\n",
      "PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
      "PROXY TCP6 [::1] ::1 1 2\r\n",
      "PROXY TCP6 g::1 ::1 1 2\r\n",
      "PROXY TCP6 ::1/128 ::1 1 2\r\n",
      /* bytes outside printable US-ASCII */
      "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\x80\r\n",
      "PROXY UNKNOWN \xc3\xa9\r\n",
      "PROXY UNKNOWN \x7f\r\n",
      "PROXY UNKNOWN \x01\r\n",
      /* too long: the CRLF must be within the first 107 octets */
      "PROXY UNKNOWN " V6MAX " " V6MAX " 65535 655350\r\n",
      "PROXY UNKNOWN " V6MAX " " V6MAX " 65535 65535 "
      "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n",
      "PROXY TCP6 " V6MAX " " V6MAX " 65535 655350000\r\n",
      /* plain SMTP and other protocols */
      "EHLO client.example\r\n",
      "HELO x\r\n",
      "QUIT\r\n",
      "POST / HTTP/1.1\r\n",
      "PROXZ TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
      "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
      "\n",
  };
  size_t i;

  (void)state;
  for (i = 0; i < sizeof t / sizeof t[0]; i++)
    check_invalid_str(t[i]);
  /* NUL in the line */
  check_invalid("PROXY TCP4 1.2.3.4\0 5.6.7.8 1 2\r\n", 33);
  check_invalid("PROXY UNKNOWN \0\r\n", 17);
}

/* Refused as soon as the bytes cannot start a valid header, without
 * waiting for a CRLF. */
static void test_v1_early_reject(void **state) {
  /* valid prefixes: more bytes needed */
  static const char *const pending[] = {
      "P",
      "PROXY",
      "PROXY ",
      "PROXY T",
      "PROXY U",
      "PROXY TCP",
      "PROXY TCP4 ",
      "PROXY TCP4 1.2.3.4 5",
      "PROXY TCP6 ::1 ",
      "PROXY UNKNOWN",
      "PROXY UNKNOWN anything at all",
      "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r",
      "PROXY TCP4 999.1.1.1 5.6.7.8 1 2", /* wrong, but only the CRLF tells */
      "\r",
      "\r\n",
      "\r\n\r\n",
  };
  /* refused before any CRLF */
  static const char *const bad[] = {
      "E",           "EHLO",           "p",             "PROXy",
      "PROXY X",     "PROXY TCP4X",    "PROXY UNKNOWNX", "PROXY TCP4 ::",
      "PROXY TCP4 a", "PROXY TCP6 x",  "PROXY TCP4 1\t", "PROXY TCP4 1\n",
      "PROXY TCP4\r\n", "PROXY\r ",   "PROXY TCP6 ::1/", "\n",
      "\r\r",       "\r\n\n",
  };
  struct tern__proxy p;
  size_t i;
  char buf[200];

  (void)state;
  assert_int_equal(parse_exact("", 0, &p), 0);
  for (i = 0; i < sizeof pending / sizeof pending[0]; i++) {
    long rc = parse_exact(pending[i], strlen(pending[i]), &p);
    if (rc != 0)
      fail_msg("\"%s\" gave %ld, want 0", pending[i], rc);
  }
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    long rc = parse_exact(bad[i], strlen(bad[i]), &p);
    if (rc != TERN_EPROXY)
      fail_msg("\"%s\" gave %ld, want TERN_EPROXY", bad[i], rc);
  }
  /* 106 valid octets without CRLF: still waiting; the 107th (not LF)
   * decides. A CR as the 107th octet is too late: its LF would be 108th. */
  memset(buf, 'x', sizeof buf);
  memcpy(buf, "PROXY UNKNOWN ", 14);
  assert_int_equal(parse_exact(buf, 106, &p), 0);
  assert_int_equal(parse_exact(buf, 107, &p), TERN_EPROXY);
  buf[105] = '\r';
  assert_int_equal(parse_exact(buf, 106, &p), 0);
  buf[106] = '\n';
  assert_int_equal(parse_exact(buf, 107, &p), 107);
  buf[105] = 'x';
  buf[106] = '\r';
  assert_int_equal(parse_exact(buf, 107, &p), TERN_EPROXY);
  buf[107] = '\n';
  assert_int_equal(parse_exact(buf, 108, &p), TERN_EPROXY);
  /* never 0 at TERN__PROXY_MAX bytes */
  assert_int_equal(parse_exact(buf, sizeof buf, &p), TERN_EPROXY);
}

/* ---- version 2 ------------------------------------------------------------ */

static const unsigned char sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                      0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* A v2 header: signature, ver_cmd, fam, len = alen + tlen, address block,
 * TLV bytes. Returns the total length. */
static size_t v2(unsigned char *out, size_t cap, unsigned char ver_cmd,
                 unsigned char fam, const void *addr, size_t alen,
                 const void *tlv, size_t tlen) {
  size_t n = alen + tlen;

  assert_true(16 + n <= cap);
  memcpy(out, sig, 12);
  out[12] = ver_cmd;
  out[13] = fam;
  out[14] = (unsigned char)(n >> 8);
  out[15] = (unsigned char)(n & 0xff);
  if (alen)
    memcpy(out + 16, addr, alen);
  if (tlen)
    memcpy(out + 16 + alen, tlv, tlen);
  return 16 + n;
}

/* 192.0.2.1:12345 -> 198.51.100.2:25 */
static const unsigned char a4[12] = {192, 0, 2, 1, 198, 51, 100, 2,
                                     0x30, 0x39, 0x00, 0x19};
/* [2001:db8::1]:65535 -> [2001:db8::2]:587 */
static const unsigned char a6[36] = {
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
    0xff, 0xff, 0x02, 0x4b};
/* ALPN "smtp", NOOP (empty), UNIQUE_ID of 5 bytes */
static const unsigned char tlvs[] = {0x01, 0x00, 0x04, 's', 'm', 't', 'p',
                                     0x04, 0x00, 0x00, 0x05, 0x00, 0x05,
                                     1,    2,    3,    4,   5};

static void test_v2_valid(void **state) {
  unsigned char h[TERN__PROXY_MAX + 16];
  unsigned char big[600], unix_addr[216];
  size_t n;

  (void)state;
  n = v2(h, sizeof h, 0x21, 0x11, a4, sizeof a4, NULL, 0);
  assert_int_equal(n, 28);
  check_valid(h, n, "192.0.2.1:12345", "198.51.100.2:25");
  n = v2(h, sizeof h, 0x21, 0x11, a4, sizeof a4, tlvs, sizeof tlvs);
  check_valid(h, n, "192.0.2.1:12345", "198.51.100.2:25");

  n = v2(h, sizeof h, 0x21, 0x21, a6, sizeof a6, NULL, 0);
  assert_int_equal(n, 52);
  check_valid(h, n, "[2001:db8::1]:65535", "[2001:db8::2]:587");
  n = v2(h, sizeof h, 0x21, 0x21, a6, sizeof a6, tlvs, sizeof tlvs);
  check_valid(h, n, "[2001:db8::1]:65535", "[2001:db8::2]:587");

  /* LOCAL: "discard the protocol block including the family" */
  n = v2(h, sizeof h, 0x20, 0x00, NULL, 0, NULL, 0);
  assert_int_equal(n, 16);
  check_valid(h, n, NULL, NULL);
  n = v2(h, sizeof h, 0x20, 0x11, a4, sizeof a4, NULL, 0);
  check_valid(h, n, NULL, NULL);
  n = v2(h, sizeof h, 0x20, 0x21, a6, sizeof a6, tlvs, sizeof tlvs);
  check_valid(h, n, NULL, NULL);
  n = v2(h, sizeof h, 0x20, 0xff, "junk", 4, NULL, 0);
  check_valid(h, n, NULL, NULL);
  n = v2(h, sizeof h, 0x20, 0x11, NULL, 0, NULL, 0); /* no block at all */
  check_valid(h, n, NULL, NULL);

  /* PROXY with UNSPEC family or protocol: addresses ignored */
  n = v2(h, sizeof h, 0x21, 0x00, NULL, 0, NULL, 0);
  check_valid(h, n, NULL, NULL);
  n = v2(h, sizeof h, 0x21, 0x00, a4, sizeof a4, tlvs, sizeof tlvs);
  check_valid(h, n, NULL, NULL);
  n = v2(h, sizeof h, 0x21, 0x10, a4, sizeof a4, NULL, 0);
  check_valid(h, n, NULL, NULL);
  n = v2(h, sizeof h, 0x21, 0x01, NULL, 0, NULL, 0);
  check_valid(h, n, NULL, NULL);

  /* AF_UNIX stream and datagram: local */
  memset(unix_addr, 0, sizeof unix_addr);
  memcpy(unix_addr, "/run/haproxy.sock", 17);
  memcpy(unix_addr + 108, "/run/tern.sock", 14);
  n = v2(h, sizeof h, 0x21, 0x31, unix_addr, sizeof unix_addr, NULL, 0);
  assert_int_equal(n, 232);
  check_valid(h, n, NULL, NULL);
  n = v2(h, sizeof h, 0x21, 0x32, unix_addr, sizeof unix_addr, tlvs,
         sizeof tlvs);
  check_valid(h, n, NULL, NULL);

  /* the largest header: 16 + 512 = TERN__PROXY_MAX, one big TLV */
  memset(big, 0x42, sizeof big);
  big[0] = 0xE0;
  big[1] = (unsigned char)((512 - 12 - 3) >> 8);
  big[2] = (unsigned char)((512 - 12 - 3) & 0xff);
  n = v2(h, sizeof h, 0x21, 0x11, a4, sizeof a4, big, 512 - 12);
  assert_int_equal(n, TERN__PROXY_MAX);
  check_valid(h, n, "192.0.2.1:12345", "198.51.100.2:25");
  n = v2(h, sizeof h, 0x20, 0x00, NULL, 0, big, 512);
  assert_int_equal(n, TERN__PROXY_MAX);
  check_valid(h, n, NULL, NULL);
}

static void test_v2_invalid(void **state) {
  unsigned char h[TERN__PROXY_MAX + 64];
  unsigned char big[600], unix_addr[216];
  struct tern__proxy p;
  size_t n, i;

  (void)state;
  memset(big, 0, sizeof big);
  memset(unix_addr, 0, sizeof unix_addr);

  /* version: "the receiver must only accept" 2 */
  static const unsigned char bad_ver_cmd[] = {0x11, 0x01, 0x31, 0xF1, 0x00,
                                              0x22, 0x2F, 0x23, 0x12};
  for (i = 0; i < sizeof bad_ver_cmd; i++) {
    n = v2(h, sizeof h, bad_ver_cmd[i], 0x11, a4, sizeof a4, NULL, 0);
    check_invalid(h, n);
    /* decided at the 13th byte */
    assert_int_equal(parse_exact(h, 13, &p), TERN_EPROXY);
  }
  /* family and protocol: unassigned values; DGRAM over INET/INET6 */
  static const unsigned char bad_fam[] = {0x41, 0x13, 0xF1, 0x03, 0x1F,
                                          0x12, 0x22};
  for (i = 0; i < sizeof bad_fam; i++) {
    n = v2(h, sizeof h, 0x21, bad_fam[i], a6, sizeof a6, NULL, 0);
    check_invalid(h, n);
    assert_int_equal(parse_exact(h, 14, &p), TERN_EPROXY);
  }
  /* length past TERN__PROXY_MAX: decided at the 16th byte */
  n = v2(h, sizeof h, 0x21, 0x11, a4, sizeof a4, big, 512 - 12 + 1);
  assert_int_equal(n, TERN__PROXY_MAX + 1);
  check_invalid(h, n);
  assert_int_equal(parse_exact(h, 16, &p), TERN_EPROXY);
  n = v2(h, sizeof h, 0x20, 0x00, NULL, 0, big, 513);
  assert_int_equal(parse_exact(h, 16, &p), TERN_EPROXY);
  h[14] = 0xff;
  h[15] = 0xff;
  assert_int_equal(parse_exact(h, 16, &p), TERN_EPROXY);
  assert_int_equal(parse_exact(h, sizeof h, &p), TERN_EPROXY);
  /* address block shorter than the family needs */
  n = v2(h, sizeof h, 0x21, 0x11, a4, 11, NULL, 0);
  check_invalid(h, n);
  assert_int_equal(parse_exact(h, 16, &p), TERN_EPROXY);
  n = v2(h, sizeof h, 0x21, 0x11, NULL, 0, NULL, 0);
  check_invalid(h, n);
  n = v2(h, sizeof h, 0x21, 0x21, a6, 35, NULL, 0);
  check_invalid(h, n);
  n = v2(h, sizeof h, 0x21, 0x21, a4, sizeof a4, NULL, 0);
  check_invalid(h, n);
  n = v2(h, sizeof h, 0x21, 0x31, unix_addr, 215, NULL, 0);
  check_invalid(h, n);
  /* TLVs that do not tile the rest of the header */
  {
    static const unsigned char t_short[] = {0x01, 0x00, 0x05, 'a', 'b'};
    static const unsigned char t_hdr[] = {0x01, 0x00};
    static const unsigned char t_tail[] = {0x04, 0x00, 0x00, 0x04};
    static const unsigned char t_huge[] = {0x01, 0xff, 0xff, 0};
    n = v2(h, sizeof h, 0x21, 0x11, a4, sizeof a4, t_short, sizeof t_short);
    check_invalid(h, n);
    n = v2(h, sizeof h, 0x21, 0x11, a4, sizeof a4, t_hdr, sizeof t_hdr);
    check_invalid(h, n);
    n = v2(h, sizeof h, 0x21, 0x21, a6, sizeof a6, t_tail, sizeof t_tail);
    check_invalid(h, n);
    n = v2(h, sizeof h, 0x21, 0x21, a6, sizeof a6, t_huge, sizeof t_huge);
    check_invalid(h, n);
  }
  /* a wrong signature byte anywhere: refused at that byte */
  for (i = 0; i < 12; i++) {
    n = v2(h, sizeof h, 0x21, 0x11, a4, sizeof a4, NULL, 0);
    h[i] ^= 0x20;
    if (i == 0)
      continue; /* '-' is neither 'P' nor CR: refused at once anyway */
    check_invalid(h, n);
    assert_int_equal(parse_exact(h, i, &p), 0);
    assert_int_equal(parse_exact(h, i + 1, &p), TERN_EPROXY);
  }
  /* a v1 line is not a v2 header and the reverse: CRLF alone is refused */
  check_invalid("\r\n\r\nQUIT\r\n", 10);
  check_invalid("\r\nEHLO x\r\n", 10);
}

static void test_v2_prefix(void **state) {
  struct tern__proxy p;
  unsigned char h[64];
  size_t n;

  (void)state;
  n = v2(h, sizeof h, 0x21, 0x11, a4, sizeof a4, NULL, 0);
  /* §2.2 "must not start to parse an address before the whole address
   * block is received" */
  assert_int_equal(parse_exact(h, 12, &p), 0);
  assert_int_equal(parse_exact(h, 16, &p), 0);
  assert_int_equal(parse_exact(h, n - 1, &p), 0);
  assert_int_equal(parse_exact(h, n, &p), (long)n);
  /* a v2 header followed by a v1 line: only the first is consumed */
  memcpy(h + n, "PROXY UNKNOWN\r\n", 15);
  assert_int_equal(parse_exact(h, n + 15, &p), (long)n);
  assert_int_equal(parse_exact(h + n, 15, &p), 15);
}

/* ---- CIDR lists ----------------------------------------------------------- */

static bool match_text(const struct tern__cidr_list *l, const char *ip) {
  struct sockaddr_in sin;
  struct sockaddr_in6 sin6;

  memset(&sin, 0, sizeof sin);
  memset(&sin6, 0, sizeof sin6);
  if (inet_pton(AF_INET, ip, &sin.sin_addr) == 1) {
    sin.sin_family = AF_INET;
    sin.sin_port = htons(25);
    return tern__cidr_match(l, (const struct sockaddr *)&sin);
  }
  if (inet_pton(AF_INET6, ip, &sin6.sin6_addr) == 1) {
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons(25);
    return tern__cidr_match(l, (const struct sockaddr *)&sin6);
  }
  fail_msg("bad test address %s", ip);
  return false;
}

struct match_case {
  const char *ip;
  bool want;
};

static void check_matches(const char *list, const struct match_case *t,
                          size_t n) {
  struct tern__cidr_list *l = (struct tern__cidr_list *)&l;
  size_t bad = 12345, i;

  assert_int_equal(tern__cidr_parse(&l, list, &bad), 0);
  assert_non_null(l);
  assert_int_equal(bad, 12345); /* untouched on success */
  for (i = 0; i < n; i++)
    if (match_text(l, t[i].ip) != t[i].want)
      fail_msg("list \"%s\": %s should %smatch", list, t[i].ip,
               t[i].want ? "" : "not ");
  tern__cidr_free(l);
}

#define CHECK_MATCHES(list, table)                                             \
  check_matches(list, table, sizeof table / sizeof table[0])

static void test_cidr_match(void **state) {
  static const struct match_case mixed[] = {
      {"127.0.0.1", true},
      {"127.255.255.255", true},
      {"127.0.0.0", true},
      {"126.255.255.255", false},
      {"128.0.0.0", false},
      {"::1", true},
      {"::2", false},
      {"::", false},
      {"192.0.2.7", true},
      {"192.0.2.6", false},
      {"192.0.2.8", false},
      {"2001:db8::", true},
      {"2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", true},
      {"2001:db9::", false},
      {"2001:db7:ffff::", false},
      /* IPv4-mapped IPv6 matches the IPv4 entries */
      {"::ffff:127.0.0.1", true},
      {"::ffff:192.0.2.7", true},
      {"::ffff:192.0.2.8", false},
      {"::ffff:10.0.0.1", false},
      /* but IPv4-compatible (deprecated) and NAT64 forms do not */
      {"::127.0.0.1", false},
      {"64:ff9b::127.0.0.1", false},
      {"::fffe:127.0.0.1", false},
      {"0:0:0:0:1:ffff:127.0.0.1", false},
  };
  static const struct match_case all4[] = {
      {"0.0.0.0", true},
      {"255.255.255.255", true},
      {"::ffff:1.2.3.4", true},
      {"2001:db8::1", false},
      {"::1", false},
  };
  static const struct match_case all6[] = {
      {"::", true},
      {"2001:db8::1", true},
      {"::ffff:1.2.3.4", true}, /* an IPv6 address too */
      {"1.2.3.4", false},      /* a plain IPv4 socket address is not */
  };
  static const struct match_case odd[] = {
      {"10.0.0.0", true},       {"10.127.255.255", true},
      {"10.128.0.0", false},    {"9.255.255.255", false},
      {"172.16.0.0", true},     {"172.31.255.255", true},
      {"172.32.0.0", false},    {"2001:db8::", true},
      {"2001:db8:7fff::1", true}, {"2001:db8:8000::", false},
      {"fe80::1", true},        {"febf:ffff::1", true},
      {"fec0::1", false},       {"100.64.0.1", true},
      {"100.128.0.1", false},   {"192.0.2.255", false},
      {"198.51.100.0", true},   {"198.51.100.1", false},
  };
  static const struct match_case mapped6[] = {
      {"1.2.3.4", false}, /* a v6 entry does not match an IPv4 socket */
      {"::ffff:1.2.3.4", true},
      {"::ffff:1.2.3.5", false},
  };
  static const struct match_case none[] = {
      {"127.0.0.1", false}, {"::1", false}, {"::ffff:127.0.0.1", false},
  };

  (void)state;
  CHECK_MATCHES("127.0.0.0/8 ::1/128 192.0.2.7, 2001:db8::/32", mixed);
  CHECK_MATCHES("0.0.0.0/0", all4);
  CHECK_MATCHES("::/0", all6);
  CHECK_MATCHES("10.0.0.0/9,172.16.0.0/12,,2001:db8::/33\tfe80::/10 , "
                "100.64.0.0/10 198.51.100.0/32",
                odd);
  CHECK_MATCHES("::ffff:1.2.3.4", mapped6);
  CHECK_MATCHES("", none);
  CHECK_MATCHES(" ,\t, ", none);
}

static void test_cidr_match_edges(void **state) {
  struct tern__cidr_list *l;
  struct sockaddr_un sun;
  struct sockaddr_in sin;

  (void)state;
  assert_int_equal(tern__cidr_parse(&l, "0.0.0.0/0 ::/0", NULL), 0);
  memset(&sun, 0, sizeof sun);
  sun.sun_family = AF_UNIX;
  assert_false(tern__cidr_match(l, (const struct sockaddr *)&sun));
  memset(&sin, 0, sizeof sin);
  sin.sin_family = AF_INET;
  assert_true(tern__cidr_match(l, (const struct sockaddr *)&sin));
  assert_false(tern__cidr_match(l, NULL));
  assert_false(tern__cidr_match(NULL, (const struct sockaddr *)&sin));
  tern__cidr_free(l);
  tern__cidr_free(NULL);
}

static void test_cidr_parse_bad(void **state) {
  static const struct {
    const char *text;
    size_t bad;
  } t[] = {
      {"127.0.0.0/33", 0},
      {"::1/129", 0},
      {"::/200", 0},
      {"1.2.3.4/", 0},
      {"/8", 0},
      {"/", 0},
      {"1.2.3.4/08", 0},
      {"1.2.3.4/-1", 0},
      {"1.2.3.4/+8", 0},
      {"1.2.3.4/8/8", 0},
      {"1.2.3.4/0x8", 0},
      {"1.2.3.4/ 8", 0},
      {"1.2.3.4/99999999999999999999", 0},
      {"10.0.0.1/8", 0},      /* host bits set */
      {"2001:db8::1/32", 0},  /* host bits set */
      {"10.128.0.0/8", 0},
      {"127.0.0.0/8 junk", 12},
      {"127.0.0.0/8,::1/128, 1.2.3", 21},
      {"::1 ::1 ::1 1.2.3.4.5", 12},
      {"01.2.3.4", 0},
      {"256.0.0.0", 0},
      {"1.2.3", 0},
      {"1.2.3.4.", 0},
      {"fe80::1%eth0", 0},
      {"[::1]", 0},
      {"1:2:3:4:5:6:7:8:9", 0},
      {"1::2::3", 0},
      {"1.2.3.4;5.6.7.8", 0},
      {"localhost", 0},
      {"::1/12a", 0},
      {"0000:0000:0000:0000:0000:0000:0000:0000:0000/0", 0},
      {"0000:0000:0000:0000:0000:0000:255.255.255.255x", 0},
      {"1.2.3.4\n", 0},
      {"  1.2.3.4 5.6.7.9/31", 10},
  };
  size_t i;

  (void)state;
  for (i = 0; i < sizeof t / sizeof t[0]; i++) {
    struct tern__cidr_list *l = (struct tern__cidr_list *)&l;
    size_t bad = 999;
    int rc = tern__cidr_parse(&l, t[i].text, &bad);
    if (rc != TERN_ESYNTAX)
      fail_msg("\"%s\": rc %d, want TERN_ESYNTAX", t[i].text, rc);
    assert_null(l);
    if (bad != t[i].bad)
      fail_msg("\"%s\": bad %zu, want %zu", t[i].text, bad, t[i].bad);
    /* bad may be NULL */
    assert_int_equal(tern__cidr_parse(&l, t[i].text, NULL), TERN_ESYNTAX);
    assert_null(l);
  }
}

static void test_cidr_parse_good(void **state) {
  static const char *const t[] = {
      "0.0.0.0/0",
      "255.255.255.255/32",
      "255.255.255.255",
      "::/0",
      "::",
      "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
      "0000:0000:0000:0000:0000:0000:255.255.255.255",
      "FE80::/10",
      "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16",
      "1.2.3.4/32 , , 5.6.7.0/24",
      "\t1.2.3.4\t",
      "128.0.0.0/1 0.0.0.0/1",
  };
  size_t i;

  (void)state;
  for (i = 0; i < sizeof t / sizeof t[0]; i++) {
    struct tern__cidr_list *l = NULL;
    size_t bad = 0;
    int rc = tern__cidr_parse(&l, t[i], &bad);
    if (rc != 0)
      fail_msg("\"%s\": rc %d at %zu", t[i], rc, bad);
    assert_non_null(l);
    tern__cidr_free(l);
  }
}

/* A header's source address checked against a list, as the listener
 * will do it. */
static void test_proxy_then_cidr(void **state) {
  static const char line[] = "PROXY TCP6 ::ffff:192.0.2.9 ::1 4000 25\r\n";
  struct tern__cidr_list *l;
  struct tern__proxy p;

  (void)state;
  assert_int_equal(parse_exact(line, sizeof line - 1, &p),
                   (long)(sizeof line - 1));
  assert_int_equal(tern__cidr_parse(&l, "192.0.2.0/24", NULL), 0);
  assert_true(tern__cidr_match(l, (const struct sockaddr *)&p.src));
  assert_false(tern__cidr_match(l, (const struct sockaddr *)&p.dst));
  tern__cidr_free(l);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_v1_valid),
      cmocka_unit_test(test_v1_invalid),
      cmocka_unit_test(test_v1_early_reject),
      cmocka_unit_test(test_v2_valid),
      cmocka_unit_test(test_v2_invalid),
      cmocka_unit_test(test_v2_prefix),
      cmocka_unit_test(test_cidr_match),
      cmocka_unit_test(test_cidr_match_edges),
      cmocka_unit_test(test_cidr_parse_bad),
      cmocka_unit_test(test_cidr_parse_good),
      cmocka_unit_test(test_proxy_then_cidr),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
