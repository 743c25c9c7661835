/*
 * cplayer — plays a client transcript (tests/transcripts/client/NAME.smtpc)
 * against the sans-IO CLIENT session, through the public API only.
 *
 *   cplayer [--whole|--bytewise|--splits|--nomem|--trace] FILE
 *
 * Without a mode all of them run and must give the same trace, equal to
 * the C:/E: lines of the file. Format (one directive per line, '#'
 * comments and blank lines ignored):
 *
 *   @config KEY=VALUE   lmtp, pipelining, chunking, tls_active,
 *                       auth_required (0/1); starttls=off|opportunistic|
 *                       required; auth=MECH; ehlo=NAME; max_recipients=N;
 *                       output_high_water=N; choose=MECH|none (install
 *                       on_auth_mechanism answering that)
 *   @auth ANSWER        next on_auth answer (FIFO): base64 text, "-" for
 *                       empty, NO_IR, CANCEL, BAD (not base64)
 *   S: line             the server sends line + CRLF (escapes \r \n \t \0
 *                       \\ \xHH; a last single backslash: no CRLF).
 *                       Consecutive S: lines are one input segment.
 *   C: line             a line the client must write (shown without its
 *                       CRLF; a CR or LF inside shows as \r or \n)
 *   E: event            an expected event (see below)
 *   @send from=A rcpt=B[,C...] [size=N] [body=7BIT|8BITMIME|BINARYMIME]
 *         [smtputf8] [requiretls] [ret=FULL|HDRS] [envid=X]
 *         [notify=SUCCESS,FAILURE,DELAY|NEVER] [orcpt=X]
 *                       tern_client_session_send(); "from=" empty is <>
 *   @mail from=A [MAIL parameters as @send]   tern_client_session_mail()
 *   @rcpt rcpt=B [notify=...] [orcpt=X]       tern_client_session_rcpt()
 *   @data                                     tern_client_session_data()
 *                       incremental steps; each one's own callback shows
 *                       as "got CMD CODE [ENH] TEXT local=0|1"
 *   @body TEXT          tern_client_session_body() (escapes; no CRLF added)
 *   @end  @tls  @quit  @rset  @noop  @vrfy ARG  @eof
 *
 * Events: reply CMD#INDEX CODE [ENH] TEXT|TEXT..., ready,
 * done code=N local=0|1 accepted=N delivered=N, error NAME [CODE],
 * auth CHALLENGE|- , choose OFFERED tls=0|1, close, and NAME ERR when an
 * API call fails (send/body/end/tls/quit/rset/noop/vrfy), body took=N
 * when body() took less than asked. Client output is drained into the
 * trace at every event, so the trace does not depend on how the server
 * bytes were split.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tern/tern.h>

/* ---- utilities ------------------------------------------------------------ */

struct buf {
  char *p;
  size_t n, cap;
};

static void bput(struct buf *b, const void *p, size_t n) {
  if (b->n + n + 1 > b->cap) {
    b->cap = (b->n + n + 1) * 2;
    b->p = realloc(b->p, b->cap);
    if (!b->p)
      abort();
  }
  memcpy(b->p + b->n, p, n);
  b->n += n;
  b->p[b->n] = '\0';
}

static void bputs(struct buf *b, const char *s) { bput(b, s, strlen(s)); }

__attribute__((format(printf, 2, 3)))
static void bprintf(struct buf *b, const char *fmt, ...) {
  char tmp[4096];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  bput(b, tmp, n < 0 ? 0 : (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static int hexv(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Unescape s into b; returns false when a last single backslash asks for
 * no CRLF. */
static bool unescape(struct buf *b, const char *s) {
  size_t n = strlen(s);
  for (size_t i = 0; i < n; i++) {
    if (s[i] != '\\') {
      bput(b, s + i, 1);
      continue;
    }
    if (i + 1 == n)
      return false;
    char c = s[++i], o;
    switch (c) {
    case 'r': o = '\r'; break;
    case 'n': o = '\n'; break;
    case 't': o = '\t'; break;
    case '0': o = '\0'; break;
    case 'x':
      if (i + 2 < n + 1 && hexv(s[i + 1]) >= 0 && hexv(s[i + 2]) >= 0) {
        o = (char)(hexv(s[i + 1]) * 16 + hexv(s[i + 2]));
        i += 2;
        break;
      }
      /* fall through */
    default: o = c; break;
    }
    bput(b, &o, 1);
  }
  return true;
}

/* ---- the script ------------------------------------------------------------- */

enum kind { K_SEG, K_ACT, K_EXPECT };

struct step {
  enum kind kind;
  char *text; /* K_ACT: the directive; K_EXPECT: "C: ..." / "E: ..." */
  struct buf seg; /* K_SEG: the bytes */
};

struct script {
  struct step *steps;
  size_t n;
  char *config[32];
  size_t nconfig;
  char *auth[32];
  size_t nauth;
  struct buf expect; /* all C:/E: lines, "\n"-terminated */
};

static char *xstrdup(const char *s) {
  char *p = strdup(s);
  if (!p)
    abort();
  return p;
}

static void load(struct script *sc, const char *path) {
  FILE *f = fopen(path, "r");
  char line[65536];
  if (!f) {
    perror(path);
    exit(2);
  }
  memset(sc, 0, sizeof *sc);
  sc->steps = calloc(4096, sizeof *sc->steps);
  while (fgets(line, sizeof line, f)) {
    size_t l = strlen(line);
    while (l && (line[l - 1] == '\n' || line[l - 1] == '\r'))
      line[--l] = '\0';
    if (!l || line[0] == '#')
      continue;
    if (!strncmp(line, "S:", 2)) {
      const char *t = line + 2 + (line[2] == ' ');
      struct step *s = sc->n && sc->steps[sc->n - 1].kind == K_SEG
                           ? &sc->steps[sc->n - 1]
                           : &sc->steps[sc->n++];
      s->kind = K_SEG;
      if (unescape(&s->seg, t))
        bput(&s->seg, "\r\n", 2);
    } else if (!strncmp(line, "C:", 2) || !strncmp(line, "E:", 2)) {
      const char *t = line + 2 + (line[2] == ' ');
      bput(&sc->expect, line, 2);
      bputs(&sc->expect, " ");
      bputs(&sc->expect, t);
      bputs(&sc->expect, "\n");
    } else if (!strncmp(line, "@config ", 8)) {
      sc->config[sc->nconfig++] = xstrdup(line + 8);
    } else if (!strncmp(line, "@auth ", 6)) {
      sc->auth[sc->nauth++] = xstrdup(line + 6);
    } else if (line[0] == '@') {
      struct step *s = &sc->steps[sc->n++];
      s->kind = K_ACT;
      s->text = xstrdup(line + 1);
    } else {
      fprintf(stderr, "%s: bad line: %s\n", path, line);
      exit(2);
    }
  }
  fclose(f);
}

/* ---- a run -------------------------------------------------------------------- */

struct run {
  struct script *sc;
  struct tern_client_session *s;
  struct buf trace;
  struct buf pend; /* client output not yet ending in CRLF */
  size_t next_auth;
  bool closed_seen;
  char choose[64];
  bool has_choose;
  /* storage for messages (valid for the whole run) */
  struct tern_client_message msgs[64];
  struct tern_client_rcpt rcpts[64][64];
  char strs[64][2048];
  size_t nmsgs;
  void *owned[512]; /* freed when the run ends */
  size_t nowned;
  /* allocation failure injection */
  long fail_at;
  long allocs;
};

static void show_line(struct buf *t, const char *p, size_t n) {
  bputs(t, "C: ");
  for (size_t i = 0; i < n; i++) {
    if (p[i] == '\r')
      bputs(t, "\\r");
    else if (p[i] == '\n')
      bputs(t, "\\n");
    else if (p[i] == '\0')
      bputs(t, "\\0");
    else
      bput(t, p + i, 1);
  }
  bputs(t, "\n");
}

/* Move the session's output into the trace, one C: entry per CRLF line. */
static void drain(struct run *r) {
  const char *d;
  size_t n;
  /* consume() may let more output be formatted (a lazy envelope). */
  while ((n = tern_client_session_output(r->s, &d)) != 0) {
    bput(&r->pend, d, n);
    tern_client_session_consume(r->s, n);
  }
  size_t i = 0;
  for (;;) {
    char *crlf = NULL;
    for (size_t k = i; k + 1 < r->pend.n; k++)
      if (r->pend.p[k] == '\r' && r->pend.p[k + 1] == '\n') {
        crlf = r->pend.p + k;
        break;
      }
    if (!crlf)
      break;
    show_line(&r->trace, r->pend.p + i, (size_t)(crlf - r->pend.p) - i);
    i = (size_t)(crlf - r->pend.p) + 2;
  }
  if (i) {
    memmove(r->pend.p, r->pend.p + i, r->pend.n - i);
    r->pend.n -= i;
  }
}

__attribute__((format(printf, 2, 3)))
static void event(struct run *r, const char *fmt, ...) {
  char tmp[4096];
  va_list ap;
  drain(r);
  va_start(ap, fmt);
  vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  bprintf(&r->trace, "E: %s\n", tmp);
}

static const char *cmd_name(enum tern_client_cmd c) {
  static const char *const n[] = {"GREETING", "EHLO", "STARTTLS", "AUTH",
                                  "MAIL",     "RCPT", "DATA",     "DATA_END",
                                  "BDAT",     "RSET", "NOOP",     "VRFY",
                                  "QUIT"};
  return (unsigned)c < sizeof n / sizeof n[0] ? n[c] : "?";
}

static void on_reply(struct tern_client_session *c, enum tern_client_cmd cmd,
                     unsigned index, const struct tern_client_reply *rp,
                     void *ud) {
  struct run *r = ud;
  struct buf b = {0};
  (void)c;
  bprintf(&b, "reply %s#%u %d", cmd_name(cmd), index, rp->code);
  if (rp->enhanced)
    bprintf(&b, " %s", rp->enhanced);
  bputs(&b, " ");
  for (size_t i = 0; i < rp->nlines; i++) {
    if (i)
      bputs(&b, "|");
    bput(&b, rp->lines[i].ptr, rp->lines[i].len);
  }
  event(r, "%s", b.p);
  free(b.p);
}

static void on_ready(struct tern_client_session *c, void *ud) {
  (void)c;
  event(ud, "ready");
}

static long on_auth(struct tern_client_session *c, struct tern_str ch,
                    bool has, char *out, size_t cap, void *ud) {
  struct run *r = ud;
  (void)c;
  if (has)
    event(r, "auth %.*s", (int)ch.len, ch.ptr);
  else
    event(r, "auth -");
  const char *a = r->next_auth < r->sc->nauth ? r->sc->auth[r->next_auth++]
                                               : "CANCEL";
  if (!strcmp(a, "NO_IR"))
    return TERN_CLIENT_AUTH_NO_IR;
  if (!strcmp(a, "CANCEL"))
    return TERN_EAUTH;
  if (!strcmp(a, "BAD"))
    a = "a b\r\n";
  if (!strcmp(a, "-"))
    return 0;
  size_t n = strlen(a);
  if (n > cap)
    return TERN_EINVAL;
  memcpy(out, a, n);
  return (long)n;
}

static const char *on_choose(struct tern_client_session *c,
                             const char *offered, bool tls, void *ud) {
  struct run *r = ud;
  (void)c;
  event(r, "choose %s tls=%d", offered[0] ? offered : "-", tls);
  return strcmp(r->choose, "none") ? r->choose : NULL;
}

static void on_done(struct tern_client_session *c,
                    const struct tern_client_outcome *o, void *ud) {
  (void)c;
  event(ud, "done code=%d local=%d accepted=%zu delivered=%zu", o->code,
        o->local, o->accepted, o->delivered);
}

static void on_error(struct tern_client_session *c, int err,
                     const struct tern_client_reply *rp, void *ud) {
  (void)c;
  if (rp)
    event(ud, "error %s %d", tern_err_name(err), rp->code);
  else
    event(ud, "error %s", tern_err_name(err));
}

static void *f_malloc(size_t n, void *ud) {
  struct run *r = ud;
  if (r->fail_at >= 0 && r->allocs++ == r->fail_at)
    return NULL;
  return malloc(n);
}
static void *f_realloc(void *p, size_t n, void *ud) {
  (void)ud;
  return realloc(p, n);
}
static void f_free(void *p, void *ud) {
  (void)ud;
  free(p);
}

static int make(struct run *r) {
  struct tern_client_config cfg;
  struct tern_client_callbacks cb;
  static struct tern_mem mem;
  tern_client_config_init(&cfg);
  tern_client_callbacks_init(&cb);
  mem = (struct tern_mem){f_malloc, f_realloc, f_free, r};
  cfg.mem = &mem;
  cb.on_reply = on_reply;
  cb.on_ready = on_ready;
  cb.on_auth = on_auth;
  cb.on_message_done = on_done;
  cb.on_error = on_error;
  static char keep[32][256];
  for (size_t i = 0; i < r->sc->nconfig; i++) {
    char *kv = keep[i];
    snprintf(kv, sizeof keep[i], "%s", r->sc->config[i]);
    char *eq = strchr(kv, '=');
    if (!eq) {
      fprintf(stderr, "bad @config %s\n", kv);
      exit(2);
    }
    *eq = '\0';
    const char *v = eq + 1;
    bool on = atoi(v) != 0;
    if (!strcmp(kv, "lmtp"))
      cfg.lmtp = on;
    else if (!strcmp(kv, "pipelining"))
      cfg.pipelining = on;
    else if (!strcmp(kv, "chunking"))
      cfg.chunking = on;
    else if (!strcmp(kv, "tls_active"))
      cfg.tls_active = on;
    else if (!strcmp(kv, "auth_required"))
      cfg.auth_required = on;
    else if (!strcmp(kv, "starttls"))
      cfg.starttls = !strcmp(v, "required")        ? TERN_STARTTLS_REQUIRED
                     : !strcmp(v, "opportunistic") ? TERN_STARTTLS_OPPORTUNISTIC
                                                   : TERN_STARTTLS_OFF;
    else if (!strcmp(kv, "auth"))
      cfg.auth_mechanism = v;
    else if (!strcmp(kv, "ehlo"))
      cfg.ehlo_name = v;
    else if (!strcmp(kv, "max_recipients"))
      cfg.max_recipients = (unsigned)atoi(v);
    else if (!strcmp(kv, "output_high_water"))
      cfg.output_high_water = (size_t)atol(v);
    else if (!strcmp(kv, "choose")) {
      snprintf(r->choose, sizeof r->choose, "%s", v);
      cb.on_auth_mechanism = on_choose;
    } else {
      fprintf(stderr, "unknown @config %s\n", kv);
      exit(2);
    }
  }
  return tern_client_session_new(&r->s, &cfg, &cb, r);
}

static void api_rc(struct run *r, const char *what, long rc) {
  if (rc < 0)
    event(r, "%s %s", what, tern_err_name((int)rc));
}

static void on_step(struct tern_client_session *c,
                    const struct tern_client_reply *rp, bool local,
                    void *arg) {
  struct run *r = tern_client_session_userdata(c);
  const char *what = arg;
  event(r, "got %s %d%s%s %.*s local=%d", what, rp->code,
        rp->enhanced ? " " : "", rp->enhanced ? rp->enhanced : "",
        (int)rp->lines[0].len,
        rp->lines[0].ptr, local);
}

/* "@send from=... rcpt=a,b ...", or @mail / @rcpt (what = 1 / 2) */
static void do_send(struct run *r, char *args, int what) {
  size_t k = r->nmsgs++ % 64;
  struct tern_client_message *m = &r->msgs[k];
  char *st = r->strs[k];
  memset(m, 0, sizeof *m);
  size_t alen = strlen(args);
  if (alen >= sizeof r->strs[k])
    alen = sizeof r->strs[k] - 1;
  memcpy(st, args, alen);
  st[alen] = '\0';
  unsigned notify = 0;
  const char *orcpt = NULL;
  char *rcpts = NULL;
  m->from = "";
  for (char *tok = strtok(st, " "); tok; tok = strtok(NULL, " ")) {
    char *eq = strchr(tok, '=');
    char *v = eq ? eq + 1 : "";
    if (eq)
      *eq = '\0';
    if (!strcmp(tok, "from")) {
      struct buf b = {0};
      unescape(&b, v);
      if (b.p && r->nowned < 512)
        r->owned[r->nowned++] = b.p;
      m->from = b.p ? b.p : "";
    }
    else if (!strcmp(tok, "rcpt"))
      rcpts = v;
    else if (!strcmp(tok, "size"))
      m->size = strtoull(v, NULL, 10);
    else if (!strcmp(tok, "body"))
      m->body = !strcmp(v, "7BIT")       ? TERN_BODY_7BIT
                : !strcmp(v, "8BITMIME") ? TERN_BODY_8BITMIME
                                         : TERN_BODY_BINARYMIME;
    else if (!strcmp(tok, "smtputf8"))
      m->smtputf8 = true;
    else if (!strcmp(tok, "requiretls"))
      m->requiretls = true;
    else if (!strcmp(tok, "ret"))
      m->ret = !strcmp(v, "FULL") ? TERN_RET_FULL : TERN_RET_HDRS;
    else if (!strcmp(tok, "envid")) {
      struct buf b = {0};
      unescape(&b, v);
      if (b.p && r->nowned < 512)
        r->owned[r->nowned++] = b.p;
      m->envid = b.p ? b.p : "";
    } else if (!strcmp(tok, "notify")) {
      if (strstr(v, "NEVER"))
        notify |= TERN_NOTIFY_NEVER;
      if (strstr(v, "SUCCESS"))
        notify |= TERN_NOTIFY_SUCCESS;
      if (strstr(v, "FAILURE"))
        notify |= TERN_NOTIFY_FAILURE;
      if (strstr(v, "DELAY"))
        notify |= TERN_NOTIFY_DELAY;
    } else if (!strcmp(tok, "orcpt")) {
      orcpt = v;
    } else {
      fprintf(stderr, "bad @send argument %s\n", tok);
      exit(2);
    }
  }
  size_t n = 0;
  if (rcpts) {
    char *save = NULL;
    for (char *a = strtok_r(rcpts, ",", &save); a && n < 64;
         a = strtok_r(NULL, ",", &save)) {
      struct buf b = {0};
      unescape(&b, a);
      if (b.p && r->nowned < 512)
        r->owned[r->nowned++] = b.p;
      r->rcpts[k][n].address = b.p ? b.p : "";
      r->rcpts[k][n].notify = notify;
      r->rcpts[k][n].orcpt = orcpt;
      n++;
    }
  }
  m->rcpts = r->rcpts[k];
  m->nrcpts = n;
  if (what == 1)
    api_rc(r, "mail", tern_client_session_mail(r->s, m, on_step, "MAIL"));
  else if (what == 2)
    api_rc(r, "rcpt", tern_client_session_rcpt(r->s, &m->rcpts[0], on_step,
                                               "RCPT"));
  else
    api_rc(r, "send", tern_client_session_send(r->s, m));
}

static void act(struct run *r, char *a) {
  if (!strncmp(a, "send", 4)) {
    do_send(r, a + 4, 0);
  } else if (!strncmp(a, "mail", 4)) {
    do_send(r, a + 4, 1);
  } else if (!strncmp(a, "rcpt", 4)) {
    do_send(r, a + 4, 2);
  } else if (!strcmp(a, "data")) {
    api_rc(r, "data", tern_client_session_data(r->s, on_step, "DATA"));
  } else if (!strncmp(a, "body ", 5) || !strcmp(a, "body")) {
    struct buf b = {0};
    unescape(&b, a[4] ? a + 5 : "");
    long n = tern_client_session_body(r->s, b.p ? b.p : "", b.n);
    if (n < 0)
      api_rc(r, "body", n);
    else if ((size_t)n != b.n)
      event(r, "body took=%ld", n);
    free(b.p);
  } else if (!strcmp(a, "end")) {
    api_rc(r, "end", tern_client_session_body_end(r->s));
  } else if (!strcmp(a, "tls")) {
    if (!(tern_client_session_want(r->s) & TERN_CLIENT_WANT_TLS))
      event(r, "tls not wanted");
    api_rc(r, "tls", tern_client_session_tls_started(r->s));
  } else if (!strcmp(a, "quit")) {
    api_rc(r, "quit", tern_client_session_quit(r->s));
  } else if (!strcmp(a, "rset")) {
    api_rc(r, "rset", tern_client_session_rset(r->s));
  } else if (!strcmp(a, "noop")) {
    api_rc(r, "noop", tern_client_session_noop(r->s));
  } else if (!strncmp(a, "vrfy ", 5)) {
    struct buf b = {0};
    unescape(&b, a + 5);
    api_rc(r, "vrfy", tern_client_session_vrfy(r->s, b.p ? b.p : ""));
    free(b.p);
  } else if (!strcmp(a, "eof")) {
    tern_client_session_eof(r->s);
  } else {
    fprintf(stderr, "unknown action @%s\n", a);
    exit(2);
  }
}

static void after(struct run *r) {
  drain(r);
  if (!r->closed_seen &&
      (tern_client_session_want(r->s) & TERN_CLIENT_WANT_CLOSE)) {
    r->closed_seen = true;
    bputs(&r->trace, "E: close\n");
  }
}

static void feed(struct run *r, const char *p, size_t n) {
  while (n) {
    long k = tern_client_session_feed(r->s, p, n);
    if (k < 0) {
      event(r, "feed %s", tern_err_name((int)k));
      return;
    }
    if (k == 0 || (size_t)k > n) {
      if (k == 0)
        return;
      event(r, "feed took too much");
      return;
    }
    p += k;
    n -= (size_t)k;
    if (n && (tern_client_session_want(r->s) &
              (TERN_CLIENT_WANT_TLS | TERN_CLIENT_WANT_CLOSE)))
      return; /* a runtime drops what the session did not take */
  }
}

/* mode: 0 whole, 1 bytewise, 2 split segment `seg` at `at` */
static int play(struct script *sc, int mode, size_t seg, size_t at,
                long fail_at, struct buf *out) {
  struct run *r = calloc(1, sizeof *r);
  r->sc = sc;
  r->fail_at = fail_at;
  int rc = make(r);
  if (rc) {
    free(r);
    return rc;
  }
  after(r);
  for (size_t i = 0; i < sc->n; i++) {
    struct step *s = &sc->steps[i];
    if (s->kind == K_ACT) {
      char tmp[8192];
      snprintf(tmp, sizeof tmp, "%s", s->text);
      act(r, tmp);
    } else if (s->kind == K_SEG) {
      if (mode == 1) {
        for (size_t k = 0; k < s->seg.n; k++)
          feed(r, s->seg.p + k, 1);
      } else if (mode == 2 && i == seg) {
        size_t a = at < s->seg.n ? at : s->seg.n;
        feed(r, s->seg.p, a);
        feed(r, s->seg.p + a, s->seg.n - a);
      } else {
        feed(r, s->seg.p, s->seg.n);
      }
    }
    after(r);
  }
  if (r->pend.n) {
    bputs(&r->trace, "C: (partial) ");
    bput(&r->trace, r->pend.p, r->pend.n);
    bputs(&r->trace, "\n");
  }
  tern_client_session_free(r->s);
  *out = r->trace;
  free(r->pend.p);
  for (size_t i = 0; i < r->nowned; i++)
    free(r->owned[i]);
  free(r);
  return 0;
}

/* Does the trace match the expectation? A '*' at the end of an expected
 * line matches any suffix. */
static bool match(const char *exp, const char *got) {
  for (;;) {
    const char *e = strchr(exp, '\n'), *g = strchr(got, '\n');
    if (!e || !g)
      return !e && !g;
    size_t el = (size_t)(e - exp), gl = (size_t)(g - got);
    if (el && exp[el - 1] == '*') {
      if (gl < el - 1 || memcmp(exp, got, el - 1))
        return false;
    } else if (el != gl || memcmp(exp, got, el)) {
      return false;
    }
    exp = e + 1;
    got = g + 1;
  }
}

static int check(struct script *sc, const char *what, struct buf *t) {
  const char *got = t->p ? t->p : "";
  const char *exp = sc->expect.p ? sc->expect.p : "";
  if (match(exp, got))
    return 0;
  fprintf(stderr, "FAIL (%s)\n--- expected\n%s--- got\n%s", what, exp, got);
  return 1;
}

int main(int argc, char **argv) {
  const char *mode = argc == 3 ? argv[1] : "";
  const char *file = argv[argc - 1];
  static struct script sc; /* lives (reachable) until exit */
  struct buf t;
  int fails = 0;

  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: cplayer [--whole|--bytewise|--splits|--nomem|"
                    "--trace] FILE\n");
    return 2;
  }
  load(&sc, file);
  if (!strcmp(mode, "--trace")) {
    play(&sc, 0, 0, 0, -1, &t);
    fputs(t.p ? t.p : "", stdout);
    free(t.p);
    return 0;
  }
  bool all = !mode[0];
  if (all || !strcmp(mode, "--whole")) {
    play(&sc, 0, 0, 0, -1, &t);
    fails += check(&sc, "whole", &t);
    free(t.p);
  }
  if (all || !strcmp(mode, "--bytewise")) {
    play(&sc, 1, 0, 0, -1, &t);
    fails += check(&sc, "bytewise", &t);
    free(t.p);
  }
  if (all || !strcmp(mode, "--splits")) {
    for (size_t i = 0; i < sc.n && !fails; i++) {
      if (sc.steps[i].kind != K_SEG)
        continue;
      for (size_t at = 1; at < sc.steps[i].seg.n && !fails; at++) {
        char what[64];
        play(&sc, 2, i, at, -1, &t);
        snprintf(what, sizeof what, "split step %zu at %zu", i, at);
        fails += check(&sc, what, &t);
        free(t.p);
      }
    }
  }
  if (all || !strcmp(mode, "--nomem")) {
    /* _new() makes one allocation; a failure must be TERN_ENOMEM. */
    int rc = play(&sc, 0, 0, 0, 0, &t);
    if (rc != TERN_ENOMEM) {
      fprintf(stderr, "FAIL (nomem): _new returned %d\n", rc);
      fails++;
      if (!rc)
        free(t.p);
    }
  }
  return fails ? 1 : 0;
}
