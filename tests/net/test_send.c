/*
 * tern_send(), the one-call send (net.h), against a tern_server on the
 * same loop (public API only, 127.0.0.1 port 0): every recipient
 * accepted; one refused (its own reply in the result); all refused;
 * LMTP's per-recipient data replies; the body from memory (a large one
 * too: backpressure) and from a file descriptor the caller closes at
 * once; connection refused; the server closing mid-envelope (421); AUTH
 * with the options' password, right and wrong; bad arguments (no
 * callback). Every case
 * runs the loop until nothing is left and checks the callback ran
 * exactly once.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <cmocka.h>

#include <tern/net.h>
#include <tern/tern.h>

/* ---- the server: keeps the message, refuses reject*@ and fail-data*@ ---- */

struct srv {
  char *body;
  size_t len, cap;
  unsigned messages;
  char rcpt[8][64]; /* accepted recipients of the current message */
  unsigned nrcpt;
  bool lmtp; /* tern_session_info().lmtp at the last end of data */
};

static bool has_prefix(struct tern_str s, const char *p) {
  return s.len >= strlen(p) && !memcmp(s.ptr, p, strlen(p));
}

static int srv_rcpt(struct tern_server_session *s, const struct tern_path *to,
                    const struct tern_rcpt_params *params,
                    struct tern_reply *reply, void *ud) {
  struct srv *v = ud;
  (void)s;
  (void)params;
  if (has_prefix(to->local, "goodbye")) {
    reply->code = 421; /* RFC 5321 §3.8: the server closes */
    reply->enhanced = "4.3.2";
    reply->text = "going down";
  } else if (has_prefix(to->local, "reject")) {
    reply->code = 550;
    reply->enhanced = "5.1.1";
    reply->text = "no such user\nhere";
  } else if (v->nrcpt < 8) {
    snprintf(v->rcpt[v->nrcpt++], sizeof v->rcpt[0], "%.*s",
             (int)to->local.len, to->local.ptr);
  }
  return TERN_REPLY_NOW;
}

static int srv_data(struct tern_server_session *s, const char *buf, size_t len,
                    void *ud) {
  struct srv *v = ud;
  (void)s;
  if (v->len + len > v->cap) {
    v->cap = (v->len + len) * 2;
    v->body = realloc(v->body, v->cap);
    assert_non_null(v->body);
  }
  memcpy(v->body + v->len, buf, len);
  v->len += len;
  return 0;
}

static int srv_data_end(struct tern_server_session *s,
                        const struct tern_envelope *env,
                        struct tern_reply *reply, void *ud) {
  struct srv *v = ud;
  size_t i = env->rcpt_index;
  /* the runtime's info and the envelope agree on the protocol */
  v->lmtp = tern_session_info(s)->lmtp;
  assert_int_equal(v->lmtp, env->lmtp);
  if (i < v->nrcpt && !strncmp(v->rcpt[i], "fail-data", 9)) {
    reply->code = 550;
    reply->enhanced = "5.2.1";
    reply->text = "mailbox disabled";
  }
  if (i == 0)
    v->messages++;
  return TERN_REPLY_NOW;
}

static unsigned g_auth_checks; /* passwords the servers were asked for */

static int srv_check_password(struct tern_server_session *s,
                              const char *authzid, const char *user,
                              const char *password, void *ud) {
  (void)s;
  (void)authzid;
  (void)ud;
  g_auth_checks++;
  return !strcmp(user, "alice") && !strcmp(password, "secret") ? 0
                                                                : TERN_EAUTH;
}

static void srv_reset(struct tern_server_session *s, void *ud) {
  (void)s;
  ((struct srv *)ud)->nrcpt = 0;
}

/* ---- one run: a loop, maybe a server, one tern_send() ------------------- */

struct got {
  int calls;
  int error;
  char error_text[512];
  struct tern_send_reply reply;
  char reply_text[256], reply_enh[16];
  size_t delivered, nrcpt;
  int rcpt_code[8], data_code[8];
  char rcpt_enh[8][16], rcpt_text[8][64], addr[8][64];
  bool delivered_i[8];
};

struct run {
  uv_loop_t loop;
  struct tern_server *srv;
  struct srv s;
  struct got got;
  int port;
};

static void on_shutdown(struct tern_server *srv, void *arg) {
  (void)srv;
  (void)arg;
}

static void on_done(const struct tern_send_result *r, void *ud) {
  struct run *run = ud;
  struct got *g = &run->got;
  g->calls++;
  g->error = r->error;
  snprintf(g->error_text, sizeof g->error_text, "%s", r->error_text);
  g->reply = r->reply; /* its strings are copied below */
  snprintf(g->reply_text, sizeof g->reply_text, "%s", r->reply.text);
  snprintf(g->reply_enh, sizeof g->reply_enh, "%s",
           r->reply.enhanced ? r->reply.enhanced : "");
  g->delivered = r->delivered;
  g->nrcpt = r->nrcpt;
  for (size_t i = 0; i < r->nrcpt && i < 8; i++) {
    const struct tern_send_rcpt_result *x = &r->rcpts[i];
    g->rcpt_code[i] = x->rcpt.code;
    g->data_code[i] = x->data.code;
    g->delivered_i[i] = x->delivered;
    snprintf(g->rcpt_enh[i], sizeof g->rcpt_enh[i], "%s",
             x->rcpt.enhanced ? x->rcpt.enhanced : "");
    snprintf(g->rcpt_text[i], sizeof g->rcpt_text[i], "%s", x->rcpt.text);
    snprintf(g->addr[i], sizeof g->addr[i], "%s", x->address);
  }
  if (run->srv)
    tern_server_shutdown(run->srv, on_shutdown, NULL);
}

/* A server on `listen` (NULL: none); with `auth`, MAIL needs AUTH PLAIN
 * (offered in the clear: a test on loopback). */
static void run_init_auth(struct run *run, const char *listen, bool auth) {
  struct tern_auth_callbacks acb;
  struct tern_listener_options lo;
  memset(run, 0, sizeof *run);
  assert_int_equal(uv_loop_init(&run->loop), 0);
  if (!listen)
    return;
  struct tern_server_callbacks cb;
  struct tern_server_options o;
  tern_server_callbacks_init(&cb);
  cb.on_rcpt = srv_rcpt;
  cb.on_data = srv_data;
  cb.on_data_end = srv_data_end;
  cb.on_reset = srv_reset;
  tern_server_options_init(&o);
  o.callbacks = &cb;
  o.ud = &run->s;
  o.shutdown_timeout_ms = 1000;
  tern_auth_callbacks_init(&acb);
  acb.check_password = srv_check_password;
  tern_listener_options_init(&lo);
  if (auth) {
    o.auth = &acb;
    o.auth_mechanisms = "PLAIN";
    o.auth_fail_delay_ms = 1;
    lo.auth_required = true;
    lo.auth_insecure_ok = true;
  }
  assert_int_equal(tern_server_new(&run->srv, &run->loop, &o), 0);
  assert_int_equal(tern_server_listen(run->srv, listen, &lo), 0);
  assert_int_equal(tern_server_start(run->srv), 0);
  run->port = tern_server_listener_port(run->srv, 0);
  assert_true(run->port > 0);
}

static void run_init(struct run *run, const char *listen) {
  run_init_auth(run, listen, false);
}

/* Run until every handle is gone, so a second callback would be seen.
 * The message the server kept stays in run->s.body: free it after. */
static void run_finish(struct run *run) {
  uv_run(&run->loop, UV_RUN_DEFAULT);
  assert_int_equal(run->got.calls, 1);
  if (run->srv)
    tern_server_free(run->srv);
  assert_int_equal(uv_loop_close(&run->loop), 0);
}

static int send_to(struct run *run, const char *scheme, const char *const *to,
                   size_t n, const struct tern_send_body *b) {
  char url[64];
  snprintf(url, sizeof url, "%s://127.0.0.1:%d", scheme, run->port);
  return tern_send(&run->loop, url, "alice@example.net", to, n, b, NULL,
                   on_done, run);
}

static const char MSG[] = "Subject: hi\n\nline one\n.leading dot\nend\n";
static const char MSG_CRLF[] =
    "Subject: hi\r\n\r\nline one\r\n.leading dot\r\nend\r\n";

/* ---- cases ------------------------------------------------------------- */

static void test_all_accepted(void **state) {
  (void)state;
  struct run run;
  const char *to[] = {"bob@example.org", "carol@example.org"};
  struct tern_send_body b = tern_send_body_mem(MSG, strlen(MSG));
  run_init(&run, "smtp://127.0.0.1:0");
  assert_int_equal(send_to(&run, "smtp", to, 2, &b), 0);
  assert_int_equal(run.got.calls, 0); /* never from inside the call */
  run_finish(&run);
  struct got *g = &run.got;
  assert_int_equal(g->error, 0);
  assert_string_equal(g->error_text, "");
  assert_int_equal(g->reply.code, 250);
  assert_false(g->reply.local);
  assert_int_equal(g->nrcpt, 2);
  assert_int_equal(g->delivered, 2);
  for (int i = 0; i < 2; i++) {
    assert_string_equal(g->addr[i], to[i]);
    assert_int_equal(g->rcpt_code[i], 250);
    assert_int_equal(g->data_code[i], 250);
    assert_true(g->delivered_i[i]);
  }
  assert_int_equal(run.s.messages, 1);
  assert_int_equal(run.s.len, strlen(MSG_CRLF));
  assert_memory_equal(run.s.body, MSG_CRLF, run.s.len);
  free(run.s.body);
}

static void test_one_refused(void **state) {
  (void)state;
  struct run run;
  const char *to[] = {"bob@example.org", "reject-me@example.org",
                      "carol@example.org"};
  struct tern_send_body b = tern_send_body_mem(MSG, strlen(MSG));
  run_init(&run, "smtp://127.0.0.1:0");
  assert_int_equal(send_to(&run, "smtp", to, 3, &b), 0);
  run_finish(&run);
  struct got *g = &run.got;
  assert_int_equal(g->error, 0);
  assert_int_equal(g->reply.code, 250);
  assert_int_equal(g->delivered, 2);
  assert_int_equal(g->rcpt_code[0], 250);
  assert_int_equal(g->rcpt_code[1], 550);
  assert_string_equal(g->rcpt_enh[1], "5.1.1");
  assert_string_equal(g->rcpt_text[1], "no such user\nhere");
  assert_int_equal(g->data_code[1], 0);
  assert_false(g->delivered_i[1]);
  assert_true(g->delivered_i[0] && g->delivered_i[2]);
  assert_int_equal(run.s.messages, 1);
  free(run.s.body);
}

static void test_all_refused(void **state) {
  (void)state;
  struct run run;
  const char *to[] = {"reject-a@example.org", "reject-b@example.org"};
  struct tern_send_body b = tern_send_body_mem(MSG, strlen(MSG));
  run_init(&run, "smtp://127.0.0.1:0");
  assert_int_equal(send_to(&run, "smtp", to, 2, &b), 0);
  run_finish(&run);
  struct got *g = &run.got;
  assert_int_equal(g->error, 0); /* the server answered: no */
  assert_int_equal(g->reply.code, 550);
  assert_string_equal(g->reply_enh, "5.1.1");
  assert_int_equal(g->delivered, 0);
  assert_int_equal(run.s.messages, 0);
  free(run.s.body);
}

static void test_lmtp_per_recipient(void **state) {
  (void)state;
  struct run run;
  const char *to[] = {"bob@example.org", "fail-data@example.org",
                      "reject-x@example.org", "carol@example.org"};
  struct tern_send_body b = tern_send_body_mem(MSG, strlen(MSG));
  run_init(&run, "lmtp://127.0.0.1:0");
  assert_int_equal(send_to(&run, "lmtp", to, 4, &b), 0);
  run_finish(&run);
  struct got *g = &run.got;
  assert_int_equal(g->error, 0);
  assert_int_equal(g->reply.code, 550); /* the first failure */
  assert_string_equal(g->reply_enh, "5.2.1");
  assert_int_equal(g->delivered, 2);
  assert_true(run.s.lmtp); /* an lmtp:// listener's session says so */
  assert_int_equal(g->data_code[0], 250);
  assert_int_equal(g->data_code[1], 550);
  assert_int_equal(g->rcpt_code[2], 550);
  assert_int_equal(g->data_code[2], 0);
  assert_int_equal(g->data_code[3], 250);
  assert_true(g->delivered_i[0] && g->delivered_i[3]);
  assert_false(g->delivered_i[1] || g->delivered_i[2]);
  free(run.s.body);
}

static void test_big_body_from_memory(void **state) {
  (void)state;
  struct run run;
  const char *to[] = {"bob@example.org"};
  size_t n = 3u << 20;
  char *m = malloc(n);
  assert_non_null(m);
  for (size_t i = 0; i < n; i++)
    m[i] = i % 100 == 99 ? '\n' : (char)('a' + i % 26);
  struct tern_send_body b = tern_send_body_mem(m, n);
  run_init(&run, "smtp://127.0.0.1:0");
  assert_int_equal(send_to(&run, "smtp", to, 1, &b), 0);
  memset(m, 'X', n); /* the body was copied: the caller's may change */
  free(m);
  run_finish(&run);
  assert_int_equal(run.got.error, 0);
  assert_int_equal(run.got.delivered, 1);
  /* each LF became CRLF, and a CRLF ends the last line */
  assert_int_equal(run.s.len, n + n / 100 + 2);
  assert_memory_equal(run.s.body + run.s.len - 2, "\r\n", 2);
  for (size_t i = 0, k = 0; i < n; i++, k++) {
    char want = i % 100 == 99 ? '\n' : (char)('a' + i % 26);
    if (want == '\n')
      assert_int_equal(run.s.body[k++], '\r');
    assert_int_equal(run.s.body[k], want);
  }
  free(run.s.body);
}

static void test_body_from_fd(void **state) {
  (void)state;
  struct run run;
  const char *to[] = {"bob@example.org"};
  char path[] = "/tmp/tern-test-send-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  unlink(path);
  assert_int_equal(write(fd, "skip me", 7), 7);
  assert_int_equal(write(fd, MSG, strlen(MSG)), (ssize_t)strlen(MSG));
  assert_int_equal(lseek(fd, 7, SEEK_SET), 7); /* from the offset on */
  struct tern_send_body b = tern_send_body_fd(fd);
  run_init(&run, "smtp://127.0.0.1:0");
  assert_int_equal(send_to(&run, "smtp", to, 1, &b), 0);
  close(fd); /* duplicated by tern_send() */
  run_finish(&run);
  assert_int_equal(run.got.error, 0);
  assert_int_equal(run.got.delivered, 1);
  assert_int_equal(run.s.len, strlen(MSG_CRLF));
  assert_memory_equal(run.s.body, MSG_CRLF, run.s.len);
  free(run.s.body);
}

static void test_connection_refused(void **state) {
  (void)state;
  struct run run;
  const char *to[] = {"bob@example.org"};
  struct tern_send_body b = tern_send_body_mem(MSG, strlen(MSG));
  /* a port bound but not listening: refused, and nobody else's */
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {0};
  socklen_t al = sizeof a;
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(getsockname(s, (struct sockaddr *)&a, &al), 0);
  run_init(&run, NULL);
  run.port = ntohs(a.sin_port);
  assert_int_equal(send_to(&run, "smtp", to, 1, &b), 0);
  run_finish(&run);
  close(s);
  struct got *g = &run.got;
  assert_int_equal(g->error, TERN_ECONNECT);
  assert_non_null(strstr(g->error_text, "refused"));
  assert_int_equal(g->reply.code, 0);
  assert_int_equal(g->rcpt_code[0], 0);
  assert_int_equal(g->delivered, 0);
  assert_int_equal(g->nrcpt, 1);
  free(run.s.body);
}

static void test_server_closes(void **state) {
  (void)state;
  struct run run;
  const char *to[] = {"bob@example.org", "goodbye@example.org"};
  struct tern_send_body b = tern_send_body_mem(MSG, strlen(MSG));
  run_init(&run, "smtp://127.0.0.1:0");
  assert_int_equal(send_to(&run, "smtp", to, 2, &b), 0);
  run_finish(&run);
  struct got *g = &run.got;
  /* the message did not get its answer: an error, and the local 421 */
  assert_int_equal(g->error, TERN_ECLOSED);
  assert_non_null(strstr(g->error_text, "421 4.3.2 going down"));
  assert_int_equal(g->reply.code, 421);
  assert_true(g->reply.local);
  assert_int_equal(g->rcpt_code[0], 250);
  assert_int_equal(g->data_code[0], 421); /* accepted, never delivered */
  assert_int_equal(g->delivered, 0);
  assert_int_equal(g->rcpt_code[1], 421);
  assert_int_equal(run.s.messages, 0);
  free(run.s.body);
}

/* The options reach the client: AUTH with the password given. */
static void test_auth(void **state) {
  (void)state;
  const char *to[] = {"bob@example.org"};
  const char *pw[] = {"secret", "guess"};
  struct tern_send_body b = tern_send_body_mem(MSG, strlen(MSG));
  for (int i = 0; i < 2; i++) {
    struct run run;
    struct tern_send_options o;
    char url[64];
    tern_send_options_init(&o);
    o.auth_user = "alice";
    o.auth_password = pw[i];
    o.auth_insecure_ok = true;
    o.ehlo_name = "client.example";
    o.timeout_ms = 20000;
    run_init_auth(&run, "smtp://127.0.0.1:0", true);
    snprintf(url, sizeof url, "smtp://127.0.0.1:%d", run.port);
    assert_int_equal(tern_send(&run.loop, url, "alice@example.net", to, 1,
                               &b, &o, on_done, &run),
                     0);
    run_finish(&run);
    if (i == 0) {
      assert_int_equal(run.got.error, 0);
      assert_int_equal(run.got.delivered, 1);
      assert_int_equal(run.s.messages, 1);
    } else {
      assert_int_equal(run.got.error, TERN_EAUTH);
      assert_non_null(strstr(run.got.error_text, "535"));
      assert_int_equal(run.got.delivered, 0);
      assert_int_equal(run.s.messages, 0);
    }
    free(run.s.body);
  }
}

/* A password goes only over TLS whose certificate was checked: with
 * tls_verify off, STARTTLS comes up but AUTH PLAIN is never sent. */
static void test_auth_unverified_tls(void **state) {
  (void)state;
  const char *certs = getenv("TERN_TEST_CERTS");
  char cert[512], key[512], url[64];
  assert_non_null(certs);
  snprintf(cert, sizeof cert, "%s/self.pem", certs);
  snprintf(key, sizeof key, "%s/self.key", certs);
  const char *to[] = {"bob@example.org"};
  struct tern_send_body b = tern_send_body_mem(MSG, strlen(MSG));
  struct run run;
  memset(&run, 0, sizeof run);
  g_auth_checks = 0;
  assert_int_equal(uv_loop_init(&run.loop), 0);
  struct tern_server_callbacks cb;
  struct tern_server_options so;
  struct tern_auth_callbacks acb;
  struct tern_listener_options lo;
  struct tern_tls_cert tc = {cert, key};
  tern_server_callbacks_init(&cb);
  cb.on_rcpt = srv_rcpt;
  cb.on_data = srv_data;
  cb.on_data_end = srv_data_end;
  cb.on_reset = srv_reset;
  tern_server_options_init(&so);
  so.callbacks = &cb;
  so.ud = &run.s;
  so.shutdown_timeout_ms = 1000;
  so.tls_certs = &tc;
  so.tls_cert_count = 1;
  tern_auth_callbacks_init(&acb);
  acb.check_password = srv_check_password;
  so.auth = &acb;
  so.auth_mechanisms = "PLAIN";
  so.auth_fail_delay_ms = 1;
  tern_listener_options_init(&lo);
  lo.auth_required = true;
  lo.starttls = true;
  assert_int_equal(tern_server_new(&run.srv, &run.loop, &so), 0);
  assert_int_equal(tern_server_listen(run.srv, "smtp://127.0.0.1:0", &lo), 0);
  assert_int_equal(tern_server_start(run.srv), 0);
  run.port = tern_server_listener_port(run.srv, 0);

  struct tern_send_options o;
  tern_send_options_init(&o);
  o.tls_verify = false;
  o.starttls = TERN_STARTTLS_REQUIRED;
  o.auth_user = "alice";
  o.auth_password = "secret";
  o.timeout_ms = 20000;
  snprintf(url, sizeof url, "smtp://127.0.0.1:%d", run.port);
  assert_int_equal(tern_send(&run.loop, url, "alice@example.net", to, 1, &b,
                             &o, on_done, &run),
                   0);
  run_finish(&run);
  assert_int_equal(run.got.error, TERN_EAUTH);
  assert_non_null(strstr(run.got.error_text, "PLAIN and LOGIN need TLS"));
  assert_int_equal(g_auth_checks, 0); /* no password left the client */
  assert_int_equal(run.s.messages, 0);
  free(run.s.body);
}

static void test_bad_arguments(void **state) {
  (void)state;
  uv_loop_t loop;
  struct run run; /* on_done would count here: it must not be called */
  const char *to[] = {"bob@example.org"};
  const char *bad[] = {"bob@example.org", "x\r\nRSET@example.org"};
  const char *nul[] = {""};
  struct tern_send_body b = tern_send_body_mem(MSG, strlen(MSG));
  struct tern_send_body nofd = tern_send_body_fd(-1);
  struct tern_send_options o;
  memset(&run, 0, sizeof run);
  assert_int_equal(uv_loop_init(&loop), 0);
  const char *u = "smtp://127.0.0.1:1";
  assert_int_equal(tern_send(&loop, u, "a@b.example", to, 0, &b, NULL,
                             on_done, &run), TERN_EINVAL);
  assert_int_equal(tern_send(&loop, u, "a@b.example", bad, 2, &b, NULL,
                             on_done, &run), TERN_EINVAL);
  assert_int_equal(tern_send(&loop, u, "a@b.example", nul, 1, &b, NULL,
                             on_done, &run), TERN_EINVAL);
  assert_int_equal(tern_send(&loop, u, "not an address", to, 1, &b, NULL,
                             on_done, &run), TERN_EINVAL);
  assert_int_equal(tern_send(&loop, "http://x", "", to, 1, &b, NULL,
                             on_done, &run), TERN_EINVAL);
  assert_int_equal(tern_send(&loop, u, "", to, 1, &nofd, NULL, on_done, &run),
                   TERN_EINVAL);
  assert_int_equal(tern_send(&loop, u, "", to, 1, &b, NULL, NULL, &run),
                   TERN_EINVAL);
  tern_send_options_init(&o);
  o.size = 0;
  assert_int_equal(tern_send(&loop, u, "", to, 1, &b, &o, on_done, &run),
                   TERN_EINVAL);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(run.got.calls, 0);
  assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN); /* as net.h asks of every program */
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_all_accepted),
      cmocka_unit_test(test_one_refused),
      cmocka_unit_test(test_all_refused),
      cmocka_unit_test(test_lmtp_per_recipient),
      cmocka_unit_test(test_big_body_from_memory),
      cmocka_unit_test(test_body_from_fd),
      cmocka_unit_test(test_connection_refused),
      cmocka_unit_test(test_server_closes),
      cmocka_unit_test(test_auth),
      cmocka_unit_test(test_auth_unverified_tls),
      cmocka_unit_test(test_bad_arguments),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
