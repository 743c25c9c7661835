/*
 * What a finished job means (tern_queue_job_done): each recipient's new
 * state (delivered, deferred with its next try, failed), the delay
 * warning, the DSN to the sender (or the postmaster, or none), and
 * whether the message is done — all sent to the store as one
 * qstore_update, so a crash keeps either all of it or none.
 *
 * Choices, after Postfix where RFC 3461 leaves room:
 * - A failed recipient is reported when its NOTIFY has FAILURE or NOTIFY
 *   was not given (RFC 3461 §4.1: absent means FAILURE,DELAY at the
 *   MTA's discretion).
 * - A delay warning goes (once per message) when delay_warning_s is set,
 *   the message has waited that long, and the recipient's NOTIFY has
 *   DELAY or was not given — Postfix's delay_warning_time does the same.
 *   It is checked when an attempt ends, so it comes with the first
 *   deferral after the threshold.
 * - A success notice (action delivered) goes for NOTIFY=SUCCESS when the
 *   delivery was final here (remote_mta NULL); a relay passes the
 *   request on instead.
 * - Expiry keeps the last reply's status (4.x.x) with action failed, as
 *   Postfix does: the reader sees why it never got through.
 * - A message from <> (a bounce) is never bounced: its failure goes to
 *   opts.postmaster if set (a double bounce), else the message stays on
 *   hold in the queue for an operator, with its failed recipients marked
 *   failed. A double bounce that fails is held the same way: reporting
 *   it again would loop (each report carrying the last one).
 * - The original goes back whole only up to Q_BOUNCE_FULL_MAX octets
 *   (Postfix's bounce_size_limit is 50,000), else its header only: a
 *   message too big for the next hop must not come back as a bounce too
 *   big for the sender's, nor fill the spool with copies.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "queue_int.h"

/* retry_min doubling per attempt up to retry_max, plus up to 10% so
 * that messages deferred together do not come back together. Drawn once
 * per job outcome: the recipients of one job keep one retry time, and
 * come back in one transaction. */
static int64_t backoff(struct tern_queue *q, unsigned attempts) {
  uint64_t d = q->o.retry_min_s;
  for (unsigned i = 1; i < attempts && d < q->o.retry_max_s; i++)
    d *= 2;
  if (d > q->o.retry_max_s)
    d = q->o.retry_max_s;
  uint64_t j = d / 10;
  if (j)
    d += q_rand(q) % (j + 1);
  return (int64_t)d;
}

static void rcpt_event(struct tern_queue *q, enum tern_queue_event_type t,
                       const struct qmsg *m, const struct qrcpt *r,
                       const struct qres *x, time_t at, const char *detail) {
  struct tern_reply rep = {x->code, x->enhanced, x->text};
  q_event(q, t, m->id, r->addr, &rep, x->remote, NULL, at, detail);
}

#define Q_BOUNCE_FULL_MAX 50000

/* A DSN of ours to the postmaster (a double bounce): from <>, made here,
 * every recipient the postmaster. */
static bool is_double_bounce(const struct tern_queue *q,
                             const struct qmsg *m) {
  if (m->from[0] || !m->is_bounce || !q->postmaster)
    return false;
  for (size_t i = 0; i < m->nrcpts; i++)
    if (strcasecmp(m->rcpts[i].addr, q->postmaster) != 0)
      return false;
  return true;
}

/* Does s contain w (ASCII, case-insensitive)? */
static bool has_words(const char *s, const char *w) {
  size_t n = strlen(w);
  for (; s && *s; s++) {
    size_t i = 0;
    while (i < n && s[i] && (s[i] | 0x20) == (w[i] | 0x20))
      i++;
    if (i == n)
      return true;
  }
  return false;
}

/* "452 4.5.3 Too many recipients" (RFC 5321 §4.5.3.1.10): the next hop
 * took fewer recipients than the transaction offered. Not a failure of
 * the recipient: the rest goes in the next transaction. Without an
 * enhanced code, the text says it. */
static bool too_many_rcpts(const struct qres *x) {
  if (x->code != 452)
    return false;
  if (x->enhanced)
    return strcmp(x->enhanced, "4.5.3") == 0;
  return has_words(x->text, "too many recipients");
}

/* "5 d", "3 h", "12 min", "40 s": how long a message waited. */
static void fmt_age(int64_t s, char *buf, size_t cap) {
  if (s >= 86400)
    snprintf(buf, cap, "%lld d", (long long)(s / 86400));
  else if (s >= 3600)
    snprintf(buf, cap, "%lld h", (long long)(s / 3600));
  else if (s >= 60)
    snprintf(buf, cap, "%lld min", (long long)(s / 60));
  else
    snprintf(buf, cap, "%lld s", (long long)(s < 0 ? 0 : s));
}

/* A null-sender message with a failure that should have been reported
 * and nobody to report it to (no postmaster, or it is the postmaster's
 * own double bounce): it is kept on hold when done. */
static bool keeps_for_postmaster(const struct tern_queue *q,
                                 const struct qmsg *m) {
  if (m->from[0] || (q->postmaster && !is_double_bounce(q, m)))
    return false;
  for (size_t i = 0; i < m->nrcpts; i++)
    if (m->rcpts[i].state == QS_FAILED &&
        (m->rcpts[i].notify == 0 || (m->rcpts[i].notify & TERN_NOTIFY_FAILURE)))
      return true;
  return false;
}

void q_outcome(struct tern_queue *q, struct tern_queue_job *j,
               const struct tern_reply *r) {
  struct qmsg *m = j->msg;
  int64_t now = q_now_s();
  struct qres dflt = {true, 451, (char *)"4.4.0",
                      (char *)"delivery not finished", NULL};
  if (r && r->code >= 200 && r->code <= 599)
    dflt = (struct qres){true, r->code, (char *)r->enhanced,
                         (char *)(r->text ? r->text : ""), NULL};

  struct qstore_rcpt_update *ups = calloc(j->n, sizeof *ups);
  char **strs = calloc(j->n, sizeof *strs);
  struct qb_rcpt *bs = calloc(j->n, sizeof *bs);
  struct q_upd_events ev;
  memset(&ev, 0, sizeof ev);
  struct q_upd_events *c = &ev;
  if (!ups || !strs || !bs) {
    /* Nothing recorded: the recipients stay as stored and are tried
     * again (at worst a duplicate, never a loss). */
    q_event(q, TERN_QEV_ERROR, m->id, NULL, NULL, NULL, NULL, 0,
            "out of memory: results not recorded");
    for (size_t i = 0; i < j->n; i++) {
      struct qrcpt *rc = &m->rcpts[j->idx[i]];
      rc->next_try = now + (int64_t)q->o.retry_min_s;
    }
    free(ups), free(strs), free(bs);
    return;
  }
  size_t nb = 0;
  bool any_failed = false, any_delayed = false;
  bool warn = q->o.delay_warning_s && !m->warned && m->from[0] &&
              now - m->arrival >= (int64_t)q->o.delay_warning_s;
  bool expired = now >= m->arrival + (int64_t)q->o.lifetime_s;
  /* One retry time for every recipient this outcome defers, from the
   * most tried of them. */
  unsigned most = 0;
  for (size_t i = 0; i < j->n; i++)
    if (m->rcpts[j->idx[i]].attempts + 1 > most)
      most = m->rcpts[j->idx[i]].attempts + 1;
  int64_t retry_at = now + backoff(q, most);
  /* A "too many recipients" answer only counts as such when the next
   * hop took (2xx) or refused for good (5xx) some other recipient of
   * the job: one that says it to every recipient, or beside only
   * deferrals (a greylisting hop with a limit of one), would otherwise
   * be retried at once for ever. */
  bool progress = false;
  for (size_t i = 0; i < j->n; i++)
    if (j->res[i].set && !too_many_rcpts(&j->res[i]) &&
        (j->res[i].code / 100 == 2 || j->res[i].code / 100 == 5))
      progress = true;

  for (size_t i = 0; i < j->n; i++) {
    struct qrcpt *rc = &m->rcpts[j->idx[i]];
    const struct qres *x = j->res[i].set ? &j->res[i] : &dflt;
    struct qstore_rcpt_update *u = &ups[i];
    strs[i] = q_reply_string(x->code, x->enhanced, x->text);
    u->idx = rc->idx;
    u->attempts = rc->attempts + 1;
    u->next_try = 0;
    u->last_code = x->code;
    u->last_reply = strs[i];
    u->remote_mta = x->remote;
    int cls = x->code / 100;
    const char *action = NULL;
    if (progress && j->res[i].set && too_many_rcpts(x)) {
      /* Not an attempt: the same state, tried again at once in a new
       * transaction. */
      u->state = rc->state;
      u->attempts = rc->attempts;
      u->next_try = now;
      rcpt_event(q, TERN_QEV_DEFERRED, m, rc, x, (time_t)now,
                 "too many recipients for one transaction: retried at once");
    } else if (cls == 2) {
      u->state = QS_DELIVERED;
      rcpt_event(q, TERN_QEV_DELIVERED, m, rc, x, 0, "delivered");
      if ((rc->notify & TERN_NOTIFY_SUCCESS) && !x->remote && m->from[0])
        action = "delivered";
    } else if (cls == 4 && !expired) {
      u->state = QS_DEFERRED;
      u->next_try = retry_at;
      rcpt_event(q, TERN_QEV_DEFERRED, m, rc, x, (time_t)u->next_try,
                 j->untried ? "deferred: destination suspended, not tried"
                            : "deferred");
      if (warn && (rc->notify == 0 || (rc->notify & TERN_NOTIFY_DELAY))) {
        action = "delayed";
        any_delayed = true;
      }
    } else {
      u->state = QS_FAILED;
      if (cls == 4) {
        char age[32], d[512];
        fmt_age(now - m->arrival, age, sizeof age);
        snprintf(d, sizeof d, "expired after %s in the queue; last reply: %s",
                 age, strs[i] ? strs[i] : "");
        q_event_ex(q, TERN_QEV_FAILED, m->id, rc->addr,
                   &(struct tern_reply){x->code, x->enhanced, x->text},
                   x->remote, d, true);
      } else {
        rcpt_event(q, TERN_QEV_FAILED, m, rc, x, 0, "failed");
      }
      if (rc->notify != 0 && !(rc->notify & TERN_NOTIFY_FAILURE)) {
        rcpt_event(q, TERN_QEV_NO_BOUNCE, m, rc, x, 0,
                   (rc->notify & TERN_NOTIFY_NEVER) ? "NOTIFY=NEVER"
                                                    : "NOTIFY without FAILURE");
      } else if (!m->from[0] && !q->postmaster) {
        rcpt_event(q, TERN_QEV_NO_BOUNCE, m, rc, x, 0,
                   "null sender and no postmaster: message kept on hold");
      } else if (is_double_bounce(q, m)) {
        rcpt_event(q, TERN_QEV_NO_BOUNCE, m, rc, x, 0,
                   "double bounce failed: message kept on hold");
      } else {
        action = "failed";
        any_failed = true;
      }
    }
    rc->state = (uint8_t)u->state;
    rc->attempts = u->attempts;
    rc->next_try = u->next_try;
    if (action) {
      bs[nb++] = (struct qb_rcpt){rc->addr,    rc->orcpt, action,   x->code,
                                  x->enhanced, x->text,   x->remote};
    }
  }

  bool all_done = true;
  for (size_t i = 0; i < m->nrcpts; i++)
    if (m->rcpts[i].state != QS_DELIVERED && m->rcpts[i].state != QS_FAILED)
      all_done = false;

  struct qstore_update u = {
      .id = m->id, .rcpts = ups, .nrcpts = j->n, .held = -1, .warned = -1};
  if (any_delayed) {
    u.warned = 1;
    m->warned = true;
  }

  struct qstore_msg dsn;
  struct qstore_rcpt dr;
  char *dsn_strs = NULL;
  if (nb) {
    /* A bounce's own failure goes to the postmaster (only failures were
     * collected for it above: its sender is <>). */
    const char *to = m->from[0] ? m->from : q->postmaster;
    enum qstore_copy copy = QSC_HEADERS;
    if (any_failed)
      copy = m->ret == TERN_RET_HDRS || m->size > Q_BOUNCE_FULL_MAX
                 ? QSC_HEADERS
                 : QSC_FULL;
    int rc =
        q_bounce_build(q, m, to, bs, nb, copy, now, &dsn, &dr, &u, &dsn_strs);
    if (rc == 0) {
      memcpy(c->dsn_id, dsn.id, sizeof c->dsn_id);
      c->failed_dsn = any_failed;
      c->delayed_dsn = any_delayed;
      snprintf(c->bounce_detail, sizeof c->bounce_detail, "%s to %s",
               any_failed ? (m->from[0] ? "bounce" : "double bounce")
                          : "success notice",
               m->from[0] ? "sender" : "postmaster");
    } else {
      /* A failure nobody is told of is kept for an operator; a lost
       * delay warning or success notice is only logged. */
      bool keep = any_failed && all_done;
      char d[128];
      snprintf(d, sizeof d, "DSN not composed (%s)%s", tern_err_name(rc),
               keep ? ": message kept on hold" : "");
      q_event(q, TERN_QEV_ERROR, m->id, NULL, NULL, NULL, NULL, 0, d);
      if (keep) {
        u.held = 1;
        m->held = true;
        all_done = false;
      }
    }
  }
  if (all_done) {
    if (keeps_for_postmaster(q, m)) {
      u.held = 1;
      m->held = true;
    } else {
      u.remove = true;
      c->type = TERN_QEV_REMOVED;
      c->detail = "every recipient done";
    }
  }

  if (q_update(q, &u, c) != 0)
    q_event(q, TERN_QEV_ERROR, m->id, NULL, NULL, NULL, NULL, 0,
            "out of memory: results not recorded");
  free(dsn_strs);
  for (size_t i = 0; i < j->n; i++)
    free(strs[i]);
  free(strs), free(ups), free(bs);
  if (u.remove)
    q_msg_forget(q, m);
}
