/*
 * client_probe — send a message with the client runtime (public API
 * only: tern_client) and print what happened. Used by the
 * tests/net/test_client_*.py scripts.
 *
 *   client_probe --url URL --from ADDR --to ADDR [--to ADDR ...]
 *                --data FILE [--count N]
 *                [--ca-file F] [--no-verify] [--server-name NAME]
 *                [--user U] [--password P] [--token T] [--authzid Z]
 *                [--mechs "LIST"] [--insecure-auth]
 *                [--starttls-required] [--lmtp] [--ehlo NAME]
 *                [--no-pipelining] [--chunking] [--timeout-ms MS]
 *                mx: URLs: [--resolver ADDR:PORT] [--trust-anchor F]
 *                [--no-dnssec] [--no-mta-sts] [--mta-sts-ca F]
 *                [--mta-sts-port N] [--tls-policy auto|none|may|encrypt|
 *                verify|dane] [--mx-port N] [--requiretls]
 *                any URL: [--bind ADDR] [--bind6 ADDR]
 *
 * Output (stdout), one line each:
 *   connect ok tls=VERSION|none        or   connect error NAME: TEXT
 *   info host=H addr=A port=P tls=V cipher=C verified=X policy=P
 *        tried=N [policy_failure=TEXT]   (tern_client_conn_info)
 *   failure CODE ENH perm=0|1 TEXT      (after a connect error)
 *   rcpt I ADDR CODE [ENH] TEXT         RCPT replies (first 10 messages)
 *   data I ADDR CODE [ENH] TEXT         LMTP per-recipient data replies
 *   message N code=C local=0|1 accepted=A delivered=D
 *   done messages=N complete=K
 * Exit status: 0 when connected and every message reached every
 * recipient, 1 otherwise, 2 on a usage error.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <tern/net.h>
#include <tern/resolve.h>
#include <tern/tern.h>

#define MAX_RCPT 64

struct probe {
  struct tern_client *cl;
  struct tern_client_rcpt rcpts[MAX_RCPT];
  size_t nrcpts;
  struct tern_client_message msg;
  struct tern_client_message opts; /* extension parameters from flags */
  const char *from;
  int fd;
  unsigned long count, sent, done, complete;
  bool in_message;
  bool connected;
  int connect_status;
  size_t accepted_idx[MAX_RCPT]; /* rcpt number of the k-th accepted */
  size_t naccepted;
  bool verbose;
};

static void usage(void) {
  fprintf(stderr,
          "usage: client_probe --url URL --from ADDR --to ADDR... --data FILE "
          "[--count N] [--ca-file F] [--no-verify] [--server-name NAME] "
          "[--user U] [--password P] [--token T] [--authzid Z] "
          "[--mechs LIST] [--insecure-auth] [--starttls-required] [--lmtp] "
          "[--ehlo NAME] [--no-pipelining] [--chunking] [--timeout-ms MS] "
          "[--smtputf8] [--body 8BITMIME|BINARYMIME] [--ret FULL|HDRS] "
          "[--envid X] [--size N] [--notify LIST] [--orcpt ADDR]\n");
  exit(2);
}

static void print_reply(const char *what, size_t i, const char *addr,
                        const struct tern_client_reply *r) {
  printf("%s %zu %s %d", what, i, addr, r->code);
  if (r->enhanced && r->enhanced[0])
    printf(" %s", r->enhanced);
  if (r->nlines)
    printf(" %.*s", (int)r->lines[0].len, r->lines[0].ptr);
  printf("\n");
}

static void on_reply(struct tern_client_session *c, enum tern_client_cmd cmd,
                     unsigned index, const struct tern_client_reply *r,
                     void *ud) {
  struct probe *p = ud;
  (void)c;
  if (cmd == TERN_CMD_MAIL)
    p->naccepted = 0;
  if (cmd == TERN_CMD_RCPT && index < p->nrcpts) {
    if (r->code / 100 == 2 && p->naccepted < MAX_RCPT)
      p->accepted_idx[p->naccepted++] = index;
    if (p->verbose)
      print_reply("rcpt", index, p->rcpts[index].address, r);
  }
  if (cmd == TERN_CMD_DATA_END && p->verbose) {
    size_t i = index < p->naccepted ? p->accepted_idx[index] : 0;
    print_reply("data", i, p->rcpts[i].address, r);
  }
}

static void next_message(struct probe *p, struct tern_client_session *c) {
  if (p->in_message || p->sent >= p->count)
    return;
  struct tern_client_message *m = &p->msg; /* lives until message_done */
  *m = p->opts;
  m->from = p->from;
  m->rcpts = p->rcpts;
  m->nrcpts = p->nrcpts;
  int rc = tern_client_session_send(c, m);
  if (rc) {
    printf("send error %s\n", tern_err_name(rc));
    p->count = p->sent; /* stop */
    tern_client_close(p->cl);
    return;
  }
  p->sent++;
  p->in_message = true;
  p->verbose = p->sent <= 10;
  rc = tern_client_send_fd(p->cl, p->fd);
  if (rc) {
    printf("send_fd error %s\n", tern_err_name(rc));
    p->count = p->sent;
    tern_client_close(p->cl);
  }
}

static void on_ready(struct tern_client_session *c, void *ud) {
  struct probe *p = ud;
  if (p->sent >= p->count && !p->in_message) {
    tern_client_close(p->cl);
    return;
  }
  next_message(p, c);
}

static void on_message_done(struct tern_client_session *c,
                            const struct tern_client_outcome *o, void *ud) {
  struct probe *p = ud;
  (void)c;
  p->in_message = false;
  p->done++;
  if (o->delivered == p->nrcpts && o->code / 100 == 2)
    p->complete++;
  if (p->done <= 10 || p->done == p->count)
    printf("message %lu code=%d local=%d accepted=%zu delivered=%zu\n",
           p->done, o->code, o->local ? 1 : 0, o->accepted, o->delivered);
}

static void on_error(struct tern_client_session *c, int err,
                     const struct tern_client_reply *r, void *ud) {
  (void)c;
  (void)ud;
  printf("session error %s%s%d\n", tern_err_name(err), r ? " " : "",
         r ? r->code : 0);
}

static const char *or_dash(const char *s) { return s ? s : "-"; }

static void print_info(struct tern_client *cl) {
  const struct tern_client_conn_info *ci = tern_client_conn_info(cl);
  printf("info host=%s addr=%s port=%u tls=%s cipher=%s verified=%s "
         "policy=%s tried=%u%s%s\n",
         or_dash(ci->host), or_dash(ci->addr), ci->port,
         or_dash(ci->tls_version), or_dash(ci->tls_cipher),
         or_dash(ci->verified), or_dash(ci->policy), ci->hosts_tried,
         ci->policy_failure ? " policy_failure=" : "",
         ci->policy_failure ? ci->policy_failure : "");
}

static void on_connect(struct tern_client *cl, int status, void *ud) {
  struct probe *p = ud;
  p->connect_status = status;
  print_info(cl);
  if (status < 0) {
    struct tern_reply r;
    bool perm = tern_client_failure_reply(cl, &r);
    printf("failure %d %s perm=%d %s\n", r.code, or_dash(r.enhanced),
           perm ? 1 : 0, r.text ? r.text : "");
  }
  if (status == 0) {
    const char *v = tern_client_tls_version(cl);
    p->connected = true;
    printf("connect ok tls=%s\n", v ? v : "none");
  } else {
    printf("connect error %s: %s\n", tern_err_name(status),
           tern_client_last_error(cl));
  }
  fflush(stdout);
}

static void on_close(struct tern_client *cl, void *ud) {
  (void)cl;
  (void)ud;
}

int main(int argc, char **argv) {
  struct probe p = {.count = 1, .fd = -1};
  struct tern_resolver_options ro;
  struct tern_resolver *res = NULL;
  bool want_res = false;
  tern_resolver_options_init(&ro);
  struct tern_client_options o;
  struct tern_client_callbacks cb;
  const char *data = NULL;
  uv_loop_t loop;

  setvbuf(stdout, NULL, _IOLBF, 0);
  tern_client_options_init(&o);
  struct tern_client_config cc;
  tern_client_config_init(&cc);
  o.session = &cc;
  tern_client_callbacks_init(&cb);
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    bool has = i + 1 < argc;
#define ARG(name) (!strcmp(a, name) && has)
    if (ARG("--url"))
      o.url = argv[++i];
    else if (ARG("--from"))
      p.from = argv[++i];
    else if (ARG("--to") && p.nrcpts < MAX_RCPT)
      p.rcpts[p.nrcpts++].address = argv[++i];
    else if (ARG("--data"))
      data = argv[++i];
    else if (ARG("--count"))
      p.count = strtoul(argv[++i], NULL, 10);
    else if (ARG("--ca-file"))
      o.ca_file = argv[++i];
    else if (!strcmp(a, "--no-verify"))
      o.tls_verify = false;
    else if (ARG("--server-name"))
      o.tls_server_name = argv[++i];
    else if (ARG("--user"))
      o.auth_user = argv[++i];
    else if (ARG("--password"))
      o.auth_password = argv[++i];
    else if (ARG("--token"))
      o.auth_token = argv[++i];
    else if (ARG("--authzid"))
      o.auth_authzid = argv[++i];
    else if (ARG("--mechs"))
      o.auth_mechanisms = argv[++i];
    else if (!strcmp(a, "--insecure-auth"))
      o.auth_insecure_ok = true;
    else if (!strcmp(a, "--starttls-required"))
      cc.starttls = TERN_STARTTLS_REQUIRED;
    else if (!strcmp(a, "--lmtp"))
      cc.lmtp = true;
    else if (ARG("--ehlo"))
      cc.ehlo_name = argv[++i];
    else if (!strcmp(a, "--no-pipelining"))
      cc.pipelining = false;
    else if (!strcmp(a, "--smtputf8"))
      p.opts.smtputf8 = true;
    else if (ARG("--body"))
      p.opts.body = !strcmp(argv[++i], "BINARYMIME") ? TERN_BODY_BINARYMIME
                    : !strcmp(argv[i], "8BITMIME")   ? TERN_BODY_8BITMIME
                                                     : TERN_BODY_7BIT;
    else if (ARG("--ret"))
      p.opts.ret = !strcmp(argv[++i], "FULL") ? TERN_RET_FULL : TERN_RET_HDRS;
    else if (ARG("--envid"))
      p.opts.envid = argv[++i];
    else if (ARG("--size"))
      p.opts.size = strtoull(argv[++i], NULL, 10);
    else if (ARG("--notify")) {
      const char *v = argv[++i];
      for (size_t k = 0; k < MAX_RCPT; k++)
        p.rcpts[k].notify = (strstr(v, "SUCCESS") ? TERN_NOTIFY_SUCCESS : 0) |
                            (strstr(v, "FAILURE") ? TERN_NOTIFY_FAILURE : 0) |
                            (strstr(v, "DELAY") ? TERN_NOTIFY_DELAY : 0) |
                            (strstr(v, "NEVER") ? TERN_NOTIFY_NEVER : 0);
    } else if (ARG("--orcpt")) {
      const char *v = argv[++i];
      for (size_t k = 0; k < MAX_RCPT; k++)
        p.rcpts[k].orcpt = v;
    } else if (!strcmp(a, "--chunking"))
      cc.chunking = true;
    else if (ARG("--resolver"))
      ro.forward = argv[++i], want_res = true;
    else if (ARG("--trust-anchor"))
      ro.trust_anchor_file = argv[++i], want_res = true;
    else if (!strcmp(a, "--no-dnssec"))
      ro.dnssec = false, want_res = true;
    else if (!strcmp(a, "--no-mta-sts"))
      ro.mta_sts = false, want_res = true;
    else if (ARG("--mta-sts-ca"))
      ro.mta_sts_ca_file = argv[++i], want_res = true;
    else if (ARG("--mta-sts-port"))
      ro.mta_sts_port = (unsigned)strtoul(argv[++i], NULL, 10),
      want_res = true;
    else if (ARG("--tls-policy")) {
      const char *v = argv[++i];
      o.tls_policy = !strcmp(v, "none")      ? TERN_TLS_POLICY_NONE
                     : !strcmp(v, "may")     ? TERN_TLS_POLICY_MAY
                     : !strcmp(v, "encrypt") ? TERN_TLS_POLICY_ENCRYPT
                     : !strcmp(v, "verify")  ? TERN_TLS_POLICY_VERIFY
                     : !strcmp(v, "dane")    ? TERN_TLS_POLICY_DANE
                                             : TERN_TLS_POLICY_AUTO;
    } else if (ARG("--mx-port"))
      o.mx_port = (unsigned)strtoul(argv[++i], NULL, 10);
    else if (!strcmp(a, "--requiretls"))
      o.require_verified_tls = p.opts.requiretls = true;
    else if (ARG("--bind"))
      o.bind_addr = argv[++i];
    else if (ARG("--bind6"))
      o.bind_addr6 = argv[++i];
    else if (ARG("--self-addr")) { /* mx: this server's address (loops) */
      static struct sockaddr_storage self[8];
      const char *v = argv[++i];
      if (o.nself_addrs >= 8)
        usage();
      struct sockaddr_storage *s = &self[o.nself_addrs];
      if (uv_ip4_addr(v, 0, (struct sockaddr_in *)s) != 0 &&
          uv_ip6_addr(v, 0, (struct sockaddr_in6 *)s) != 0)
        usage();
      o.self_addrs = self;
      o.nself_addrs++;
    } else if (ARG("--timeout-ms")) {
      unsigned ms = (unsigned)strtoul(argv[++i], NULL, 10);
      o.connect_timeout_ms = o.command_timeout_ms = o.data_timeout_ms = ms;
    } else
      usage();
#undef ARG
  }
  if (!o.url || !p.from || !p.nrcpts || !data || !p.count)
    usage();
  p.fd = open(data, O_RDONLY);
  if (p.fd < 0) {
    fprintf(stderr, "client_probe: %s: %s\n", data, strerror(errno));
    return 2;
  }

  cb.on_reply = on_reply;
  cb.on_ready = on_ready;
  cb.on_message_done = on_message_done;
  cb.on_error = on_error;
  o.callbacks = &cb;
  o.ud = &p;
  o.on_connect = on_connect;
  o.on_close = on_close;

  uv_loop_init(&loop);
  if (want_res) {
    int r = tern_resolver_new(&res, &loop, &ro);
    if (r) {
      printf("connect error %s: cannot make the resolver\n", tern_err_name(r));
      return 1;
    }
    o.resolver = res;
  }
  int rc = tern_client_new(&p.cl, &loop, &o);
  if (rc) {
    printf("connect error %s: cannot create the client\n", tern_err_name(rc));
    uv_loop_close(&loop);
    close(p.fd);
    return 1;
  }
  rc = tern_client_connect(p.cl);
  if (rc) {
    printf("connect error %s: cannot start\n", tern_err_name(rc));
    return 1;
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  tern_client_free(p.cl);
  if (res) {
    tern_resolver_free(res);
    uv_run(&loop, UV_RUN_DEFAULT);
  }
  if (uv_loop_close(&loop) != 0)
    printf("loop not empty at exit\n");
  close(p.fd);
  printf("done messages=%lu complete=%lu\n", p.done, p.complete);
  return p.connected && p.done == p.count && p.complete == p.count ? 0 : 1;
}
