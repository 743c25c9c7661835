/*
 * tern_send(): one message with one call (see net.h), built on the
 * client runtime's public API only: tern_client_new(), _connect(),
 * _send_fd() and the session's _send(), _body(), _body_end().
 *
 * One struct send_op per call holds copies of everything the caller
 * passed. The session's callbacks keep each reply that matters; the
 * client's on_close ends the operation: the result is built, the
 * callback called (once: on_close comes once), everything freed.
 */
#include "internal.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tern/net.h"

#define SEND_MAX_RCPTS 100000

/* A reply kept until the result is built. */
struct kept_reply {
  int code;         /* 0: none */
  bool local;
  char enhanced[16];
  char *text;       /* lines joined by LF; NULL when none */
};

struct send_rcpt {
  struct kept_reply rcpt, data;
};

struct send_op {
  struct tern_client *cl;
  tern_send_cb cb;
  void *ud;
  bool lmtp;
  /* the envelope (copies) */
  char *from;
  struct tern_client_rcpt *trcpt;
  struct tern_client_message msg;
  struct send_rcpt *r;
  struct tern_send_rcpt_result *res; /* made at call time: finishing
                                        needs no allocation */
  size_t *acc;      /* LMTP: the recipient of the k-th accepted one */
  size_t nacc;
  /* the body: a copy in memory, or our duplicate of the caller's fd */
  char *mem;
  size_t mem_len, mem_off;
  int fd;
  bool fd_waiting;  /* tern_client_send_fd() said "not yet" */
  bool pushing, push_again, body_ended;
  /* progress */
  bool started, done;
  struct tern_client_outcome outcome;
  struct kept_reply mail, data, end;
  int error;
  char error_text[512];
  char tls[32];
  bool mx;                  /* an "mx:" URL */
  struct kept_reply conn;   /* mx: what the failed connect means for the
                               sender (tern_client_failure_reply) */
};

/* ---- replies ----------------------------------------------------------------- */

static void keep(struct kept_reply *k, const struct tern_client_reply *r) {
  size_t n = 1;
  free(k->text);
  k->code = r->code;
  k->local = false;
  snprintf(k->enhanced, sizeof k->enhanced, "%s",
           r->enhanced ? r->enhanced : "");
  for (size_t i = 0; i < r->nlines; i++)
    n += r->lines[i].len + 1;
  k->text = malloc(n); /* bounded: the core caps a reply's size */
  if (!k->text)
    return; /* the code is what matters; the text is then "" */
  char *p = k->text;
  for (size_t i = 0; i < r->nlines; i++) {
    if (i)
      *p++ = '\n';
    memcpy(p, r->lines[i].ptr, r->lines[i].len);
    p += r->lines[i].len;
  }
  *p = '\0';
}

static void note_error(struct send_op *op, int err, const char *text) {
  if (op->error)
    return; /* the first cause; what follows from it says less */
  op->error = err;
  snprintf(op->error_text, sizeof op->error_text, "%s", text);
}

/* ---- the session's callbacks -------------------------------------------------- */

static void on_reply(struct tern_client_session *c, enum tern_client_cmd cmd,
                     unsigned index, const struct tern_client_reply *r,
                     void *ud) {
  struct send_op *op = ud;
  (void)c;
  switch (cmd) {
  case TERN_CMD_MAIL:
    keep(&op->mail, r);
    break;
  case TERN_CMD_RCPT:
    if (index >= op->msg.nrcpts || op->r[index].rcpt.code)
      break;
    keep(&op->r[index].rcpt, r);
    if (r->code / 100 == 2)
      op->acc[op->nacc++] = index;
    break;
  case TERN_CMD_DATA:
  case TERN_CMD_BDAT:
    if (r->code != (cmd == TERN_CMD_DATA ? 354 : 250) && !op->data.code)
      keep(&op->data, r);
    break;
  case TERN_CMD_DATA_END:
    /* LMTP: one reply per accepted recipient (RFC 2033 §4.2); the
     * message's is the first failure, else a success. */
    if (op->lmtp && index < op->nacc)
      keep(&op->r[op->acc[index]].data, r);
    if (!op->end.code || (op->end.code < 400 && r->code >= 400))
      keep(&op->end, r);
    break;
  default:
    break;
  }
}

/* Give the session as much of the in-memory body as it takes. body()
 * flushes through the runtime, which may fire on_body_ready and so call
 * this again: the inner call only asks the outer one for one more turn. */
static void push_mem(struct send_op *op, struct tern_client_session *c) {
  if (op->pushing) {
    op->push_again = true;
    return;
  }
  op->pushing = true;
  do {
    op->push_again = false;
    long n = 1;
    while (!op->body_ended && op->mem_off < op->mem_len && n > 0) {
      n = tern_client_session_body(c, op->mem + op->mem_off,
                                   op->mem_len - op->mem_off);
      if (n < 0)
        op->body_ended = true; /* the message failed: on_message_done */
      else
        op->mem_off += (size_t)n;
    }
    /* before the 354 body_end() says TERN_ESTATE: on_body_ready retries */
    if (!op->body_ended && op->mem_off == op->mem_len &&
        tern_client_session_body_end(c) == 0)
      op->body_ended = true;
  } while (op->push_again);
  op->pushing = false;
}

static void start_body(struct send_op *op, struct tern_client_session *c) {
  if (op->fd < 0) {
    push_mem(op, c);
    return;
  }
  int rc = tern_client_send_fd(op->cl, op->fd);
  op->fd_waiting = rc == TERN_ESTATE;
  if (rc < 0 && rc != TERN_ESTATE) {
    note_error(op, rc, "cannot send the message's body");
    tern_client_close(op->cl);
  }
}

static void on_body_ready(struct tern_client_session *c, void *ud) {
  struct send_op *op = ud;
  if (op->fd < 0 || op->fd_waiting)
    start_body(op, c);
}

static void on_ready(struct tern_client_session *c, void *ud) {
  struct send_op *op = ud;
  if (op->started) { /* the message is over: QUIT */
    tern_client_close(op->cl);
    return;
  }
  op->started = true;
  int rc = tern_client_session_send(c, &op->msg);
  if (rc < 0) {
    char t[200];
    snprintf(t, sizeof t, "the server cannot take this message: %s%s",
             tern_strerror(rc),
             op->msg.smtputf8 && rc == TERN_ENOTSUP &&
                     !(tern_client_session_caps(c) & TERN_EXT_SMTPUTF8)
                 ? " (SMTPUTF8, needed for a non-ASCII address)"
                 : "");
    note_error(op, rc, t);
    tern_client_close(op->cl);
    return;
  }
  start_body(op, c);
}

static void on_message_done(struct tern_client_session *c,
                            const struct tern_client_outcome *o, void *ud) {
  struct send_op *op = ud;
  (void)c;
  op->done = true;
  op->outcome = *o;
}

static void on_error(struct tern_client_session *c, int err,
                     const struct tern_client_reply *r, void *ud) {
  struct send_op *op = ud;
  (void)c;
  (void)r; /* the runtime's last error already quotes it */
  note_error(op, err, tern_client_last_error(op->cl));
}

/* ---- the client's callbacks --------------------------------------------------- */

static void on_connect(struct tern_client *cl, int status, void *ud) {
  struct send_op *op = ud;
  if (status < 0) {
    note_error(op, status, tern_client_last_error(cl));
    struct tern_reply fr;
    if (op->mx) {
      (void)tern_client_failure_reply(cl, &fr);
      op->conn.code = fr.code;
      op->conn.local = true;
      snprintf(op->conn.enhanced, sizeof op->conn.enhanced, "%s",
               fr.enhanced ? fr.enhanced : "");
      free(op->conn.text);
      op->conn.text = strdup(fr.text ? fr.text : "");
    }
    return;
  }
  const char *v = tern_client_tls_version(cl);
  snprintf(op->tls, sizeof op->tls, "%s", v ? v : "");
}

static void op_free(struct send_op *op) {
  tern_client_free(op->cl);
  if (op->fd >= 0)
    close(op->fd);
  for (size_t i = 0; op->trcpt && i < op->msg.nrcpts; i++) {
    free((char *)op->trcpt[i].address);
    if (op->r) {
      free(op->r[i].rcpt.text);
      free(op->r[i].data.text);
    }
  }
  free(op->mail.text);
  free(op->conn.text);
  free(op->data.text);
  free(op->end.text);
  free(op->trcpt);
  free(op->r);
  free(op->res);
  free(op->acc);
  free(op->from);
  free(op->mem);
  free(op);
}

/* The reply that decided the message, as the session decides it: a
 * refused MAIL, else no recipient accepted (the first refusal), else a
 * refused DATA or BDAT chunk, else the reply after the data. NULL when
 * the message did not get that far or ended here (local). */
static const struct kept_reply *deciding_reply(const struct send_op *op) {
  if (!op->done || op->outcome.local)
    return NULL;
  if (op->mail.code >= 400)
    return &op->mail;
  if (!op->outcome.accepted) {
    for (size_t i = 0; i < op->msg.nrcpts; i++)
      if (op->r[i].rcpt.code >= 400)
        return &op->r[i].rcpt;
    return NULL;
  }
  if (op->data.code)
    return &op->data;
  return op->end.code ? &op->end : NULL;
}

static void to_public(const struct kept_reply *k, struct tern_send_reply *o) {
  o->code = k->code;
  o->enhanced = k->enhanced[0] ? k->enhanced : NULL; /* NULL = none */
  o->text = k->text ? k->text : "";
  o->local = k->local;
}

static void finish(struct send_op *op) {
  struct tern_send_result res = {0};
  struct kept_reply local = {0};
  const struct kept_reply *final = deciding_reply(op);

  if (op->done && op->outcome.local) {
    if (!op->error)
      note_error(op, TERN_ECLOSED, "the message ended before its reply");
    local.code = op->outcome.code;
    local.local = true;
    local.text = op->error_text;
    final = &local;
  } else if (!op->done) {
    note_error(op, TERN_ECLOSED, "the connection ended before the message "
                                 "was sent");
    if (op->conn.code)
      final = &op->conn; /* mx: the reply for the sender (local) */
  } else {
    op->error = 0; /* the server answered: what failed after is no matter */
    op->error_text[0] = '\0';
  }
  res.error = op->error;
  res.error_text = op->error_text;
  if (final)
    to_public(final, &res.reply);
  else
    to_public(&local, &res.reply);
  for (size_t i = 0; i < op->msg.nrcpts; i++) {
    struct tern_send_rcpt_result *rr = &op->res[i];
    rr->address = op->trcpt[i].address;
    to_public(&op->r[i].rcpt, &rr->rcpt);
    /* in SMTP (and in LMTP when no data reply came) an accepted
     * recipient's message ended with the message's reply */
    if (op->r[i].data.code || op->r[i].rcpt.code / 100 != 2 || !final)
      to_public(&op->r[i].data, &rr->data);
    else
      to_public(final, &rr->data);
    rr->delivered = rr->rcpt.code / 100 == 2 && rr->data.code / 100 == 2;
    res.delivered += rr->delivered;
  }
  res.rcpts = op->res;
  res.nrcpt = op->msg.nrcpts;
  res.tls_version = op->tls[0] ? op->tls : NULL;
  op->cb(&res, op->ud);
}

static void on_close(struct tern_client *cl, void *ud) {
  struct send_op *op = ud;
  (void)cl;
  finish(op);
  op_free(op); /* frees the client too: allowed from its on_close */
}

/* ---- the call ----------------------------------------------------------------- */

/* A copy of `addr` if it is a mailbox RFC 5321 allows (the null path
 * only as the sender); *utf8 set when it needs SMTPUTF8. */
static char *copy_address(const char *addr, bool sender, bool *utf8) {
  char path[TERN_PATH_MAX + 3];
  size_t n = strlen(addr), used = 0;
  struct tern_path p;
  unsigned opt = TERN_PATH_ALLOW_UTF8 |
                 (sender ? TERN_PATH_ALLOW_NULL : TERN_PATH_ALLOW_POSTMASTER);
  if (n > TERN_PATH_MAX)
    return NULL;
  snprintf(path, sizeof path, "<%s>", addr);
  if (tern_path_parse(path, n + 2, opt, &p, &used) != 0 || used != n + 2)
    return NULL;
  if (p.flags & TERN_PATHF_UTF8)
    *utf8 = true;
  return strdup(addr);
}

static int copy_envelope(struct send_op *op, const char *from,
                         const char *const *rcpts, size_t n) {
  bool utf8 = false;
  op->trcpt = calloc(n, sizeof *op->trcpt);
  op->r = calloc(n, sizeof *op->r);
  op->res = calloc(n, sizeof *op->res);
  op->acc = calloc(n, sizeof *op->acc);
  if (!op->trcpt || !op->r || !op->res || !op->acc)
    return TERN_ENOMEM;
  op->msg.nrcpts = n;
  op->msg.rcpts = op->trcpt;
  for (size_t i = 0; i < n; i++) {
    if (!rcpts[i])
      return TERN_EINVAL;
    op->trcpt[i].address = copy_address(rcpts[i], false, &utf8);
    if (!op->trcpt[i].address)
      return TERN_EINVAL; /* (strdup failing is far likelier a bad one) */
  }
  op->from = copy_address(from, true, &utf8);
  if (!op->from)
    return TERN_EINVAL;
  op->msg.from = op->from;
  op->msg.smtputf8 = utf8;
  return 0;
}

static int copy_body(struct send_op *op, const struct tern_send_body *b) {
  if (b->data) {
    op->mem = malloc(b->len ? b->len : 1);
    if (!op->mem)
      return TERN_ENOMEM;
    memcpy(op->mem, b->data, b->len);
    op->mem_len = b->len;
    op->msg.size = b->len;
    return 0;
  }
  if (b->fd < 0)
    return TERN_EINVAL;
  op->fd = fcntl(b->fd, F_DUPFD_CLOEXEC, 3);
  if (op->fd < 0)
    return TERN_EIO;
  struct stat st;
  off_t pos = lseek(op->fd, 0, SEEK_CUR);
  if (pos >= 0 && fstat(op->fd, &st) == 0 && S_ISREG(st.st_mode) &&
      st.st_size > pos)
    op->msg.size = (uint64_t)(st.st_size - pos); /* for SIZE= */
  return 0;
}

static int start_client(struct send_op *op, uv_loop_t *loop, const char *url,
                        const struct tern_send_options *o) {
  struct tern_client_callbacks cb;
  struct tern_client_options co;
  tern_client_callbacks_init(&cb);
  cb.on_reply = on_reply;
  cb.on_ready = on_ready;
  cb.on_message_done = on_message_done;
  cb.on_error = on_error;
  cb.on_body_ready = on_body_ready;
  struct tern_client_config cc;
  tern_client_options_init(&co);
  tern_client_config_init(&cc);
  co.session = &cc;
  co.url = url;
  co.callbacks = &cb;
  co.ud = op;
  if (o->ehlo_name)
    cc.ehlo_name = o->ehlo_name;
  cc.starttls = o->starttls;
  if (op->msg.nrcpts > cc.max_recipients)
    cc.max_recipients = (unsigned)op->msg.nrcpts;
  co.tls_verify = o->tls_verify;
  co.ca_file = o->ca_file;
  co.auth_user = o->auth_user;
  co.auth_password = o->auth_password;
  co.auth_insecure_ok = o->auth_insecure_ok;
  co.connect_timeout_ms = o->timeout_ms;
  co.command_timeout_ms = o->timeout_ms;
  co.data_timeout_ms = o->timeout_ms;
  co.on_connect = on_connect;
  co.on_close = on_close;
  op->mx = !strncmp(url, "mx:", 3);
  co.resolver = o->resolver;
  co.tls_policy = o->tls_policy;
  if (o->requiretls) {
    /* RFC 8689: the message leaves only over verified TLS */
    op->msg.requiretls = true;
    co.require_verified_tls = true;
    co.tls_verify = true;
    if (!op->mx && strncmp(url, "smtps:", 6))
      cc.starttls = TERN_STARTTLS_REQUIRED;
  }
  op->msg.body = o->body;
  op->lmtp = !strncmp(url, "lmtp:", 5);
  int rc = tern_client_new(&op->cl, loop, &co);
  if (rc) {
    op->cl = NULL;
    return rc;
  }
  /* From here every outcome comes through on_close, never inside this
   * call: even a failure to resolve or connect closes the client's
   * handles first. */
  return tern_client_connect(op->cl);
}

int tern_send(uv_loop_t *loop, const char *url, const char *from,
              const char *const *rcpts, size_t nrcpt,
              const struct tern_send_body *body,
              const struct tern_send_options *opts, tern_send_cb cb,
              void *ud) {
  struct tern_send_options o;
  struct send_op *op;
  int rc;

  tern_send_options_init(&o);
  if (!loop || !url || !from || !rcpts || !nrcpt || nrcpt > SEND_MAX_RCPTS ||
      !body || !cb || (opts && tern__copy_sized(&o, sizeof o, opts) != 0))
    return TERN_EINVAL;
  op = calloc(1, sizeof *op);
  if (!op)
    return TERN_ENOMEM;
  op->fd = -1;
  op->cb = cb;
  op->ud = ud;
  rc = copy_envelope(op, from, rcpts, nrcpt);
  if (!rc)
    rc = copy_body(op, body);
  if (!rc)
    rc = start_client(op, loop, url, &o);
  if (rc)
    op_free(op);
  return rc;
}
