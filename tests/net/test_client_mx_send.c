/*
 * tern_send() and tern_client with "mx:" URLs, public API only, against a
 * tiny DNS responder on the same loop (uv_udp on 127.0.0.1, port 0) that
 * the resolver forwards to: a null MX gives the sender's reply 550
 * 5.1.10 in tern_send_result.reply (local) without any connection; a
 * domain that does not exist 550 5.1.2; a DNS server that answers
 * SERVFAIL 451 4.4.3 (temporary). Also: tern_client_new() refuses a bad
 * bind address and a bad mx: domain (TERN_EINVAL), and the callback runs
 * exactly once.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <tern/net.h>
#include <tern/resolve.h>
#include <tern/tern.h>

/* ---- the DNS responder ------------------------------------------------------ */

struct dns {
  uv_udp_t udp;
  int port;
  unsigned queries;
};

static void dns_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b) {
  static char buf[1500];
  (void)h;
  (void)sz;
  *b = uv_buf_init(buf, sizeof buf);
}

static void dns_sent(uv_udp_send_t *req, int status) {
  (void)status;
  free(req);
}

/* The question's name in dotted form (lower case) into out. */
static size_t qname(const unsigned char *p, size_t n, size_t off, char *out,
                    size_t cap) {
  size_t o = 0;
  while (off < n && p[off]) {
    size_t l = p[off++];
    if (off + l > n || o + l + 2 > cap)
      return 0;
    if (o)
      out[o++] = '.';
    for (size_t i = 0; i < l; i++) {
      char c = (char)p[off + i];
      out[o++] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    off += l;
  }
  out[o] = '\0';
  return off + 1; /* past the root label */
}

/* null.example MX -> "0 ."; servfail.example -> SERVFAIL; everything
 * else NXDOMAIN. */
static void dns_recv(uv_udp_t *u, ssize_t nread, const uv_buf_t *b,
                     const struct sockaddr *from, unsigned flags) {
  struct dns *d = u->data;
  (void)flags;
  if (nread < 12 || !from)
    return;
  const unsigned char *q = (const unsigned char *)b->base;
  char name[256];
  size_t end = qname(q, (size_t)nread, 12, name, sizeof name);
  if (!end || end + 4 > (size_t)nread)
    return;
  unsigned qtype = (unsigned)q[end] << 8 | q[end + 1];
  end += 4;
  d->queries++;
  struct {
    uv_udp_send_t req;
    unsigned char out[600];
  } *s = calloc(1, sizeof *s);
  if (!s)
    return;
  memcpy(s->out, q, end);
  s->out[2] = 0x84 | (q[2] & 0x01); /* QR, AA, RD copied */
  s->out[3] = 0x80;                 /* RA */
  s->out[6] = s->out[7] = s->out[8] = s->out[9] = s->out[10] = s->out[11] = 0;
  size_t n = end;
  if (!strcmp(name, "null.example") && qtype == 15) {
    static const unsigned char ans[] = {0xc0, 0x0c, 0, 15, 0, 1, 0, 0, 0,
                                        60, 0, 3, 0, 0, 0};
    memcpy(s->out + n, ans, sizeof ans);
    n += sizeof ans;
    s->out[7] = 1;
  } else if (!strcmp(name, "null.example")) {
    /* the name exists: NODATA */
  } else if (!strcmp(name, "servfail.example")) {
    s->out[3] |= 2;
  } else {
    s->out[3] |= 3;
  }
  uv_buf_t ob = uv_buf_init((char *)s->out, (unsigned)n);
  if (uv_udp_send(&s->req, u, &ob, 1, from, dns_sent) != 0)
    free(s);
}

static void dns_start(struct dns *d, uv_loop_t *loop) {
  struct sockaddr_in a;
  struct sockaddr_storage ss;
  int len = sizeof ss;
  memset(d, 0, sizeof *d);
  assert_int_equal(uv_udp_init(loop, &d->udp), 0);
  d->udp.data = d;
  uv_ip4_addr("127.0.0.1", 0, &a);
  assert_int_equal(uv_udp_bind(&d->udp, (struct sockaddr *)&a, 0), 0);
  assert_int_equal(uv_udp_getsockname(&d->udp, (struct sockaddr *)&ss, &len),
                   0);
  d->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
  assert_int_equal(uv_udp_recv_start(&d->udp, dns_alloc, dns_recv), 0);
}

/* ---- tern_send --------------------------------------------------------------- */

struct outcome {
  unsigned calls;
  int error;
  int code;
  char enhanced[16];
  char text[600];
  bool local;
};

static void on_sent(const struct tern_send_result *r, void *ud) {
  struct outcome *o = ud;
  o->calls++;
  o->error = r->error;
  o->code = r->reply.code;
  o->local = r->reply.local;
  snprintf(o->enhanced, sizeof o->enhanced, "%s",
           r->reply.enhanced ? r->reply.enhanced : "");
  snprintf(o->text, sizeof o->text, "%s", r->reply.text ? r->reply.text : "");
}

static void run_send(const char *url, struct outcome *o) {
  uv_loop_t loop;
  struct dns d;
  struct tern_resolver *res;
  struct tern_resolver_options ro;
  char fwd[64];
  assert_int_equal(uv_loop_init(&loop), 0);
  dns_start(&d, &loop);
  tern_resolver_options_init(&ro);
  snprintf(fwd, sizeof fwd, "127.0.0.1:%d", d.port);
  ro.forward = fwd;
  ro.dnssec = false;
  ro.timeout_ms = 5000;
  assert_int_equal(tern_resolver_new(&res, &loop, &ro), 0);
  struct tern_send_options so;
  tern_send_options_init(&so);
  so.resolver = res;
  so.timeout_ms = 5000;
  const char *to[] = {"bob@example.org"};
  struct tern_send_body b = tern_send_body_mem("Subject: x\r\n\r\nhi\r\n", 19);
  memset(o, 0, sizeof *o);
  assert_int_equal(tern_send(&loop, url, "a@example.org", to, 1, &b, &so,
                             on_sent, o),
                   0);
  assert_int_equal(o->calls, 0); /* never from inside the call */
  while (o->calls == 0 && uv_run(&loop, UV_RUN_ONCE))
    ;
  assert_int_equal(o->calls, 1);
  tern_resolver_free(res);
  uv_close((uv_handle_t *)&d.udp, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
  assert_true(d.queries > 0);
}

static void test_null_mx(void **state) {
  (void)state;
  struct outcome o;
  run_send("mx:null.example", &o);
  assert_int_equal(o.error, TERN_ERESOLVE);
  assert_int_equal(o.code, 550);
  assert_string_equal(o.enhanced, "5.1.10");
  assert_true(o.local);
  assert_non_null(strstr(o.text, "null.example"));
}

static void test_no_such_domain(void **state) {
  (void)state;
  struct outcome o;
  run_send("mx:nowhere.example", &o);
  assert_int_equal(o.code, 550);
  assert_string_equal(o.enhanced, "5.1.2");
}

static void test_servfail_is_temporary(void **state) {
  (void)state;
  struct outcome o;
  run_send("mx:servfail.example", &o);
  assert_int_equal(o.code, 451);
  assert_string_equal(o.enhanced, "4.4.3");
  assert_true(o.local);
}

/* ---- tern_client_new's checks ----------------------------------------------- */

static void test_bad_options(void **state) {
  (void)state;
  uv_loop_t loop;
  struct tern_client *cl = (struct tern_client *)&loop; /* set to NULL */
  struct tern_client_options o;
  assert_int_equal(uv_loop_init(&loop), 0);
  static const char *const bad_urls[] = {"mx:", "mx:1.2.3.4", "mx:-a.example",
                                         "mx:a..example", "mx:a b.example"};
  for (size_t i = 0; i < sizeof bad_urls / sizeof *bad_urls; i++) {
    tern_client_options_init(&o);
    o.url = bad_urls[i];
    assert_int_equal(tern_client_new(&cl, &loop, &o), TERN_EINVAL);
    assert_null(cl);
  }
  tern_client_options_init(&o);
  o.url = "smtp://127.0.0.1:25";
  o.bind_addr = "127.0.0.300";
  assert_int_equal(tern_client_new(&cl, &loop, &o), TERN_EINVAL);
  o.bind_addr = "::1"; /* an IPv6 address where IPv4 is asked */
  assert_int_equal(tern_client_new(&cl, &loop, &o), TERN_EINVAL);
  o.bind_addr = NULL;
  o.bind_addr6 = "::1";
  assert_int_equal(tern_client_new(&cl, &loop, &o), 0);
  tern_client_free(cl);
  tern_client_options_init(&o);
  o.url = "mx:Example.ORG.";
  o.tls_policy = (enum tern_tls_policy)99;
  assert_int_equal(tern_client_new(&cl, &loop, &o), TERN_EINVAL);
  o.tls_policy = TERN_TLS_POLICY_DANE;
  assert_int_equal(tern_client_new(&cl, &loop, &o), 0);
  tern_client_free(cl);
  assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_null_mx),
      cmocka_unit_test(test_no_such_domain),
      cmocka_unit_test(test_servfail_is_temporary),
      cmocka_unit_test(test_bad_options),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
