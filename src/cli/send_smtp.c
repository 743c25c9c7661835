/*
 * tern send — the SMTP side: one session of the client runtime that
 * sends the spooled message, the -v trace of its dialogue, and the exit
 * status with its lines once the session has ended (send.h).
 */
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sysexits.h>
#include <unistd.h>

#include "send.h"

#include <tern/resolve.h>

static int class_exit(int code, int ex5) {
  return code >= 400 && code < 500 ? EX_TEMPFAIL : ex5;
}

static bool non_ascii(const char *a) {
  for (; *a; a++)
    if ((unsigned char)*a >= 0x80)
      return true;
  return false;
}

/* ---- -v: the dialogue, both directions ----------------------------------- */

static void trace_out(struct send *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void trace_out(struct send *s, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "%s: >>> ", s->o.prog);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

/*
 * Show the command queued in the session's output, exactly as it will
 * be written: called right after tern_client_session_send(), inside a
 * callback, so the runtime has not written it yet. With PIPELINING that
 * is MAIL, every RCPT and DATA (RFC 2920 §3.1); else MAIL alone.
 */
static void trace_queued(struct send *s, struct tern_client_session *c) {
  const char *d;
  size_t n = tern_client_session_output(c, &d);
  char line[1100];
  while (n > 0) {
    const char *nl = memchr(d, '\n', n);
    size_t len = nl ? (size_t)(nl - d) + 1 : n;
    size_t text = len;
    while (text > 0 && (d[text - 1] == '\n' || d[text - 1] == '\r'))
      text--;
    cli_escape(d, text, line, sizeof line);
    trace_out(s, "%s", line);
    if (!strncmp(d, "MAIL ", 5))
      s->tr_mail = true;
    else if (!strncmp(d, "RCPT ", 5))
      s->tr_rcpt++;
    else if (text == 4 && !strncmp(d, "DATA", 4))
      s->tr_data = true;
    d += len;
    n -= len;
  }
}

/*
 * The command a reply answers, when the trace has not shown it yet: the
 * runtime writes the session's commands itself, so those the session
 * sends on its own (EHLO, STARTTLS, AUTH, RCPT and DATA without
 * PIPELINING, QUIT) are shown here, rebuilt from what tern send asked
 * for. AUTH lines are never shown: they carry credentials.
 */
static void trace_command(struct send *s, enum tern_client_cmd cmd,
                          unsigned index, const struct tern_client_reply *r) {
  const char *helo = s->o.helo;
  switch (cmd) {
  case TERN_CMD_EHLO:
    trace_out(s, "%s %s", s->lmtp ? "LHLO" : s->tr_helo ? "HELO" : "EHLO",
              helo);
    /* RFC 5321 §3.2: the session falls back to HELO after EHLO's 5xx */
    s->tr_helo = r->code >= 500 && !s->lmtp && !s->tr_helo;
    break;
  case TERN_CMD_STARTTLS:
    trace_out(s, "STARTTLS");
    break;
  case TERN_CMD_AUTH:
    trace_out(s, s->tr_auth++ ? "(AUTH response, not shown)"
                              : "AUTH (mechanism and credentials not shown)");
    break;
  case TERN_CMD_MAIL:
    if (!s->tr_mail)
      trace_out(s, "MAIL FROM:<%s>", s->from);
    s->tr_mail = true;
    break;
  case TERN_CMD_RCPT:
    if (index >= s->tr_rcpt && index < s->msg.nrcpts) {
      trace_out(s, "RCPT TO:<%s>", s->trcpt[index].address);
      s->tr_rcpt = index + 1;
    }
    break;
  case TERN_CMD_DATA:
    if (!s->tr_data)
      trace_out(s, "DATA");
    s->tr_data = true;
    break;
  case TERN_CMD_BDAT:
    trace_out(s, "BDAT (a chunk of the message)");
    break;
  case TERN_CMD_DATA_END:
    if (index == 0) {
      trace_out(s, "(the message, %llu octets before dot-stuffing)",
                (unsigned long long)s->size);
      trace_out(s, ".");
    }
    break;
  case TERN_CMD_RSET:
    trace_out(s, "RSET");
    break;
  case TERN_CMD_NOOP:
    trace_out(s, "NOOP");
    break;
  case TERN_CMD_QUIT:
    trace_out(s, "QUIT");
    break;
  default:
    break;
  }
}

static void print_reply_trace(struct send *s, enum tern_client_cmd cmd,
                              unsigned index,
                              const struct tern_client_reply *r) {
  char line[1100];
  for (size_t i = 0; i < r->nlines; i++) {
    cli_escape(r->lines[i].ptr, r->lines[i].len, line, sizeof line);
    if (cmd == TERN_CMD_RCPT && index < s->msg.nrcpts)
      fprintf(stderr, "%s: <<< [RCPT %s] %d%c%s\n", s->o.prog,
              s->trcpt[index].address, r->code,
              i + 1 < r->nlines ? '-' : ' ', line);
    else
      fprintf(stderr, "%s: <<< [%s] %d%c%s\n", s->o.prog, cli_cmd_name(cmd),
              r->code, i + 1 < r->nlines ? '-' : ' ', line);
  }
}

/* Keep the first failing MAIL/DATA/BDAT/end-of-data reply: in a
 * pipelined group the later ones only follow from it. */
static void record_failure(struct send *s, enum tern_client_cmd cmd,
                           const struct tern_client_reply *r) {
  if (s->cmd_code)
    return;
  s->cmd_failed = cmd;
  s->cmd_code = r->code;
  cli_format_reply(r, s->cmd_reply, sizeof s->cmd_reply);
}

static void on_reply(struct tern_client_session *c, enum tern_client_cmd cmd,
                     unsigned index, const struct tern_client_reply *r,
                     void *ud) {
  struct send *s = ud;
  (void)c;
  if (s->o.verbose) {
    trace_command(s, cmd, index, r);
    print_reply_trace(s, cmd, index, r);
  }
  switch (cmd) {
  case TERN_CMD_RCPT:
    if (s->cmd_code && s->cmd_failed == TERN_CMD_MAIL)
      break; /* pipelined after a refused MAIL: a consequence */
    if (r->code == 421)
      break; /* RFC 5321 §4.2.3: the service closes, not this recipient */
    if (index < s->msg.nrcpts) {
      if (r->code >= 400) {
        char buf[600];
        cli_format_reply(r, buf, sizeof buf);
        s->rcode[index] = r->code;
        free(s->rtext[index]);
        s->rtext[index] = send_xstrndup(buf, strlen(buf));
      } else if (r->code >= 200 && r->code < 300) {
        s->acc_map[s->nacc++] = index;
      }
    }
    break;
  case TERN_CMD_DATA_END:
    if (r->code < 400)
      break;
    /* LMTP: one reply per accepted recipient (RFC 2033 §4.2) */
    if (s->lmtp && index < s->nacc) {
      size_t k = s->acc_map[index];
      if (!s->rcode[k]) {
        char buf[600];
        cli_format_reply(r, buf, sizeof buf);
        s->rcode[k] = r->code;
        s->rtext[k] = send_xstrndup(buf, strlen(buf));
      }
    }
    record_failure(s, cmd, r);
    break;
  case TERN_CMD_MAIL:
  case TERN_CMD_DATA:
  case TERN_CMD_BDAT:
    if (r->code >= 400)
      record_failure(s, cmd, r);
    if (cmd == TERN_CMD_DATA && r->code == 354 && s->fd_pending) {
      if (tern_client_send_fd(s->cl, fileno(s->spool)) == 0)
        s->fd_pending = false;
    }
    break;
  default:
    break;
  }
}

static void start_message(struct send *s, struct tern_client_session *c) {
  s->started = true;
  int rc = tern_client_session_send(c, &s->msg);
  if (s->done) /* decided locally inside send(): SIZE over the limit */
    return;
  if (rc == 0 && s->o.verbose)
    trace_queued(s, c);
  if (rc == TERN_ENOTSUP) {
    if (s->msg.smtputf8 &&
        !(tern_client_session_caps(c) & TERN_EXT_SMTPUTF8))
      send_set_fail(s, EX_UNAVAILABLE,
                    "%s: the server does not offer SMTPUTF8, needed for a "
                    "non-ASCII address",
                    s->o.prog);
    else
      send_set_fail(s, EX_UNAVAILABLE,
                    "%s: the server cannot take the "
                    "message: %s",
                    s->o.prog, tern_strerror(rc));
    tern_client_close(s->cl);
    return;
  }
  if (rc < 0) {
    send_set_fail(s, rc == TERN_EINVAL ? EX_DATAERR : EX_SOFTWARE,
                  "%s: cannot send the message: %s", s->o.prog,
                  tern_strerror(rc));
    tern_client_close(s->cl);
    return;
  }
  rc = tern_client_send_fd(s->cl, fileno(s->spool));
  if (rc == TERN_ESTATE)
    s->fd_pending = true; /* retried when the 354 arrives */
  else if (rc < 0) {
    send_set_fail(s, EX_SOFTWARE, "%s: cannot send the body: %s", s->o.prog,
                  tern_strerror(rc));
    tern_client_close(s->cl);
  }
}

static void on_ready(struct tern_client_session *c, void *ud) {
  struct send *s = ud;
  if (!s->started)
    start_message(s, c);
  else if (s->done)
    tern_client_close(s->cl);
}

static void on_message_done(struct tern_client_session *c,
                            const struct tern_client_outcome *o, void *ud) {
  struct send *s = ud;
  (void)c;
  s->done = true;
  s->fd_pending = false;
  s->outcome = *o;
}

static void on_error(struct tern_client_session *c, int err,
                     const struct tern_client_reply *r, void *ud) {
  struct send *s = ud;
  char buf[600] = "";
  if (r)
    cli_format_reply(r, buf, sizeof buf);
  if (err == TERN_ECLOSED)
    s->session_ended = true;
  switch (err) {
  case TERN_ETLS:
    if (r)
      send_set_fail(s, class_exit(r->code, EX_UNAVAILABLE),
                    "%s: STARTTLS refused by %s: %s", s->o.prog, s->endpoint,
                    buf);
    else if (!(tern_client_session_caps(c) & TERN_EXT_STARTTLS) &&
             s->creds_need_tls && s->opportunistic)
      send_set_fail(s, EX_UNAVAILABLE,
                    "%s: not sending credentials to %s without TLS: the server "
                    "does not offer STARTTLS (--insecure-auth allows it)",
                    s->o.prog, s->endpoint);
    else if (!(tern_client_session_caps(c) & TERN_EXT_STARTTLS))
      send_set_fail(s, EX_CONFIG, "%s: server does not offer STARTTLS",
                    s->o.prog);
    else
      send_set_fail(s, EX_PROTOCOL, "%s: STARTTLS failed with %s: %s",
                    s->o.prog, s->endpoint, tern_client_last_error(s->cl));
    break;
  case TERN_EAUTH:
    if (r)
      send_set_fail(s, class_exit(r->code, EX_NOPERM),
                    "%s: authentication failed: %s", s->o.prog, buf);
    else
      send_set_fail(s, EX_NOPERM, "%s: authentication not possible: %s",
                    s->o.prog, tern_client_last_error(s->cl));
    break;
  case TERN_ECLOSED:
    /* Without a reply the session only knows the connection ended; the
     * runtime knows why (a timeout, a reset, the server hanging up) and
     * says it in tern_client_last_error(). */
    if (r)
      send_set_fail(s, class_exit(r->code, EX_UNAVAILABLE),
                    "%s: %s closed the session: %s", s->o.prog, s->endpoint,
                    buf);
    else
      send_set_fail(s, EX_TEMPFAIL, "%s: %s", s->o.prog,
                    tern_client_last_error(s->cl));
    break;
  default:
    if (r && r->code >= 400)
      send_set_fail(s, class_exit(r->code, EX_UNAVAILABLE),
                    "%s: %s refused the session: %s", s->o.prog, s->endpoint,
                    buf);
    else if (r)
      send_set_fail(s, EX_PROTOCOL, "%s: unexpected reply from %s: %s",
                    s->o.prog, s->endpoint, buf);
    else
      send_set_fail(s, err == TERN_EPROTO ? EX_PROTOCOL : EX_TEMPFAIL,
                    "%s: %s: %s", s->o.prog, s->endpoint,
                    tern_client_last_error(s->cl));
    break;
  }
}

static bool on_verify(struct tern_client *cl, bool ok, const char *why,
                      void *ud) {
  struct send *s = ud;
  (void)cl;
  if (ok)
    return true;
  /* Nothing has been sent over TLS yet (the runtime asks before the
   * second EHLO): refusing here means the credentials never leave. Where
   * verification is required anyway (--starttls, smtps://) its failure
   * is reported as such below. */
  if (s->creds_need_tls && s->opportunistic && !s->o.no_verify) {
    s->creds_withheld = true;
    snprintf(s->verify_why, sizeof s->verify_why, "%s",
             why && *why ? why : "unknown reason");
    return false;
  }
  if (s->opportunistic || s->o.no_verify) {
    if (s->o.verbose)
      fprintf(stderr, "%s: certificate not verified (%s): going on "
              "(%s)\n", s->o.prog, why ? why : "?",
              s->o.no_verify ? "--no-verify" : "opportunistic TLS");
    return true;
  }
  s->verify_failed = true;
  snprintf(s->verify_why, sizeof s->verify_why, "%s",
           why && *why ? why : "unknown reason");
  return false;
}

static bool contains_ci(const char *h, const char *n) {
  size_t nl = strlen(n);
  for (; *h; h++)
    if (!strncasecmp(h, n, nl))
      return true;
  return false;
}

/* --mx: where the connection went and how it is protected (-v). */
static void print_conn_info(struct send *s) {
  const struct tern_client_conn_info *ci = tern_client_conn_info(s->cl);
  if (!ci || !ci->host)
    return;
  fprintf(stderr,
          "%s: connected to mx %s [%s]:%u (address %u tried), tls=%s "
          "cipher=%s verified=%s policy=%s%s%s\n",
          s->o.prog, ci->host, ci->addr ? ci->addr : "?", ci->port,
          ci->hosts_tried, ci->tls_version ? ci->tls_version : "none",
          ci->tls_cipher ? ci->tls_cipher : "none",
          ci->verified ? ci->verified : "no", ci->policy ? ci->policy : "-",
          ci->policy_failure ? " policy_failure=" : "",
          ci->policy_failure ? ci->policy_failure : "");
}

/* --mx: the connect failed; the reply the client made says how. */
static void mx_failed(struct send *s) {
  struct tern_reply r;
  bool perm = tern_client_failure_reply(s->cl, &r);
  int ex = EX_TEMPFAIL;
  if (perm)
    ex = r.enhanced && !strncmp(r.enhanced, "5.1.", 4) ? EX_NOHOST
                                                       : EX_UNAVAILABLE;
  send_set_fail(s, ex, "%s: %s: %d %s %s", s->o.prog, s->o.mx, r.code,
                r.enhanced ? r.enhanced : "", r.text ? r.text : "");
}

static void on_connect(struct tern_client *cl, int status, void *ud) {
  struct send *s = ud;
  const char *e = tern_client_last_error(cl);
  if (status == 0 && s->o.mx) {
    if (s->o.verbose)
      print_conn_info(s);
    return;
  }
  if (status < 0 && s->o.mx) {
    mx_failed(s);
    return;
  }
  if (status == 0) {
    if (s->o.verbose) {
      const char *v = tern_client_tls_version(cl);
      fprintf(stderr, "%s: connected to %s%s%s\n", s->o.prog, s->endpoint,
              v ? ", " : "", v ? v : "");
    }
    return;
  }
  switch (status) {
  case TERN_ERESOLVE:
    send_set_fail(s, EX_NOHOST, "%s: cannot resolve the host name of %s: %s",
                  s->o.prog, s->endpoint, e);
    break;
  case TERN_ECONNECT:
    if (contains_ci(e, "refused"))
      send_set_fail(s, EX_TEMPFAIL, "%s: connection refused by %s", s->o.prog,
                    s->endpoint);
    else
      send_set_fail(s, EX_TEMPFAIL, "%s: cannot connect to %s: %s", s->o.prog,
                    s->endpoint, e);
    break;
  case TERN_ETIMEDOUT:
    send_set_fail(s, EX_TEMPFAIL, "%s: timed out talking to %s: %s", s->o.prog,
                  s->endpoint, e);
    break;
  case TERN_ETLS:
    if (s->creds_withheld)
      send_set_fail(
          s, EX_UNAVAILABLE,
          "%s: not sending credentials to %s: its TLS "
          "certificate is not verified (%s); trust its CA with "
          "--ca-file, or allow it with --no-verify or --insecure-auth",
          s->o.prog, s->endpoint, s->verify_why);
    else if (s->verify_failed)
      send_set_fail(s, EX_CONFIG, "%s: TLS certificate verification failed: %s",
                    s->o.prog, s->verify_why);
    else
      send_set_fail(s, EX_PROTOCOL, "%s: TLS failure with %s: %s", s->o.prog,
                    s->endpoint, e);
    break;
  case TERN_EAUTH:
    send_set_fail(s, EX_NOPERM, "%s: authentication failed: %s", s->o.prog, e);
    break;
  case TERN_EPROTO:
    send_set_fail(s, EX_PROTOCOL, "%s: protocol error from %s: %s", s->o.prog,
                  s->endpoint, e);
    break;
  default:
    send_set_fail(s, EX_TEMPFAIL, "%s: %s: %s", s->o.prog, s->endpoint, e);
    break;
  }
}

static void on_close(struct tern_client *cl, void *ud) {
  struct send *s = ud;
  (void)cl;
  s->closed = true;
}

/* The exit status and its lines, once the loop has ended. */
static int conclude(struct send *s) {
  size_t refused = 0;
  bool temp = false;
  for (size_t i = 0; i < s->msg.nrcpts; i++)
    if (s->rcode[i]) {
      refused++;
      if (s->rcode[i] < 500)
        temp = true;
    }

  if (!s->done) {
    if (!s->fail_exit)
      send_set_fail(s, EX_SOFTWARE,
                    "%s: the connection ended without an "
                    "outcome: %s",
                    s->o.prog, s->cl ? tern_client_last_error(s->cl) : "?");
    fprintf(stderr, "%s\n", s->fail_msg);
    return s->fail_exit;
  }

  const struct tern_client_outcome *o = &s->outcome;
  bool mail_failed = s->cmd_code && s->cmd_failed == TERN_CMD_MAIL;
  bool delivered = o->code >= 200 && o->code < 300;
  bool rcpt_level =
      refused > 0 &&
      (delivered || o->delivered > 0 ||
       (o->accepted == 0 && !mail_failed) ||
       (s->lmtp && refused == s->msg.nrcpts));
  if (refused > 0 && !mail_failed)
    for (size_t i = 0; i < s->msg.nrcpts; i++)
      if (s->rcode[i])
        fprintf(stderr, "%s: <%s> refused: %s\n", s->o.prog,
                s->trcpt[i].address, s->rtext[i]);
  /* The session ended before anyone got the message (a 421, the server
   * hanging up, a timeout): that is what failed, for every recipient. */
  if (s->session_ended && s->fail_exit && !delivered && o->delivered == 0) {
    fprintf(stderr, "%s\n", s->fail_msg);
    return s->fail_exit;
  }
  if (rcpt_level)
    return temp ? EX_TEMPFAIL : EX_NOUSER;
  if (delivered)
    return 0;

  /* the message as a whole failed */
  if (s->fail_exit && (o->local || !s->cmd_reply[0])) {
    fprintf(stderr, "%s\n", s->fail_msg);
    return s->fail_exit;
  }
  if (o->local) {
    if (o->code == 552)
      fprintf(stderr, "%s: message too large for %s (%llu bytes over its "
              "SIZE limit %llu)\n", s->o.prog, s->endpoint,
              (unsigned long long)s->size,
              (unsigned long long)(s->cl ? tern_client_session_max_size(
                                               tern_client_get_session(s->cl))
                                         : 0));
    else
      fprintf(stderr, "%s: message not sent (local %d): %s\n", s->o.prog,
              o->code, s->cl ? tern_client_last_error(s->cl) : "?");
    return class_exit(o->code, EX_UNAVAILABLE);
  }
  if (s->cmd_code && s->cmd_failed == TERN_CMD_MAIL)
    fprintf(stderr, "%s: sender <%s> refused: %s\n", s->o.prog, s->from,
            s->cmd_reply);
  else
    fprintf(stderr, "%s: message refused by %s: %s\n", s->o.prog,
            s->endpoint, s->cmd_reply[0] ? s->cmd_reply : "(no reply)");
  return class_exit(s->cmd_code ? s->cmd_code : o->code, EX_UNAVAILABLE);
}

/* Where to connect (s->url, s->endpoint) and how: the client's options
 * and callbacks. `urlbuf` and `cb` must outlive the client. */
static void client_options(struct send *s, char *urlbuf, size_t cap,
                           struct tern_client_options *co,
                           struct tern_client_config *cc,
                           struct tern_client_callbacks *cb) {
  s->url = cli_url_starttls(s->o.server, s->o.starttls, urlbuf, cap);
  s->opportunistic = cli_url_opportunistic(s->url) && !s->o.starttls;
  cli_url_endpoint(s->url, s->endpoint, sizeof s->endpoint);
  s->lmtp = !strncmp(s->url, "lmtp:", 5);

  tern_client_callbacks_init(cb);
  cb->on_reply = on_reply;
  cb->on_ready = on_ready;
  cb->on_message_done = on_message_done;
  cb->on_error = on_error;

  tern_client_options_init(co);
  tern_client_config_init(cc);
  co->session = cc;
  co->url = s->url;
  co->callbacks = cb;
  co->ud = s;
  cc->ehlo_name = s->o.helo; /* send_deliver set the default */
  if (s->o.starttls)
    cc->starttls = TERN_STARTTLS_REQUIRED;
  /* Credentials (item 10 of issue 8) go only over TLS whose certificate
   * verified, unless the user consented explicitly: --insecure-auth (any
   * channel, plaintext too) or --no-verify (TLS without verification).
   * A unix socket is a local channel, as for tern serve. So --user
   * makes STARTTLS required and on_verify refuses an unverified
   * certificate before anything is sent over it. The certificate is
   * always checked (tls_verify); on_verify decides whether to go on. */
  bool unix_sock = strstr(s->url, ":///") != NULL;
  s->creds_need_tls = s->o.user && !s->o.insecure_auth && !unix_sock;
  if (s->creds_need_tls)
    cc->starttls = TERN_STARTTLS_REQUIRED;
  co->tls_verify = true;
  co->verify = on_verify;
  co->ca_file = s->o.ca_file;
  co->auth_user = s->o.user;
  co->auth_password = s->password;
  co->auth_insecure_ok = s->o.insecure_auth || unix_sock;
  if (s->o.user)
    cc->auth_required = true;
  co->connect_timeout_ms = s->o.timeout_ms;
  co->command_timeout_ms = s->o.timeout_ms;
  co->data_timeout_ms = s->o.timeout_ms;
  co->on_connect = on_connect;
  co->on_close = on_close;
  co->bind_addr = s->o.bind && !strchr(s->o.bind, ':') ? s->o.bind : NULL;
  co->bind_addr6 = s->o.bind && strchr(s->o.bind, ':') ? s->o.bind : NULL;
  if (s->o.mx) {
    static const char *const names[] = {"auto", "none", "may", "encrypt",
                                        "verify", "dane"};
    for (size_t i = 0; s->o.tls_policy && i < 6; i++)
      if (!strcmp(s->o.tls_policy, names[i]))
        co->tls_policy = (enum tern_tls_policy)i; /* net.h's order */
    co->mx_port = s->o.mx_port;
    co->resolver = s->res;
    co->require_verified_tls = s->o.requiretls;
  } else if (s->o.requiretls) {
    /* RFC 8689: STARTTLS and a verified certificate (on_verify refuses
     * an unverified one unless opportunistic or --no-verify) */
    cc->starttls = TERN_STARTTLS_REQUIRED;
    s->opportunistic = false;
  }
  if (s->msg.nrcpts > cc->max_recipients)
    cc->max_recipients = (unsigned)s->msg.nrcpts;
}

/* The message as the session sends it: envelope, body type, DSN. */
static void message_envelope(struct send *s) {
  s->msg.from = s->from;
  s->msg.rcpts = s->trcpt;
  s->msg.size = s->size;
  s->msg.body = s->o.body ? s->o.body
                          : s->eightbit ? TERN_BODY_8BITMIME
                                        : TERN_BODY_UNSPECIFIED;
  s->msg.ret = s->o.ret;
  s->msg.envid = s->o.envid;
  s->msg.requiretls = s->o.requiretls;
  s->msg.smtputf8 = non_ascii(s->from);
  for (size_t i = 0; i < s->msg.nrcpts; i++)
    if (non_ascii(s->trcpt[i].address))
      s->msg.smtputf8 = true;
}

/* The event loop and the client on it. Returns 0, or an exit status
 * (after printing why) with the loop closed again. */
static int client_create(struct send *s,
                         const struct tern_client_options *co) {
  int rc = tern_client_new(&s->cl, &s->loop, co);
  if (rc == 0)
    return 0;
  if (rc == TERN_EINVAL && s->o.mx)
    fprintf(stderr, "%s: --mx '%s' is not a domain, or --bind '%s' not an "
            "address\n", s->o.prog, s->o.mx, s->o.bind ? s->o.bind : "");
  else if (rc == TERN_EINVAL && s->o.bind)
    fprintf(stderr, "%s: invalid server URL '%s' or --bind address '%s'\n",
            s->o.prog, s->o.server, s->o.bind);
  else if (rc == TERN_EINVAL)
    fprintf(stderr, "%s: invalid server URL '%s' (smtp://HOST[:PORT], "
            "smtp+starttls://, smtps://, lmtp://, lmtp:///PATH)\n",
            s->o.prog, s->o.server);
  else if (rc == TERN_ETLS)
    fprintf(stderr, "%s: cannot load the CA certificates%s%s\n", s->o.prog,
            s->o.ca_file ? " from " : "", s->o.ca_file ? s->o.ca_file : "");
  else
    fprintf(stderr, "%s: cannot create the client: %s\n", s->o.prog,
            tern_strerror(rc));
  return rc == TERN_EINVAL ? EX_USAGE : rc == TERN_ETLS ? EX_CONFIG : EX_OSERR;
}

/* See send.h. */
/* --mx with --resolver or --trust-anchor: the resolver the client uses
 * (without them the client makes one from the system's configuration).
 * Returns 0 or an exit status (after printing why). */
static int resolver_create(struct send *s) {
  /* Validation with no trust anchor validates nothing: DANE would be off
   * without a word (tern serve refuses to start so; here a warning) */
  if (s->o.mx && !s->o.no_dnssec && !s->o.trust_anchor &&
      access("/usr/share/dns/root.key", R_OK) != 0 &&
      access("/var/lib/unbound/root.key", R_OK) != 0)
    fprintf(stderr,
            "%s: warning: no DNSSEC trust anchor (install dns-root-data, "
            "or give --trust-anchor FILE): DANE cannot apply\n",
            s->o.prog);
  if (!s->o.mx || (!s->o.resolver && !s->o.trust_anchor && !s->o.no_dnssec))
    return 0;
  struct tern_resolver_options ro;
  tern_resolver_options_init(&ro);
  ro.forward = s->o.resolver;
  ro.trust_anchor_file = s->o.trust_anchor;
  ro.dnssec = !s->o.no_dnssec;
  int rc = tern_resolver_new(&s->res, &s->loop, &ro);
  if (rc == 0)
    return 0;
  s->res = NULL;
  if (rc == TERN_EINVAL)
    fprintf(stderr, "%s: bad --resolver '%s' (ADDRESS[:PORT], several "
            "separated by spaces)\n", s->o.prog, s->o.resolver);
  else
    fprintf(stderr, "%s: cannot make the resolver: %s\n", s->o.prog,
            tern_strerror(rc));
  return rc == TERN_EINVAL ? EX_USAGE : rc == TERN_EIO ? EX_NOINPUT : EX_OSERR;
}

/*
 * The EHLO name when --helo is not given: this host's fully qualified
 * name -- gethostname(), then its canonical name (getaddrinfo
 * AI_CANONNAME: /etc/hosts or DNS, as Postfix's myhostname), else the
 * bare host name. Hardened MX hosts refuse "EHLO localhost" (504 5.5.2),
 * so with --mx a host that calls itself localhost is an error: the user
 * must say --helo. Returns 0, or EX_USAGE (printed). The name is kept in
 * a static buffer (one run a process).
 */
static int default_helo(struct send *s) {
  static char name[256];
  if (s->o.helo)
    return 0;
  char host[256];
  if (gethostname(host, sizeof host - 1) != 0)
    host[0] = '\0';
  host[sizeof host - 1] = '\0';
  snprintf(name, sizeof name, "%s", host[0] ? host : "localhost");
  struct addrinfo hints, *ai = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_CANONNAME;
  if (host[0] && getaddrinfo(host, NULL, &hints, &ai) == 0 && ai) {
    const char *cn = ai->ai_canonname;
    /* a canonical name with a dot is the FQDN; else keep the host name */
    if (cn && strchr(cn, '.') && strlen(cn) < sizeof name &&
        strspn(cn, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                   "0123456789.-") == strlen(cn))
      snprintf(name, sizeof name, "%s", cn);
  }
  if (ai)
    freeaddrinfo(ai);
  if (s->o.mx && (strcasecmp(name, "localhost") == 0 ||
                  strncasecmp(name, "localhost.", 10) == 0)) {
    fprintf(stderr, "%s: --mx: this host calls itself '%s', which mail "
            "hosts refuse in EHLO: give --helo NAME (this host's name in "
            "DNS)\n", s->o.prog, name);
    return EX_USAGE;
  }
  s->o.helo = name;
  return 0;
}

int send_deliver(struct send *s) {
  char urlbuf[1024];
  struct tern_client_options co;
  struct tern_client_config cc;
  struct tern_client_callbacks cb;

  int hex = default_helo(s);
  if (hex != 0)
    return hex;
  if (uv_loop_init(&s->loop) != 0) {
    fprintf(stderr, "%s: cannot create an event loop\n", s->o.prog);
    return EX_OSERR;
  }
  int rex = resolver_create(s);
  if (rex != 0) {
    uv_loop_close(&s->loop);
    return rex;
  }
  client_options(s, urlbuf, sizeof urlbuf, &co, &cc, &cb);
  message_envelope(s);
  if (lseek(fileno(s->spool), 0, SEEK_SET) != 0) {
    fprintf(stderr, "%s: cannot rewind the spool file: %s\n", s->o.prog,
            strerror(errno));
    return EX_TEMPFAIL;
  }
  int ex = client_create(s, &co);
  int rc = ex ? 0 : tern_client_connect(s->cl);
  if (rc < 0) {
    fprintf(stderr, "%s: cannot connect: %s\n", s->o.prog,
            tern_strerror(rc));
    tern_client_free(s->cl);
    s->cl = NULL;
    ex = EX_SOFTWARE;
  }
  if (ex != 0) {
    if (s->res)
      tern_resolver_free(s->res);
    s->res = NULL;
    uv_run(&s->loop, UV_RUN_DEFAULT); /* the resolver's handles close */
    uv_loop_close(&s->loop);
    return ex;
  }
  uv_run(&s->loop, UV_RUN_DEFAULT);
  ex = conclude(s);
  if (s->closed) {
    tern_client_free(s->cl);
    s->cl = NULL;
  }
  if (s->res) {
    tern_resolver_free(s->res);
    s->res = NULL;
  }
  /* Freeing closes handles: the client's own resolver (--mx without
   * --resolver, --trust-anchor or --no-dnssec) and ours. Their close
   * callbacks run on the loop; without this run the loop still held
   * them ("event loop not empty at exit" after a DNS failure). */
  uv_run(&s->loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&s->loop) != 0 && s->o.verbose)
    fprintf(stderr, "%s: event loop not empty at exit\n", s->o.prog);
  return ex;
}
