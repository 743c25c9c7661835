/*
 * tern serve: one log line for every rejection (a 4xx/5xx reply, or what
 * the runtime refused on its own) and every runtime timeout, with the
 * client, the listener and the command: what fail2ban reads.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "deliver.h"
#include "log.h"
#include "serve.h"

/* The last command, as the core shows it (AUTH payloads redacted: the
 * line is "AUTH <MECH>", continuation lines "*"), for its reply's log. */
void serve_on_command(struct tern_server_session *s, struct tern_str line,
                      void *ud) {
  struct sess *x = tern_server_session_userdata(s);
  (void)ud;
  if (!x)
    return;
  size_t n = line.len < sizeof x->cmd - 1 ? line.len : sizeof x->cmd - 1;
  memcpy(x->cmd, line.ptr, n);
  x->cmd[n] = '\0';
}

/* Every 4xx/5xx reply is a rejection: one line with the client, the
 * listener, the command, the code and the enhanced code. */
static void log_reject(const struct tern_session_info *i, const char *why,
                       const char *cmd, unsigned code, const char *enh,
                       const char *text, size_t text_len) {
  char codes[8];
  snprintf(codes, sizeof codes, "%u", code);
  logf_("session=%s event=reject client=%s port=%u listener=%s why=%s "
        "cmd=\"%s\" code=%s enhanced=%s text=\"%.*s\"",
        i->id, i->peer_addr, i->peer_port, i->listener, why,
        cmd && *cmd ? cmd : "-", code ? codes : "-", enh && *enh ? enh : "-",
        (int)(text_len < 512 ? text_len : 512), text);
}

void serve_on_reply(struct tern_server_session *s, struct tern_str bytes,
                    void *ud) {
  struct sess *x = tern_server_session_userdata(s);
  (void)ud;
  if (!x || bytes.len < 3 || bytes.ptr[0] < '4' || bytes.ptr[0] > '5')
    return;
  /* The last line of a multi-line reply: "NNN[ -]X.Y.Z text\r\n". */
  const char *p = bytes.ptr, *end = bytes.ptr + bytes.len;
  while (end > p && (end[-1] == '\r' || end[-1] == '\n'))
    end--;
  for (const char *q = end; q > p; q--)
    if (q[-1] == '\n') {
      p = q;
      break;
    }
  if (end - p < 3)
    return;
  unsigned code = (unsigned)((p[0] - '0') * 100 + (p[1] - '0') * 10 +
                             (p[2] - '0'));
  p += 3;
  if (p < end)
    p++;
  char enh[16] = "";
  size_t e = 0;
  while (p + e < end && e < sizeof enh - 1 &&
         ((p[e] >= '0' && p[e] <= '9') || p[e] == '.'))
    e++;
  if (e >= 5 && (p + e == end || p[e] == ' ') && p[1] == '.') {
    memcpy(enh, p, e);
    enh[e] = '\0';
    p += e;
    if (p < end)
      p++;
  }
  log_reject(x->info, "reply", x->cmd, code, enh, p, (size_t)(end - p));
}

/* What the runtime did on its own (tern_server_options.on_event). */
void serve_on_net_event(const struct tern_net_event *ev, void *ud) {
  static const char *const names[] = {
      [TERN_NET_CONN_LIMIT] = "conn-limit",
      [TERN_NET_IP_LIMIT] = "ip-limit",
      [TERN_NET_PREGREET] = "pregreet",
      [TERN_NET_TLS_FAILED] = "tls-failed",
      [TERN_NET_TLS_TIMEOUT] = "tls-handshake",
      [TERN_NET_PROXY_FAILED] = "proxy-failed",
      [TERN_NET_PROXY_TIMEOUT] = "proxy",
      [TERN_NET_LINE_TIMEOUT] = "command-line",
      [TERN_NET_WRITE_TIMEOUT] = "write"};
  const struct tern_session_info *i = ev->info;
  const char *name = (unsigned)ev->type < sizeof names / sizeof names[0] &&
                             names[ev->type]
                         ? names[ev->type]
                         : "other";
  (void)ud;
  switch (ev->type) {
  case TERN_NET_CONN_LIMIT:
  case TERN_NET_IP_LIMIT:
  case TERN_NET_PREGREET:
  case TERN_NET_TLS_FAILED:
  case TERN_NET_PROXY_FAILED:
    log_reject(i, name, NULL, ev->code, ev->enhanced, ev->detail,
               strlen(ev->detail));
    return;
  default: {
    logf_("session=%s event=timeout client=%s port=%u listener=%s what=%s "
          "text=\"%s\"",
          i->id, i->peer_addr, i->peer_port, i->listener, name, ev->detail);
    return;
  }
  }
}

/* ---- the queue's events (tern_queue_options.on_event) --------------------- */

/* "250 2.0.0 text" of a reply, for reply="...". */
static void reply_words(const struct tern_reply *r, char *buf, size_t cap) {
  if (!r) {
    snprintf(buf, cap, "-");
    return;
  }
  snprintf(buf, cap, "%d%s%s %s", r->code, r->enhanced ? " " : "",
           r->enhanced ? r->enhanced : "", r->text ? r->text : "");
}

/*
 * One line per event, every one with id=QUEUEID. A recipient's outcome
 * reads like Postfix's delivery lines: rcpt=, relay= (who answered;
 * "local" for maildir and pipe), delay= (seconds since arrival, when
 * known), status=sent|deferred|bounced|expired, reply="..."; a
 * deferral adds retry= (seconds until the next attempt); an outcome
 * without a reply (a job cancelled at shutdown) says why=.
 */
void serve_queue_event(const struct tern_queue_event *ev, void *ud) {
  char reply[600], rcpt[700], delay[32] = "", retry[32] = "";
  (void)ud;
  const char *status = NULL;
  switch (ev->type) {
  case TERN_QEV_DELIVERED:
    status = "sent";
    break;
  case TERN_QEV_DEFERRED:
    status = "deferred";
    break;
  case TERN_QEV_FAILED:
    /* a recipient whose queue lifetime ended was never refused by
     * anyone: say so, as Postfix's status=expired does */
    status = ev->expired ? "expired" : "bounced";
    break;
  default:
    break;
  }
  if (status) {
    time_t now = time(NULL);
    time_t arr = qdeliver_arrival(ev->id);
    const char *relay = ev->remote_mta, *why = NULL;
    /* No reply: the queue is shutting down and cancels the jobs that
     * are running (they are tried again after a restart). The job was
     * ours: name the next hop it was going to and say what happened. */
    const char *remote = NULL;
    time_t jarr = 0;
    if (ev->type == TERN_QEV_DEFERRED && !ev->reply &&
        qdeliver_running(ev->id, &remote, &jarr)) {
      if (!relay && remote[0])
        relay = remote;
      if (arr <= 0)
        arr = jarr;
      why = "delivery cut short by shutdown: delivered again after restart";
    } else if (!ev->reply && ev->detail && ev->detail[0]) {
      why = ev->detail;
    } else if (ev->type == TERN_QEV_DEFERRED && ev->detail &&
               !strncmp(ev->detail, "deferred: ", 10)) {
      /* e.g. the destination is suspended and this recipient was not
       * tried: no one answered it (Postfix: relay=none) */
      why = ev->detail + 10;
      if (!relay && strstr(why, "not tried"))
        relay = "none";
    }
    if (arr > 0)
      snprintf(delay, sizeof delay, "%lld", (long long)(now - arr));
    if (ev->type == TERN_QEV_DEFERRED && ev->retry_at > 0)
      snprintf(retry, sizeof retry, "%lld",
               (long long)(ev->retry_at > now ? ev->retry_at - now : 0));
    reply_words(ev->reply, reply, sizeof reply);
    snprintf(rcpt, sizeof rcpt, "<%s>", ev->rcpt ? ev->rcpt : "");
    struct log_line l;
    log_line_init(&l);
    log_line_kv(&l, "id", ev->id);
    log_line_kv(&l, "event", "delivery");
    log_line_kv(&l, "rcpt", rcpt);
    /* no remote MTA for a remote destination: no host answered */
    const char *dest = qdeliver_dest(ev->id);
    log_line_kv(&l, "relay",
                relay ? relay
                      : (dest && strcmp(dest, "local") ? "none" : "local"));
    if (delay[0])
      log_line_kv(&l, "delay", delay);
    log_line_kv(&l, "status", status);
    log_line_kv(&l, "reply", reply);
    if (retry[0])
      log_line_kv(&l, "retry", retry);
    if (why)
      log_line_kv(&l, "why", why);
    qdeliver_log_fields(ev->id, &l); /* dest=, mx=, tls=... */
    log_line_emit(&l);
    return;
  }
  switch (ev->type) {
  case TERN_QEV_QUEUED:
    log_kv("id", ev->id, "event", "committed", NULL);
    break;
  case TERN_QEV_BOUNCE:
    log_kv("id", ev->id, "event", "bounce", "bounce_id", ev->bounce_id,
           "detail", ev->detail, NULL);
    break;
  case TERN_QEV_DELAYED:
    log_kv("id", ev->id, "event", "delay-warning", "bounce_id",
           ev->bounce_id, "detail", ev->detail, NULL);
    break;
  case TERN_QEV_NO_BOUNCE:
    snprintf(rcpt, sizeof rcpt, "<%s>", ev->rcpt ? ev->rcpt : "");
    log_kv("id", ev->id, "event", "no-bounce", "rcpt", rcpt, "detail",
           ev->detail, NULL);
    break;
  case TERN_QEV_REMOVED:
    log_kv("id", ev->id, "event", "removed", "detail", ev->detail, NULL);
    break;
  case TERN_QEV_DELETED:
    log_kv("id", ev->id, "event", "deleted", "detail", ev->detail, NULL);
    break;
  case TERN_QEV_ERROR:
    /* the disk filled: new mail gets 452 4.3.1 until there is room
     * again (an event about the whole queue: no id) */
    if (ev->detail && !strncmp(ev->detail, "disk full", 9))
      log_kv("event", "queue-full", "detail", ev->detail, NULL);
    else if (!ev->id || !ev->id[0])
      log_kv("event", "queue-error", "detail", ev->detail, NULL);
    else
      log_kv("id", ev->id, "event", "queue-error", "detail", ev->detail,
             NULL);
    break;
  case TERN_QEV_RESUMED: /* the disk has room again: mail is taken */
    log_kv("event", "queue-resumed", "detail", ev->detail, NULL);
    break;
  default:
    break;
  }
}
