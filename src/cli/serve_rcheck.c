/*
 * tern serve: [delivery] recipient_check, a command asked about each
 * recipient at RCPT time.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "recipients.h"
#include "serve.h"

/*
 * A command asked about each recipient at RCPT time (maildir and pipe
 * targets): its exit status maps as the pipe target's does (0 accepts,
 * 67 EX_NOUSER is 550 5.1.1, 75 EX_TEMPFAIL 451 4.3.0, ...); a command
 * still running after recipient_check_timeout is stopped and the
 * recipient gets 451 4.4.3. The RCPT is answered when it is known
 * (TERN_PENDING meanwhile). The check owns its timer and frees itself in
 * the timer's close callback; a session that goes away first only
 * detaches from it (rcheck_cancel).
 */
struct rcheck {
  uv_timer_t timer;
  struct sess *x;           /* NULL once the session is gone */
  struct pipe_delivery *pd; /* NULL once finished or stopped */
  char addr[600];
};

static void rcheck_closed(uv_handle_t *h) { free(h->data); }

static void rcheck_end(struct rcheck *k) {
  if (k->pd)
    pipe_abort(k->pd);
  k->pd = NULL;
  uv_timer_stop(&k->timer);
  uv_close((uv_handle_t *)&k->timer, rcheck_closed);
}

/* The answer: a 2xx adds the recipient, anything else refuses it. */
static void rcheck_finish(struct rcheck *k, const struct tern_reply *r,
                          const char *detail) {
  struct sess *x = k->x;

  rcheck_end(k);
  if (!x)
    return;
  x->rcheck = NULL;
  logf_("session=%s event=recipient-check to=<%s> status=%d detail=\"%s\"",
        x->info->id, k->addr, r->code, detail);
  if (r->code / 100 != 2) {
    tern_server_session_reply(x->s, r);
    return;
  }
  char *copy = strdup(k->addr);
  if (!copy || sess_rcpt_room(x) != 0) {
    static const struct tern_reply oom = {451, "4.3.0",
                                          "Error: out of memory"};
    free(copy);
    tern_server_session_reply(x->s, &oom);
    return;
  }
  sess_push_rcpt(x, copy);
  tern_server_session_reply(x->s, NULL); /* 250 2.1.5 */
}

static void rcheck_done(void *arg, const struct tern_reply *r,
                        const char *detail) {
  struct rcheck *k = arg;
  k->pd = NULL; /* it frees itself after this returns */
  rcheck_finish(k, r, detail ? detail : "");
}

static void rcheck_timeout(uv_timer_t *t) {
  static const struct tern_reply late = {
      451, "4.4.3", "Error: recipient check timed out, try again later"};
  rcheck_finish(t->data, &late, "timed out");
}

void rcheck_cancel(struct sess *x) {
  if (x->rcheck) {
    x->rcheck->x = NULL;
    rcheck_end(x->rcheck);
    x->rcheck = NULL;
  }
}

int rcheck_start(struct sess *x, const struct tern_path *to,
                 struct tern_reply *r) {
  struct tern_server_session *s = x->s;
  const struct cfg *c = &x->pol->cfg;
  const char *from = x->from ? x->from : "";
  char words[4096], *argv[64], envs[2][700];
  char *env[] = {envs[0], envs[1], "PATH=/usr/local/bin:/usr/bin:/bin", NULL};
  struct rcheck *k = calloc(1, sizeof *k);
  int rc = -ENOMEM;

  if (k) {
    size_t n = to->mailbox.len < sizeof k->addr - 1 ? to->mailbox.len
                                                    : sizeof k->addr - 1;
    memcpy(k->addr, to->mailbox.ptr, n);
    k->addr[n] = '\0';
    snprintf(envs[0], sizeof envs[0], "SENDER=%s", from);
    snprintf(envs[1], sizeof envs[1], "RECIPIENT=%s", k->addr);
    rc = rcpt_pipe_argv(c->recipient_check, from, k->addr, words,
                        sizeof words, argv, 64) > 0
             ? pipe_begin(tern_session_loop(s), argv, env, NULL, 0, &k->pd)
             : -E2BIG;
  }
  if (rc != 0) {
    logf_("session=%s event=error what=recipient-check error=\"%s\"",
          x->info->id, strerror(-rc));
    free(k);
    r->code = 451;
    r->enhanced = "4.3.0";
    r->text = "Error: cannot check the recipient, try again later";
    return TERN_REPLY_NOW;
  }
  uv_timer_init(tern_session_loop(s), &k->timer);
  k->timer.data = k;
  uv_timer_start(&k->timer, rcheck_timeout, c->recipient_check_timeout_ms, 0);
  pipe_commit(k->pd, rcheck_done, k); /* stdin closed: no message yet */
  k->x = x;
  x->rcheck = k;
  return TERN_PENDING;
}
