/*
 * capture_server — a test server on the public API only. Every accepted
 * message is stored as DIR/<n>.eml (exactly the bytes on_data delivered)
 * plus DIR/<n>.env (the envelope, "key: value" lines), written in
 * on_data_end before the 250 goes out; an aborted message leaves
 * DIR/<n>.aborted (the reason) and no .eml. Used by tests/net and
 * tests/interop (see tests/interop/harness.py).
 *
 *   capture_server --listen URL [--starttls] [--proxy] [--auth-required]
 *                  [--insecure-auth] [--xclient]   (per listener, after it)
 *                  [--listen URL ...]
 *                  [--tls-cert F --tls-key F]... [--users FILE]
 *                  [--auth-mechs "PLAIN LOGIN CRAM-MD5"]
 *                  [--auth-fail-delay-ms MS] [--out DIR] [--count-only]
 *                  [--workers N] [--max-conn N] [--max-per-ip N]
 *                  [--greeting-delay MS] [--timeout-ms MS]
 *                  [--shutdown-timeout-ms MS] [--xclient-nets LIST]
 *                  [--max-size N] [--pause-data MS] [--pause-every N]
 *
 * Prints "READY <port of the first listener>" on stdout once listening.
 * SIGTERM / SIGINT: graceful shutdown (tern_server_shutdown), exit 0.
 * With --count-only nothing is stored per message; DIR/summary is written
 * at shutdown: "messages N\nbytes N\naborted N\n".
 *
 * Test hooks (recipient local parts): RCPT "reject-rcpt..." gets 550 5.1.1;
 * in LMTP mode a recipient "fail-data..." gets 550 5.2.1 after DATA while
 * the others get 250.
 *
 * --pause-data MS: a slow consumer. on_data answers TERN_PENDING for a
 * chunk and a timer resumes the session MS ms later (0: on the next loop
 * iteration), as an application does that writes each chunk somewhere
 * slower than the network (backpressure). --pause-every N pauses only
 * every Nth chunk of a session (default 1), so that some resumes find the
 * input held back enough to go on without another pause.
 */
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tern/net.h>
#include <tern/tern.h>

#define MAX_LISTEN 16
#define MAX_CERTS 8
#define MAX_USERS 64

struct user {
  char *name, *pass;
};

struct app {
  const char *out;
  bool count_only;
  struct user users[MAX_USERS];
  size_t nusers;
  atomic_ulong seq;      /* message / abort file numbers */
  atomic_ulong messages; /* accepted */
  atomic_ulong bytes;
  atomic_ulong aborted;
  uv_loop_t *loop;
  long pause_data_ms;        /* --pause-data, -1 = off */
  unsigned long pause_every; /* --pause-every */
};

/* Per-session state (userdata), allocated lazily, freed in on_close. */
struct sess {
  struct app *app;      /* first: tells it from the app pointer */
  FILE *tmp;            /* message being received */
  char tmpname[512];
  char *from;
  bool smtputf8;
  int body;
  char dsn[600];        /* MAIL's SIZE/RET/ENVID/REQUIRETLS, for .env */
  char **rcpt;
  char **rcpt_dsn;      /* each RCPT's NOTIFY/ORCPT, for .env */
  size_t nrcpt, caprcpt;
  uint64_t size;
  unsigned long num;    /* file number of this message (LMTP: shared) */
  uv_timer_t *pause;    /* --pause-data: ends the pause; closed in on_close */
  unsigned long chunks; /* on_data calls, for --pause-every */
};

static struct app g_app;

static char *xstrndup(const char *p, size_t n) {
  char *s = malloc(n + 1);
  if (!s) {
    perror("malloc");
    abort();
  }
  memcpy(s, p, n);
  s[n] = '\0';
  return s;
}

static struct sess *sess_of(struct tern_server_session *s) {
  void *ud = tern_server_session_userdata(s);
  if (ud && ud != (void *)&g_app)
    return ud;
  struct sess *x = calloc(1, sizeof *x);
  if (!x)
    abort();
  x->app = &g_app;
  tern_server_session_set_userdata(s, x);
  return x;
}

static void sess_reset(struct sess *x) {
  if (x->tmp) {
    fclose(x->tmp);
    x->tmp = NULL;
    remove(x->tmpname);
  }
  free(x->from);
  x->from = NULL;
  for (size_t i = 0; i < x->nrcpt; i++) {
    free(x->rcpt[i]);
    free(x->rcpt_dsn[i]);
  }
  x->dsn[0] = '\0';
  x->nrcpt = 0;
  x->size = 0;
  x->smtputf8 = false;
  x->body = 0;
}

/* ---- callbacks ------------------------------------------------------------- */

static int on_mail(struct tern_server_session *s, const struct tern_path *from,
                   const struct tern_mail_params *p, struct tern_reply *r,
                   void *ud) {
  struct sess *x = sess_of(s);
  (void)r, (void)ud;
  sess_reset(x);
  x->from = xstrndup(from->mailbox.ptr, from->mailbox.len);
  x->smtputf8 = p->smtputf8;
  x->body = (int)p->body;
  snprintf(x->dsn, sizeof x->dsn, "size=%llu ret=%s envid=%.*s requiretls=%d",
           (unsigned long long)p->size,
           p->ret == TERN_RET_FULL ? "FULL" : p->ret == TERN_RET_HDRS ? "HDRS"
                                                                     : "-",
           (int)p->envid.len, p->envid.ptr, p->requiretls ? 1 : 0);
  return TERN_REPLY_NOW;
}

static int on_rcpt(struct tern_server_session *s, const struct tern_path *to,
                   const struct tern_rcpt_params *p, struct tern_reply *r,
                   void *ud) {
  struct sess *x = sess_of(s);
  (void)ud;
  if (to->local.len >= 11 && !memcmp(to->local.ptr, "reject-rcpt", 11)) {
    r->code = 550;
    r->enhanced = "5.1.1";
    r->text = "Error: rejected by test hook";
    return TERN_REPLY_NOW;
  }
  if (x->nrcpt == x->caprcpt) {
    size_t cap = x->caprcpt ? x->caprcpt * 2 : 8;
    char **n = realloc(x->rcpt, cap * sizeof *n);
    char **nd = n ? realloc(x->rcpt_dsn, cap * sizeof *nd) : NULL;
    if (!n || !nd)
      abort();
    x->rcpt = n;
    x->rcpt_dsn = nd;
    x->caprcpt = cap;
  }
  char dsn[700];
  snprintf(dsn, sizeof dsn, "%.*s notify=%s%s%s%s orcpt=%.*s;%.*s",
           (int)to->mailbox.len, to->mailbox.ptr,
           p->notify & TERN_NOTIFY_NEVER ? "NEVER," : "",
           p->notify & TERN_NOTIFY_SUCCESS ? "SUCCESS," : "",
           p->notify & TERN_NOTIFY_FAILURE ? "FAILURE," : "",
           p->notify & TERN_NOTIFY_DELAY ? "DELAY," : "",
           (int)p->orcpt_type.len, p->orcpt_type.ptr, (int)p->orcpt.len,
           p->orcpt.ptr);
  x->rcpt_dsn[x->nrcpt] = xstrndup(dsn, strlen(dsn));
  x->rcpt[x->nrcpt++] = xstrndup(to->mailbox.ptr, to->mailbox.len);
  return TERN_REPLY_NOW;
}

static int on_data_start(struct tern_server_session *s, struct tern_reply *r,
                         void *ud) {
  struct sess *x = sess_of(s);
  const struct tern_session_info *i = tern_session_info(s);
  (void)r, (void)ud;
  x->size = 0;
  if (x->app->count_only)
    return TERN_REPLY_NOW;
  snprintf(x->tmpname, sizeof x->tmpname, "%s/.tmp-%s", x->app->out,
           i ? i->id : "x");
  x->tmp = fopen(x->tmpname, "wb");
  if (!x->tmp) {
    fprintf(stderr, "capture_server: %s: %s\n", x->tmpname, strerror(errno));
    return TERN_EIO;
  }
  return TERN_REPLY_NOW;
}

/* --pause-data: the slow write is done; take input again. The message may
 * have been aborted meanwhile (resume then says TERN_ESTATE: fine). */
static void on_pause_end(uv_timer_t *t) {
  (void)tern_server_session_resume(t->data);
}

static void free_handle(uv_handle_t *h) { free(h); }

static int on_data(struct tern_server_session *s, const char *buf, size_t len,
                   void *ud) {
  struct sess *x = sess_of(s);
  (void)ud;
  x->size += len;
  if (x->tmp && fwrite(buf, 1, len, x->tmp) != len)
    return TERN_EIO;
  if (x->app->pause_data_ms >= 0 && ++x->chunks % x->app->pause_every == 0) {
    if (!x->pause) {
      x->pause = malloc(sizeof *x->pause);
      if (!x->pause || uv_timer_init(tern_session_loop(s), x->pause) != 0)
        abort();
      x->pause->data = s;
    }
    uv_timer_start(x->pause, on_pause_end, (uint64_t)x->app->pause_data_ms,
                   0);
    return TERN_PENDING;
  }
  return 0;
}

static const char *body_name(int b) {
  switch (b) {
  case TERN_BODY_7BIT:
    return "7BIT";
  case TERN_BODY_8BITMIME:
    return "8BITMIME";
  case TERN_BODY_BINARYMIME:
    return "BINARYMIME";
  default:
    return "";
  }
}

static int store(struct tern_server_session *s, struct sess *x,
                 uint64_t size) {
  const struct tern_session_info *i = tern_session_info(s);
  char path[600], tmp[600];
  x->num = atomic_fetch_add(&x->app->seq, 1) + 1;
  if (fclose(x->tmp) != 0) {
    x->tmp = NULL;
    return -1;
  }
  x->tmp = NULL;
  snprintf(path, sizeof path, "%s/%lu.eml", x->app->out, x->num);
  if (rename(x->tmpname, path) != 0)
    return -1;
  snprintf(tmp, sizeof tmp, "%s/.env-%lu", x->app->out, x->num);
  FILE *f = fopen(tmp, "w");
  if (!f)
    return -1;
  fprintf(f, "id: %s\n", i ? i->id : "");
  fprintf(f, "peer: %s\n", i ? i->peer_addr : "");
  fprintf(f, "peer_port: %u\n", i ? i->peer_port : 0);
  fprintf(f, "listener: %s\n", i ? i->listener : "");
  fprintf(f, "from: %s\n", x->from ? x->from : "");
  for (size_t k = 0; k < x->nrcpt; k++)
    fprintf(f, "rcpt: %s\n", x->rcpt[k]);
  fprintf(f, "size: %llu\n", (unsigned long long)size);
  fprintf(f, "tls: %s\n", i && i->tls_version ? i->tls_version : "");
  fprintf(f, "sni: %s\n", i && i->tls_sni ? i->tls_sni : "");
  fprintf(f, "auth: %s\n", i && i->auth_user ? i->auth_user : "");
  fprintf(f, "smtputf8: %d\n", x->smtputf8 ? 1 : 0);
  fprintf(f, "body: %s\n", body_name(x->body));
  fprintf(f, "mail_params: %s\n", x->dsn);
  for (size_t k = 0; k < x->nrcpt; k++)
    fprintf(f, "rcpt_params: %s\n", x->rcpt_dsn[k]);
  fprintf(f, "worker: %u\n", i ? i->worker : 0);
  if (fclose(f) != 0)
    return -1;
  snprintf(path, sizeof path, "%s/%lu.env", x->app->out, x->num);
  return rename(tmp, path);
}

static int on_data_end(struct tern_server_session *s,
                       const struct tern_envelope *env,
                       struct tern_reply *r, void *ud) {
  struct sess *x = sess_of(s);
  uint64_t size = env->size;
  size_t rcpt = env->rcpt_index;
  (void)ud;
  if (rcpt == 0) {
    if (size != x->size)
      fprintf(stderr, "capture_server: size %llu != on_data total %llu\n",
              (unsigned long long)size, (unsigned long long)x->size);
    if (x->tmp && store(s, x, size) != 0) {
      fprintf(stderr, "capture_server: store: %s\n", strerror(errno));
      r->code = 451;
      r->enhanced = "4.3.0";
      r->text = "Error: could not store";
      return TERN_REPLY_NOW;
    }
    atomic_fetch_add(&x->app->messages, 1);
    atomic_fetch_add(&x->app->bytes, size);
  }
  if (rcpt < x->nrcpt && !strncmp(x->rcpt[rcpt], "fail-data", 9)) {
    r->code = 550;
    r->enhanced = "5.2.1";
    r->text = "Error: per-recipient test failure";
  }
  return TERN_REPLY_NOW;
}

static void on_data_abort(struct tern_server_session *s, const char *why,
                          void *ud) {
  struct sess *x = sess_of(s);
  (void)ud;
  atomic_fetch_add(&x->app->aborted, 1);
  if (x->tmp) {
    fclose(x->tmp);
    x->tmp = NULL;
    remove(x->tmpname);
  }
  if (x->app->count_only)
    return;
  unsigned long n = atomic_fetch_add(&x->app->seq, 1) + 1;
  char path[600];
  snprintf(path, sizeof path, "%s/%lu.aborted", x->app->out, n);
  FILE *f = fopen(path, "w");
  if (f) {
    const struct tern_session_info *i = tern_session_info(s);
    fprintf(f, "id: %s\nwhy: %s\nsize: %llu\n", i ? i->id : "",
            why ? why : "", (unsigned long long)x->size);
    fclose(f);
  }
}

static void on_reset(struct tern_server_session *s, void *ud) {
  (void)ud;
  sess_reset(sess_of(s));
}

static void on_close(struct tern_server_session *s, void *ud) {
  void *p = tern_server_session_userdata(s);
  (void)ud;
  if (p && p != (void *)&g_app) {
    struct sess *x = p;
    if (x->pause) /* never fires after the session is gone */
      uv_close((uv_handle_t *)x->pause, free_handle);
    sess_reset(x);
    free(x->rcpt);
    free(x->rcpt_dsn);
    free(x);
    tern_server_session_set_userdata(s, &g_app);
  }
}

/* ---- AUTH ------------------------------------------------------------------ */

static const struct user *find_user(struct app *a, const char *name) {
  for (size_t i = 0; name && i < a->nusers; i++)
    if (!strcmp(a->users[i].name, name))
      return &a->users[i];
  return NULL;
}

static int check_password(struct tern_server_session *s, const char *authzid,
                          const char *user, const char *password, void *ud) {
  const struct user *u = find_user(ud, user);
  (void)s;
  if (!u || !password || strcmp(u->pass, password))
    return TERN_EAUTH;
  if (authzid && *authzid && strcmp(authzid, user))
    return TERN_EAUTH;
  return 0;
}

static int get_password(struct tern_server_session *s, const char *user,
                        char *buf, size_t cap, void *ud) {
  const struct user *u = find_user(ud, user);
  (void)s;
  if (!u || strlen(u->pass) >= cap)
    return TERN_EAUTH;
  memcpy(buf, u->pass, strlen(u->pass) + 1);
  return 0;
}

static int check_token(struct tern_server_session *s, const char *user,
                       const char *token, void *ud) {
  (void)s;
  if (!find_user(ud, user) || !token || strncmp(token, "tok-", 4) ||
      strcmp(token + 4, user))
    return TERN_EAUTH;
  return 0;
}

static int load_users(struct app *a, const char *file) {
  FILE *f = fopen(file, "r");
  char line[1024];
  if (!f) {
    fprintf(stderr, "capture_server: %s: %s\n", file, strerror(errno));
    return -1;
  }
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\r\n")] = '\0';
    char *colon = strchr(line, ':');
    if (!colon || line[0] == '#')
      continue;
    if (a->nusers == MAX_USERS)
      break;
    *colon = '\0';
    a->users[a->nusers].name = xstrndup(line, strlen(line));
    a->users[a->nusers].pass = xstrndup(colon + 1, strlen(colon + 1));
    a->nusers++;
  }
  fclose(f);
  return 0;
}

/* ---- main ---------------------------------------------------------------------- */

static void on_down(struct tern_server *srv, void *arg) {
  (void)srv;
  uv_stop(arg);
}

static uv_signal_t g_sigint, g_sigterm;

static void on_signal(uv_signal_t *sig, int signum) {
  (void)signum;
  /* one shutdown; further signals are ignored while it drains */
  uv_signal_stop(&g_sigint);
  uv_signal_stop(&g_sigterm);
  tern_server_shutdown(sig->data, on_down, sig->loop);
}

static unsigned long num(const char *s, const char *what) {
  char *end;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno || *end || !*s) {
    fprintf(stderr, "capture_server: bad number for %s: %s\n", what, s);
    exit(2);
  }
  return v;
}

static void usage(void) {
  fprintf(stderr,
          "usage: capture_server --listen URL [--starttls] [--proxy] "
          "[--auth-required] [--insecure-auth] [--xclient] ... "
          "[--tls-cert F --tls-key F] [--users FILE] [--auth-mechs LIST] "
          "[--auth-fail-delay-ms MS] [--out DIR] [--count-only] "
          "[--workers N] [--max-conn N] [--max-per-ip N] "
          "[--greeting-delay MS] [--timeout-ms MS] "
          "[--shutdown-timeout-ms MS] [--xclient-nets LIST] "
          "[--max-size N] [--pause-data MS] [--pause-every N]\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *urls[MAX_LISTEN];
  struct tern_listener_options lopts[MAX_LISTEN];
  size_t nl = 0;
  struct tern_tls_cert certs[MAX_CERTS];
  size_t ncert = 0, nkey = 0;
  const char *users = NULL;
  struct tern_server_callbacks cb;
  struct tern_server_options o;
  struct tern_auth_callbacks auth;
  struct tern_server *srv = NULL;
  uv_loop_t *loop = uv_default_loop();
  int r;

  signal(SIGPIPE, SIG_IGN);
  tern_server_options_init(&o);
  struct tern_server_config sc;
  tern_server_config_init(&sc);
  o.session = &sc;
  g_app.out = ".";
  g_app.pause_data_ms = -1;
  g_app.pause_every = 1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    bool has = i + 1 < argc;
    if (!strcmp(a, "--listen") && has) {
      if (nl == MAX_LISTEN)
        usage();
      urls[nl] = argv[++i];
      tern_listener_options_init(&lopts[nl]);
      nl++;
    } else if (!strcmp(a, "--starttls") && nl) {
      lopts[nl - 1].starttls = true;
    } else if (!strcmp(a, "--proxy") && nl) {
      lopts[nl - 1].proxy_protocol = true;
    } else if (!strcmp(a, "--auth-required") && nl) {
      lopts[nl - 1].auth_required = true;
    } else if (!strcmp(a, "--insecure-auth") && nl) {
      lopts[nl - 1].auth_insecure_ok = true;
    } else if (!strcmp(a, "--xclient") && nl) {
      lopts[nl - 1].xclient = true;
    } else if (!strcmp(a, "--tls-cert") && has && ncert < MAX_CERTS) {
      certs[ncert++].cert_file = argv[++i];
    } else if (!strcmp(a, "--tls-key") && has && nkey < MAX_CERTS) {
      certs[nkey++].key_file = argv[++i];
    } else if (!strcmp(a, "--users") && has) {
      users = argv[++i];
    } else if (!strcmp(a, "--auth-mechs") && has) {
      o.auth_mechanisms = argv[++i];
    } else if (!strcmp(a, "--auth-fail-delay-ms") && has) {
      o.auth_fail_delay_ms = (unsigned)num(argv[++i], a);
    } else if (!strcmp(a, "--out") && has) {
      g_app.out = argv[++i];
    } else if (!strcmp(a, "--count-only")) {
      g_app.count_only = true;
    } else if (!strcmp(a, "--workers") && has) {
      o.workers = (unsigned)num(argv[++i], a);
    } else if (!strcmp(a, "--max-conn") && has) {
      o.max_connections = (unsigned)num(argv[++i], a);
    } else if (!strcmp(a, "--max-per-ip") && has) {
      o.max_per_ip = (unsigned)num(argv[++i], a);
    } else if (!strcmp(a, "--greeting-delay") && has) {
      o.greeting_delay_ms = (unsigned)num(argv[++i], a);
    } else if (!strcmp(a, "--timeout-ms") && has) {
      unsigned ms = (unsigned)num(argv[++i], a);
      sc.timeout_command_ms = ms;
      sc.timeout_data_ms = ms;
    } else if (!strcmp(a, "--shutdown-timeout-ms") && has) {
      o.shutdown_timeout_ms = (unsigned)num(argv[++i], a);
    } else if (!strcmp(a, "--xclient-nets") && has) {
      o.xclient_networks = argv[++i];
    } else if (!strcmp(a, "--max-size") && has) {
      sc.max_message_size = num(argv[++i], a);
    } else if (!strcmp(a, "--pause-data") && has) {
      g_app.pause_data_ms = (long)num(argv[++i], a);
    } else if (!strcmp(a, "--pause-every") && has) {
      g_app.pause_every = num(argv[++i], a);
      if (!g_app.pause_every)
        usage();
    } else {
      fprintf(stderr, "capture_server: unknown or incomplete option %s\n", a);
      usage();
    }
  }
  if (!nl || ncert != nkey)
    usage();

  tern_server_callbacks_init(&cb);
  cb.on_mail = on_mail;
  cb.on_rcpt = on_rcpt;
  cb.on_data_start = on_data_start;
  cb.on_data = on_data;
  cb.on_data_end = on_data_end;
  cb.on_data_abort = on_data_abort;
  cb.on_reset = on_reset;
  cb.on_close = on_close;
  o.callbacks = &cb;
  o.ud = &g_app;
  if (ncert) {
    o.tls_certs = certs;
    o.tls_cert_count = ncert;
  }
  if (users) {
    if (load_users(&g_app, users))
      return 1;
    tern_auth_callbacks_init(&auth);
    auth.check_password = check_password;
    auth.get_password = get_password;
    auth.check_token = check_token;
    o.auth = &auth;
    o.auth_ud = &g_app;
  }
  g_app.loop = loop;

  r = tern_server_new(&srv, loop, &o);
  if (r) {
    fprintf(stderr, "capture_server: tern_server_new: %s (%s)\n",
            tern_strerror(r), srv ? tern_server_last_error(srv) : "");
    tern_server_free(srv);
    return 1;
  }
  for (size_t i = 0; i < nl; i++) {
    r = tern_server_listen(srv, urls[i], &lopts[i]);
    if (r) {
      fprintf(stderr, "capture_server: listen %s: %s (%s)\n", urls[i],
              tern_strerror(r), tern_server_last_error(srv));
      tern_server_free(srv);
      return 1;
    }
  }
  r = tern_server_start(srv);
  if (r) {
    fprintf(stderr, "capture_server: start: %s (%s)\n", tern_strerror(r),
            tern_server_last_error(srv));
    tern_server_free(srv);
    return 1;
  }
  uv_signal_init(loop, &g_sigint);
  uv_signal_init(loop, &g_sigterm);
  g_sigint.data = g_sigterm.data = srv;
  uv_signal_start(&g_sigint, on_signal, SIGINT);
  uv_signal_start(&g_sigterm, on_signal, SIGTERM);
  uv_unref((uv_handle_t *)&g_sigint);
  uv_unref((uv_handle_t *)&g_sigterm);

  printf("READY %d\n", tern_server_listener_port(srv, 0));
  for (size_t i = 1; i < nl; i++)
    printf("PORT %zu %d\n", i, tern_server_listener_port(srv, i));
  fflush(stdout);

  r = uv_run(loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&g_sigint, NULL);
  uv_close((uv_handle_t *)&g_sigterm, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  tern_server_free(srv);
  r = uv_loop_close(loop);
  if (r)
    fprintf(stderr, "capture_server: uv_loop_close: %s\n", uv_strerror(r));

  if (g_app.count_only) {
    char path[600];
    snprintf(path, sizeof path, "%s/summary", g_app.out);
    FILE *f = fopen(path, "w");
    if (!f) {
      fprintf(stderr, "capture_server: %s: %s\n", path, strerror(errno));
      return 1;
    }
    fprintf(f, "messages %lu\nbytes %lu\naborted %lu\n",
            atomic_load(&g_app.messages), atomic_load(&g_app.bytes),
            atomic_load(&g_app.aborted));
    fclose(f);
  }
  fprintf(stderr, "capture_server: exit: %lu messages, %lu aborted\n",
          atomic_load(&g_app.messages), atomic_load(&g_app.aborted));
  return 0;
}
