/*
 * DSN composition for the queue (RFC 3464 via tern/dsn.h): the report's
 * head and tail, and the envelope of the DSN message itself (from <>, to
 * the original sender or the postmaster). The original (or its header)
 * goes between head and tail inside the store, so it is never in memory.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <tern/dsn.h>

#include "internal.h" /* tern__utf8_valid */
#include "queue_int.h"

char *q_reply_string(int code, const char *enhanced, const char *text) {
  if (!text)
    text = "";
  size_t n = 4 + (enhanced ? strlen(enhanced) + 1 : 0) + strlen(text) + 1;
  char *s = malloc(n);
  if (!s)
    return NULL;
  if (enhanced)
    snprintf(s, n, "%03d %s %s", code, enhanced, text);
  else
    snprintf(s, n, "%03d %s", code, text);
  return s;
}

/* RFC 5322 §3.3 in UTC, with our own names: strftime's %a and %b follow
 * the process's locale, which a library must not depend on. */
void q_date(int64_t t, char *buf, size_t cap) {
  static const char *const days[] = {"Sun", "Mon", "Tue", "Wed",
                                     "Thu", "Fri", "Sat"};
  static const char *const months[] = {"Jan", "Feb", "Mar", "Apr",
                                       "May", "Jun", "Jul", "Aug",
                                       "Sep", "Oct", "Nov", "Dec"};
  time_t tt = (time_t)t;
  struct tm tm;
  if (!gmtime_r(&tt, &tm)) {
    snprintf(buf, cap, "Thu, 01 Jan 1970 00:00:00 +0000");
    return;
  }
  snprintf(buf, cap, "%s, %02d %s %04d %02d:%02d:%02d +0000",
           days[tm.tm_wday % 7], tm.tm_mday, months[tm.tm_mon % 12],
           tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* Text from outside (a next hop's reply, the client's HELO) made fit for
 * a report field: control characters become spaces; octets above 127
 * stay only in an SMTPUTF8 report and only as valid UTF-8, else each
 * becomes '?'. A reply like "550 Empf\xe4nger unbekannt" must not cost
 * the sender its bounce (tern_dsn_head refuses such bytes). Line breaks
 * (LF, CRLF) stay: the diagnostic may be a multi-line reply. */
static void clean_text(char *s, bool utf8) {
  size_t n = strlen(s);
  bool keep8 = utf8 && tern__utf8_valid((const unsigned char *)s, n);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '\n' || (c == '\r' && s[i + 1] == '\n'))
      continue;
    if (c < 0x20 || c == 0x7f)
      s[i] = ' ';
    else if (c >= 0x80 && !keep8)
      s[i] = '?';
  }
}

/* The status for the report: the reply's enhanced code, else the class's
 * generic one (RFC 3463 §3.1 "x.0.0"). */
static void status_of(const struct qb_rcpt *r, char *out, size_t cap) {
  if (r->enhanced && r->enhanced[0])
    snprintf(out, cap, "%s", r->enhanced);
  else
    snprintf(out, cap, "%d.0.0", r->code / 100);
}

int q_bounce_build(struct tern_queue *q, const struct qmsg *m, const char *to,
                   const struct qb_rcpt *rs, size_t n, enum qstore_copy copy,
                   int64_t now, struct qstore_msg *dsn, struct qstore_rcpt *dr,
                   struct qstore_update *u, char **strs) {
  *strs = NULL;
  /* RFC 8689 §5: the report on a REQUIRETLS message travels under
   * REQUIRETLS too (below), and gives back no more than the original's
   * header: its body never goes into a report. */
  if (m->requiretls && copy == QSC_FULL)
    copy = QSC_HEADERS;
  memset(dsn, 0, sizeof *dsn);
  memset(dr, 0, sizeof *dr);
  qstore_new_id(q->store, dsn->id);

  char date[48], arrival[48], until[48];
  q_date(now, date, sizeof date);
  q_date(m->arrival, arrival, sizeof arrival);
  q_date(m->arrival + (int64_t)q->o.lifetime_s, until, sizeof until);

  size_t hl = strlen(q->hostname);
  char *from = malloc(hl + sizeof "MAILER-DAEMON@");
  char *msgid = malloc(hl + TERN_QUEUE_ID_MAX + 4);
  char *boundary = malloc(TERN_QUEUE_ID_MAX + 32);
  char *rcvd = NULL;
  struct tern_dsn_rcpt *dr_rep = calloc(n, sizeof *dr_rep);
  char(*status)[16] = calloc(n, sizeof *status);
  char **diag = calloc(n, sizeof *diag);
  char *head = NULL, *tail = NULL;
  size_t head_len = 0, tail_len = 0;
  int rc = TERN_ENOMEM;
  if (!from || !msgid || !boundary || !dr_rep || !status || !diag)
    goto out;
  snprintf(from, hl + sizeof "MAILER-DAEMON@", "MAILER-DAEMON@%s", q->hostname);
  snprintf(msgid, hl + TERN_QUEUE_ID_MAX + 4, "<%s@%s>", dsn->id, q->hostname);
  /* The id makes it unique among ours, the random part unlikely to occur
   * in the original, which RFC 2046 §5.1.1 asks of a boundary. */
  snprintf(boundary, TERN_QUEUE_ID_MAX + 32, "%s/%016llx.tern", dsn->id,
           (unsigned long long)q_rand(q));
  if (m->client) {
    /* envelope.client is "name (addr)" style; a "type; " prefix is
     * added when missing (RFC 3464 §2.2.4). */
    size_t cl = strlen(m->client);
    rcvd = malloc(cl + 6);
    if (!rcvd)
      goto out;
    /* Only a real "dns;" prefix counts: the client's HELO may hold a
     * ';' of its own ("x;y"). */
    if (strncmp(m->client, "dns;", 4) == 0)
      memcpy(rcvd, m->client, cl + 1);
    else
      snprintf(rcvd, cl + 6, "dns; %s", m->client);
    clean_text(rcvd, false);
  }
  bool delayed = false;
  for (size_t i = 0; i < n; i++) {
    status_of(&rs[i], status[i], sizeof status[i]);
    diag[i] = q_reply_string(rs[i].code, rs[i].enhanced, rs[i].text);
    if (!diag[i])
      goto out;
    clean_text(diag[i], m->smtputf8);
    dr_rep[i] = (struct tern_dsn_rcpt){
        .final_rcpt = rs[i].addr,
        .orcpt = rs[i].orcpt,
        .action = rs[i].action,
        .status = status[i],
        .remote_mta = rs[i].remote,
        .diagnostic = diag[i],
        .last_attempt = date,
    };
    if (strcmp(rs[i].action, "delayed") == 0) {
      dr_rep[i].will_retry_until = until;
      delayed = true;
    }
  }
  (void)delayed;

  struct tern_dsn d;
  tern_dsn_init(&d);
  d.reporting_mta = q->hostname;
  d.from = from;
  d.to = to;
  d.date = date;
  d.message_id = msgid;
  d.boundary = boundary;
  d.envid = m->envid;
  d.received_from_mta = rcvd;
  d.arrival_date = arrival;
  d.rcpts = dr_rep;
  d.nrcpts = n;
  d.include = copy == QSC_FULL      ? TERN_RET_FULL
              : copy == QSC_HEADERS ? TERN_RET_HDRS
                                    : TERN_RET_UNSPECIFIED;
  d.utf8 = m->smtputf8;
  /* RFC 6522 / RFC 2045: an 8-bit original keeps its octets in the
   * report, which must say so. */
  d.eight_bit = m->body == TERN_BODY_8BITMIME || m->body == TERN_BODY_BINARYMIME;
  rc = tern_dsn_head(&d, &head, &head_len);
  if (rc == 0)
    rc = tern_dsn_tail(&d, &tail, &tail_len);
  if (rc != 0)
    goto out;

  /* The DSN's envelope: strings in one block the caller frees. */
  const char *dest = q->o.route ? q->o.route(to, q->o.ud) : NULL;
  if (!dest || !dest[0])
    dest = "local";
  size_t tl = strlen(to) + 1, dl = strlen(dest) + 1;
  char *blk = malloc(tl + dl + 1);
  if (!blk) {
    rc = TERN_ENOMEM;
    goto out;
  }
  memcpy(blk, to, tl);
  memcpy(blk + tl, dest, dl);
  blk[tl + dl] = '\0';
  dr->idx = 0;
  dr->addr = blk;
  dr->dest = blk + tl;
  dr->state = QS_QUEUED;
  dsn->arrival = now;
  dsn->from = blk + tl + dl; /* "" */
  dsn->body = m->body;
  dsn->smtputf8 = m->smtputf8;
  dsn->requiretls = m->requiretls;
  dsn->ret = TERN_RET_UNSPECIFIED;
  dsn->is_bounce = true;
  dsn->rcpts = dr;
  dsn->nrcpts = 1;
  u->dsn = dsn;
  u->head = head;
  u->head_len = head_len;
  u->tail = tail;
  u->tail_len = tail_len;
  u->copy = copy;
  *strs = blk;
  head = tail = NULL;
  rc = 0;
out:
  free(head);
  free(tail);
  if (diag)
    for (size_t i = 0; i < n; i++)
      free(diag[i]);
  free(diag);
  free(status);
  free(dr_rep);
  free(rcvd);
  free(boundary);
  free(msgid);
  free(from);
  return rc;
}
