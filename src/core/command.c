/*
 * The verbs. Each has one row in the table at the end of this file
 * (Postfix's smtpd command table, OpenSMTPD's check-then-proceed): its
 * flags, which the dispatcher enforces for every verb alike; its check
 * (state and syntax, then the application's decision callback); and its
 * apply, which queues the verdict's reply and changes the state. A verb
 * is owned here end to end; what it needs from the session is the small
 * interface in session.h. Replies are listed in docs/replies.md.
 */
#include "session.h"

/* ---- the table's shape (its rows are at the end) ------------------------- */

/* What the dispatcher enforces for a verb before its check runs. */
enum {
  /* RFC 5321 §4.1.4: MAIL needs a HELO/EHLO/LHLO first (503 5.5.1). */
  V_HELO = 1 << 0,
  /* With auth_required, AUTH first (530 5.7.0; RFC 4954 §6). */
  V_AUTH = 1 << 1,
  /* RFC 2033 §4.1: LHLO only in LMTP; HELO and EHLO never in LMTP. */
  V_LMTP_ONLY = 1 << 2,
  V_NOT_LMTP = 1 << 3,
  /* RFC 2920 §3.1: the last command of a pipelined group (its reply
   * waits for nothing after it: EHLO, DATA, VRFY, EXPN, NOOP, QUIT,
   * STARTTLS, AUTH, and XCLIENT, which restarts the session). Recorded
   * for the runtime's and readers' use; the core needs no flag for it. */
  V_ENDS_GROUP = 1 << 4,
  /* Moves no mail: counts against max_junk_commands (Postfix's
   * smtpd_junk_command_limit counts NOOP, VRFY, ETRN and RSET; tern adds
   * EXPN, HELP and the greetings, which a client needs once per session
   * or per message, never thousands of times between messages). Any
   * command answered 4xx/5xx counts too. */
  V_JUNK = 1 << 5,
  /* The verb takes no argument (RFC 5321 §4.1.1: DATA, RSET, QUIT;
   * RFC 3207 §4: STARTTLS): 501 5.5.4 "Syntax: VERB" otherwise. */
  V_NO_ARGS = 1 << 6,
  /* Allowed after a 5xx greeting (RFC 5321 §3.1: only QUIT). */
  V_AFTER_REJECT = 1 << 7,
  /* Carries a secret: observers (on_command) see the verb and the
   * mechanism only. */
  V_SECRET = 1 << 8,
};

struct cmd;

/*
 * A verb: `ext` is the configured extension it needs (else 502 5.5.1);
 * `arg` tells verbs that share a check apart; `check` refuses (false) or
 * asks the application for the verdict of event `ev` (true, with the
 * callback's return and reply in the command); `apply` applies that
 * verdict, now or when the application answers later. Verbs without a
 * decision answer in `check` and have no `apply`.
 */
struct verb {
  const char *name;
  unsigned flags;
  unsigned ext;
  int arg;
  enum tern_server_event ev;
  bool (*check)(struct tern_server_session *s, struct cmd *c);
  tern__apply_fn apply;
};

/* One command being run: its row, its arguments (writable: xtext is
 * decoded in place), and the verdict its check asked for. */
struct cmd {
  const struct verb *verb;
  char *args;
  size_t len;
  struct tern_reply r; /* the default, then the callback's reply */
  int rc;              /* the callback's return */
};


/* ---- helpers --------------------------------------------------------------- */

static size_t skip_sp(const char *p, size_t len, size_t i) {
  while (i < len && p[i] == ' ')
    i++;
  return i;
}

/* A refusal by a check: reply, count the error; there is no verdict. */
static bool refuse(struct tern_server_session *s, int code, const char *enh,
                   const char *text) {
  tern__fail(s, code, enh, text);
  return false;
}

/* The default verdict: into *r for the callback to change, and kept for a
 * later reply(NULL). */
static void dflt(struct tern_server_session *s, struct tern_reply *r, int code,
                 const char *enh, const char *text) {
  r->code = code;
  r->enhanced = enh;
  r->text = text;
  s->pend_default = *r;
}

/* The apply of verbs whose verdict only answers (VRFY, EXPN). */
static void apply_reply(struct tern_server_session *s, int code,
                        const char *enh, const char *text) {
  tern__emit(s, code, enh, text);
}

/* ---- EHLO reply ------------------------------------------------------------- */

static size_t kw(char *t, size_t cap, size_t n, const char *word) {
  n = tern__cat(t, cap, n, "\n", 1);
  return tern__cat(t, cap, n, word, strlen(word));
}

/* RFC 5321 §4.1.1.1: "250-domain" then one keyword per line. */
static void ehlo_reply(struct tern_server_session *s, const char *first) {
  char t[TERN__REPLY_MAX];
  unsigned e = tern__ext(s);
  size_t n = 0;

  if (!first[0] || strlen(first) > TERN__REPLY_LINE_MAX - 8)
    first = s->cfg.hostname;
  n = tern__cat(t, sizeof t, n, first, strlen(first));
  if (e & TERN_EXT_PIPELINING)
    n = kw(t, sizeof t, n, "PIPELINING");
  if (e & TERN_EXT_SIZE) { /* RFC 1870 §4: the fixed limit, if any */
    n = kw(t, sizeof t, n, "SIZE");
    if (s->cfg.max_message_size) {
      n = tern__cat(t, sizeof t, n, " ", 1);
      n = tern__cat_u64(t, sizeof t, n, s->cfg.max_message_size);
    }
  }
  if ((e & TERN_EXT_STARTTLS) && !s->tls)
    n = kw(t, sizeof t, n, "STARTTLS");
  if (e & TERN_EXT_AUTH) {
    n = kw(t, sizeof t, n, "AUTH ");
    n = tern__cat(t, sizeof t, n, s->cfg.auth_mechanisms,
                  strlen(s->cfg.auth_mechanisms));
  }
  if (e & TERN_EXT_ENHANCEDSTATUSCODES)
    n = kw(t, sizeof t, n, "ENHANCEDSTATUSCODES");
  if (e & TERN_EXT_8BITMIME)
    n = kw(t, sizeof t, n, "8BITMIME");
  if (e & TERN_EXT_BINARYMIME)
    n = kw(t, sizeof t, n, "BINARYMIME");
  if (e & TERN_EXT_CHUNKING)
    n = kw(t, sizeof t, n, "CHUNKING");
  if (e & TERN_EXT_DSN)
    n = kw(t, sizeof t, n, "DSN");
  if (e & TERN_EXT_SMTPUTF8)
    n = kw(t, sizeof t, n, "SMTPUTF8");
  if (e & TERN_EXT_REQUIRETLS) /* RFC 8689 §4.1: only over TLS */
    n = kw(t, sizeof t, n, "REQUIRETLS");
  if (e & TERN_EXT_LIMITS) { /* RFC 9422 §4 */
    n = kw(t, sizeof t, n, "LIMITS RCPTMAX=");
    n = tern__cat_u64(t, sizeof t, n, s->cfg.max_recipients);
    if (s->cfg.max_transactions) {
      n = tern__cat(t, sizeof t, n, " MAILMAX=", 9);
      n = tern__cat_u64(t, sizeof t, n, s->cfg.max_transactions);
    }
  }
  if (e & TERN_EXT_XCLIENT)
    n = kw(t, sizeof t, n,
           "XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT");
  if (e & TERN_EXT_HELP)
    n = kw(t, sizeof t, n, "HELP");
  (void)n;
  tern__emit(s, 250, NULL, t);
}

/* ---- HELO / EHLO / LHLO ----------------------------------------------------- */

/* HELO, EHLO or LHLO (the row's `arg`); the table's flags keep LHLO to
 * LMTP and HELO/EHLO to SMTP (RFC 2033 §4.1). RFC 5321 §4.1.4: a
 * greeting in a transaction is an implicit RSET; the name is forgotten
 * until this one is accepted. */
static bool check_hello(struct tern_server_session *s, struct cmd *c) {
  static const char *const usage[] = {"Syntax: HELO hostname",
                                      "Syntax: EHLO hostname",
                                      "Syntax: LHLO hostname"};
  enum tern_helo_verb verb = (enum tern_helo_verb)c->verb->arg;
  if (!c->len)
    return refuse(s, 501, "5.5.4", usage[verb]);
  for (size_t i = 0; i < c->len; i++) {
    unsigned char ch = (unsigned char)c->args[i];
    if (ch < 0x20 || ch > 0x7e)
      return refuse(s, 501, "5.5.4", usage[verb]);
  }
  tern__txn_reset(s, true);
  s->helo_seen = s->esmtp = false;
  tern__env_helo(s, verb, c->args, c->len);
  dflt(s, &c->r, 250, NULL, s->cfg.hostname);
  struct tern_str dom = {c->args, c->len};
  if (s->cb.on_helo)
    c->rc = s->cb.on_helo(s, verb, dom, &c->r, s->ud);
  return true;
}

/* Accepted: the greeting's name is known; EHLO and LHLO list the
 * extensions (the enhanced code is never sent on it, RFC 2034 §3). */
static void hello_done(struct tern_server_session *s, bool esmtp, int code,
                       const char *enh, const char *text) {
  if (code / 100 != 2) {
    tern__emit(s, code, enh, text);
    return;
  }
  s->helo_seen = true;
  s->esmtp = esmtp;
  if (esmtp)
    ehlo_reply(s, text);
  else
    tern__emit(s, code, NULL, text);
}

static void apply_helo(struct tern_server_session *s, int code,
                       const char *enh, const char *text) {
  hello_done(s, false, code, enh, text);
}
static void apply_ehlo(struct tern_server_session *s, int code,
                       const char *enh, const char *text) {
  hello_done(s, true, code, enh, text);
}

/* ---- MAIL / RCPT -------------------------------------------------------------- */

/* "FROM:" / "TO:" then optional spaces (a common leniency), then the
 * path; returns the offset of the path or 0 when the keyword is absent. */
static size_t path_start(const char *args, size_t len, const char *keyword) {
  size_t k = strlen(keyword);
  if (len < k || !tern__str_ieq(args, k, keyword))
    return 0;
  return skip_sp(args, len, k);
}

/* Map a parameter error (see tern__mail_params_parse). */
static bool param_fail(struct tern_server_session *s, int err,
                       struct tern_str bad) {
  char t[TERN__REPLY_LINE_MAX - 32];
  size_t blen = bad.len > 200 ? 200 : bad.len;
  for (size_t i = 0; i < blen; i++) /* never echo controls */
    if ((unsigned char)bad.ptr[i] < 0x20 || (unsigned char)bad.ptr[i] > 0x7e)
      blen = i;
  bool unknown = err == TERN_EUNKNOWN; /* RFC 5321 §4.1.1.11 */
  size_t n = tern__cats(t, sizeof t, 0,
                        unknown ? "Unsupported option: " : "Bad parameter: ");
  tern__cat(t, sizeof t, n, bad.ptr, blen);
  return refuse(s, unknown ? 555 : 501, "5.5.4", t);
}

/* Map a path error of the sender (5.1.7) or a recipient (5.1.3). */
static bool path_fail(struct tern_server_session *s, int err, bool sender) {
  const char *enh = sender ? "5.1.7" : "5.1.3";
  switch (err) {
  case TERN_ETOOLONG: /* RFC 5321 §4.5.3.1 */
    return refuse(s, 553, enh,
                  sender ? "Error: sender address too long"
                         : "Error: recipient address too long");
  case TERN_ENONASCII: /* RFC 6531 §3.4 */
    return refuse(s, 553, "5.6.7",
                  "Error: non-ASCII address requires SMTPUTF8");
  default:
    return refuse(s, 501, enh,
                  sender ? "Bad sender address syntax"
                         : "Bad recipient address syntax");
  }
}

/* The envelope store could not grow (RFC 5321 §4.2.2: 452). */
static bool no_storage(struct tern_server_session *s) {
  tern__emit(s, 452, "4.3.1", "Error: insufficient system storage");
  tern__junk(s);
  return false;
}

/* MAIL's or RCPT's checks passed: `stored` says whether the path joined
 * the envelope (452 when it could not); the reply is "250 enh Ok" unless
 * the application says otherwise. */
static bool kept(struct tern_server_session *s, struct cmd *c, int stored,
                 const char *enh) {
  if (stored)
    return no_storage(s);
  dflt(s, &c->r, 250, enh, "Ok");
  return true;
}

/*
 * "FROM:<path> [params]" / "TO:<path> [params]": the path into *path, the
 * text after it (nothing, or SP and parameters) into *ps and *plen; false
 * when it refused the command.
 */
static bool envelope_path(struct tern_server_session *s, char *args,
                          size_t len, bool sender, unsigned opts,
                          struct tern_path *path, char **ps, size_t *plen) {
  size_t used, at = path_start(args, len, sender ? "FROM:" : "TO:");
  if (!at)
    return refuse(s, 501, "5.5.4",
                  sender ? "Syntax: MAIL FROM:<address>"
                         : "Syntax: RCPT TO:<address>");
  int rc = tern_path_parse(args + at, len - at, opts, path, &used);
  if (rc)
    return path_fail(s, rc, sender);
  at += used;
  if (at < len && args[at] != ' ')
    return refuse(s, 501, "5.5.4",
                  sender ? "Syntax: MAIL FROM:<address> [parameters]"
                         : "Syntax: RCPT TO:<address> [parameters]");
  *ps = args + at;
  *plen = len - at;
  return true;
}

/* RFC 5321 §4.1.1.2; the table requires HELO and, with auth_required,
 * AUTH first. */
static bool check_mail(struct tern_server_session *s, struct cmd *c) {
  struct tern_path path;
  struct tern_mail_params mp;
  struct tern_str bad = {"", 0};
  char *ps;
  size_t plen;
  unsigned e = tern__ext(s);

  if (s->in_txn)
    return refuse(s, 503, "5.5.1", "Error: nested MAIL command");
  if (s->cfg.max_transactions && s->transactions >= s->cfg.max_transactions) {
    tern__emit(s, 452, "4.5.3", "Error: too many messages in this session");
    tern__junk(s);
    return false;
  }
  unsigned opts = TERN_PATH_ALLOW_NULL;
  if (e & TERN_EXT_SMTPUTF8)
    opts |= TERN_PATH_ALLOW_UTF8;
  if (!envelope_path(s, c->args, c->len, true, opts, &path, &ps, &plen))
    return false;
  int err = tern__mail_params_parse(ps, plen, e, &mp, &bad);
  if (err)
    return param_fail(s, err, bad);
  if ((path.flags & TERN_PATHF_UTF8) && !mp.smtputf8)
    return refuse(s, 553, "5.6.7",
                  "Error: non-ASCII address requires SMTPUTF8");
  /* RFC 1870 §6.2: a declared size over the fixed limit fails now. */
  if (mp.has_size && s->cfg.max_message_size &&
      mp.size > s->cfg.max_message_size) {
    tern__emit(s, 552, "5.3.4", "Message size exceeds fixed limit");
    tern__junk(s);
    return false;
  }
  s->pend_utf8 = mp.smtputf8;
  s->pend_binary = mp.body == TERN_BODY_BINARYMIME;
  if (!kept(s, c, tern__env_mail(s, &path, &mp), "2.1.0"))
    return false;
  if (s->cb.on_mail)
    c->rc = s->cb.on_mail(s, &path, &mp, &c->r, s->ud);
  return true;
}

/* Accepted: the transaction starts, with what MAIL's check saw in its
 * parameters (pend_utf8, pend_binary). */
static void apply_mail(struct tern_server_session *s, int code,
                       const char *enh, const char *text) {
  tern__emit(s, code, enh, text);
  if (code / 100 != 2 || tern__closed(s))
    return;
  s->in_txn = true;
  s->txn_utf8 = s->pend_utf8;
  s->txn_binary = s->pend_binary;
  s->rcpt_count = 0;
  s->msg_size = 0;
  s->end = END_OK;
}

/* RFC 5321 §4.1.1.3. */
static bool check_rcpt(struct tern_server_session *s, struct cmd *c) {
  struct tern_path path;
  struct tern_rcpt_params rp;
  struct tern_str bad = {"", 0};
  char *ps;
  size_t plen;

  if (!s->in_txn)
    return refuse(s, 503, "5.5.1", "Error: need MAIL command");
  /* RFC 5321 §4.1.1.3: <Postmaster> without a domain must be accepted. */
  unsigned opts = TERN_PATH_ALLOW_POSTMASTER;
  if (s->txn_utf8)
    opts |= TERN_PATH_ALLOW_UTF8;
  if (!envelope_path(s, c->args, c->len, false, opts, &path, &ps, &plen))
    return false;
  /* UTF-8 parameter values only in a transaction that declared SMTPUTF8
   * (RFC 6531 §3.4). */
  unsigned e = tern__ext(s);
  if (!s->txn_utf8)
    e &= ~(unsigned)TERN_EXT_SMTPUTF8;
  int err = tern__rcpt_params_parse(ps, plen, e, &rp, &bad);
  if (err)
    return param_fail(s, err, bad);
  /* RFC 5321 §4.5.3.1.10: 452 for too many recipients, not an error. */
  if (s->rcpt_count >= s->cfg.max_recipients) {
    tern__emit(s, 452, "4.5.3", "Error: too many recipients");
    return false;
  }
  if (!kept(s, c, tern__env_rcpt(s, &path, &rp), "2.1.5"))
    return false;
  if (s->cb.on_rcpt)
    c->rc = s->cb.on_rcpt(s, &path, &rp, &c->r, s->ud);
  return true;
}

/* Accepted: one more recipient (counted before its reply goes out). */
static void apply_rcpt(struct tern_server_session *s, int code,
                       const char *enh, const char *text) {
  if (code / 100 == 2)
    s->rcpt_count++;
  tern__emit(s, code, enh, text);
}

/* ---- DATA / BDAT ----------------------------------------------------------- */

/* Checks shared by DATA and BDAT; true when a message may start. */
static bool data_ok(struct tern_server_session *s) {
  if (!s->in_txn)
    return refuse(s, 503, "5.5.1", "Error: need MAIL command");
  if (!s->rcpt_count) /* RFC 2920 §3.1 */
    return refuse(s, 554, "5.5.1", "Error: no valid recipients");
  return true;
}

static void ask_data_start(struct tern_server_session *s, bool bdat,
                           struct cmd *c) {
  if (bdat)
    dflt(s, &c->r, 250, "2.0.0", "Ok");
  else
    dflt(s, &c->r, 354, NULL, "End data with <CR><LF>.<CR><LF>");
  if (s->cb.on_data_start)
    c->rc = s->cb.on_data_start(s, &c->r, s->ud);
}

/* RFC 5321 §4.1.1.4. */
static bool check_data(struct tern_server_session *s, struct cmd *c) {
  if (!data_ok(s))
    return false;
  /* RFC 3030 §3: DATA may not follow BDAT, nor carry BINARYMIME. */
  if (s->bdat_used)
    return refuse(s, 503, "5.5.1", "Error: DATA after BDAT");
  if (s->txn_binary)
    return refuse(s, 503, "5.5.1", "Error: BINARYMIME requires BDAT");
  ask_data_start(s, false, c);
  return true;
}

/* 354: the content follows. */
static void apply_data(struct tern_server_session *s, int code,
                       const char *enh, const char *text) {
  tern__emit(s, code, enh, text);
  if (code / 100 == 3 && !tern__closed(s))
    tern__msg_begin(s, false);
}

/* "<size> [LAST]" (RFC 3030 §2) into s->bdat_*; false when it refused. */
static bool bdat_args(struct tern_server_session *s, char *args, size_t len) {
  size_t i = 0;
  uint64_t size;
  bool last = false;

  while (i < len && tern__is_digit((unsigned char)args[i]))
    i++;
  if (!i || tern__parse_u64(args, i, UINT64_MAX, &size) != 0)
    return refuse(s, 501, "5.5.4", "Syntax: BDAT <size> [LAST]");
  if (i < len) {
    size_t j = skip_sp(args, len, i);
    if (j == i || len - j != 4 || !tern__str_ieq(args + j, 4, "LAST"))
      return refuse(s, 501, "5.5.4", "Syntax: BDAT <size> [LAST]");
    last = true;
  }
  s->bdat_size = s->bdat_left = size;
  s->bdat_last = last;
  s->bdat_discard = true;
  return true;
}

/*
 * BDAT <size> [LAST] (RFC 3030 §2). Once the size is known the chunk is
 * read in every case, so that its bytes are never taken for commands;
 * refusals are sent at once and the chunk is dropped. Only the first
 * chunk of a message asks the application.
 */
static bool check_bdat(struct tern_server_session *s, struct cmd *c) {
  if (!bdat_args(s, c->args, c->len))
    return false;
  uint64_t max = s->cfg.max_message_size;
  if (!(s->cfg.extensions & TERN_EXT_CHUNKING)) {
    tern__fail(s, 502, "5.5.1", "Error: command not implemented");
  } else if (!data_ok(s)) {
    /* replied */
  } else if (max && (s->msg_size > max || s->bdat_size > max - s->msg_size)) {
    /* The chunk would pass the limit: refuse now, end the transaction. */
    tern__txn_reset(s, false);
    tern__emit(s, 552, "5.3.4", "Message size exceeds fixed limit");
  } else if (!s->bdat_used) {
    ask_data_start(s, true, c);
    return true;
  } else {
    s->bdat_discard = false;
  }
  if (!tern__closed(s))
    tern__bdat_begin(s);
  return false;
}

/* The BDAT reply comes after its chunk; a refusal is sent now and the
 * chunk is read and dropped (RFC 3030 §2). */
static void apply_bdat(struct tern_server_session *s, int code,
                       const char *enh, const char *text) {
  s->bdat_discard = !(code / 100 == 2 || code / 100 == 3);
  if (s->bdat_discard)
    tern__emit(s, code, enh, text);
  else
    tern__msg_begin(s, true);
  if (!tern__closed(s))
    tern__bdat_begin(s);
}

/* ---- RSET NOOP QUIT HELP VRFY EXPN -------------------------------------------- */

/* The verbs answered at once, without a decision (the row's `arg`). */
enum { NOW_RSET, NOW_NOOP, NOW_QUIT, NOW_HELP };

static bool check_now(struct tern_server_session *s, struct cmd *c) {
  switch (c->verb->arg) {
  case NOW_RSET: /* RFC 5321 §4.1.1.5 */
    tern__txn_reset(s, true);
    tern__emit(s, 250, "2.0.0", "Ok");
    break;
  case NOW_QUIT: /* RFC 5321 §4.1.1.10 */
    tern__emit(s, 221, "2.0.0", "Bye");
    tern__close(s, "disconnect");
    break;
  case NOW_HELP: /* RFC 5321 §4.1.1.8 */
    tern__emit(s, 214, "2.0.0", "See RFC 5321");
    break;
  default: /* NOOP, RFC 5321 §4.1.1.9: a parameter string is ignored */
    tern__emit(s, 250, "2.0.0", "Ok");
    break;
  }
  return false;
}

/* RFC 5321 §3.5: VRFY, or EXPN (the row's `arg`), each only with its
 * callback. */
static bool check_verify(struct tern_server_session *s, struct cmd *c) {
  bool expn = c->verb->arg;
  int (*cb)(struct tern_server_session *, struct tern_str,
            struct tern_reply *, void *) =
      expn ? s->cb.on_expn : s->cb.on_vrfy;
  if (!cb)
    return refuse(s, 502, "5.5.1",
                  expn ? "EXPN command is disabled"
                       : "VRFY command is disabled");
  if (!c->len)
    return refuse(s, 501, "5.5.4",
                  expn ? "Syntax: EXPN list" : "Syntax: VRFY address");
  dflt(s, &c->r, 252, "2.1.5", "Cannot VRFY user, but will accept message");
  struct tern_str a = {c->args, c->len};
  c->rc = cb(s, a, &c->r, s->ud);
  return true;
}

/* ---- STARTTLS ----------------------------------------------------------------- */

/* RFC 3207 §4: forget the transaction and everything else learnt, then
 * wait for the handshake. */
static bool check_starttls(struct tern_server_session *s, struct cmd *c) {
  (void)c;
  if (s->tls)
    return refuse(s, 503, "5.5.1", "Error: TLS already active");
  tern__txn_reset(s, true);
  s->helo_seen = s->esmtp = s->authenticated = false;
  tern__emit(s, 220, "2.0.0", "Ready to start TLS");
  if (tern__closed(s))
    return false;
  s->state = ST_TLS_WAIT;
  if (s->cb.on_starttls)
    s->cb.on_starttls(s, s->ud);
  return false;
}

/* ---- AUTH ---------------------------------------------------------------------- */

/* Ask on_auth for one step; `resp` is checked first (RFC 4954 §4: a
 * response that is not base64 is refused with 501 5.5.2). */
static bool auth_step(struct tern_server_session *s, struct tern_str resp,
                      bool has_resp, struct cmd *c) {
  if (has_resp && !tern__base64_ok(resp.ptr, resp.len)) {
    s->state = ST_CMD;
    return refuse(s, 501, "5.5.2", "Error: invalid base64 in AUTH response");
  }
  struct tern_str mech = {s->mech, strlen(s->mech)};
  dflt(s, &c->r, 535, "5.7.8", "Error: authentication failed");
  c->rc = s->cb.on_auth(s, mech, resp, has_resp, s->auth_step, &c->r, s->ud);
  return true;
}

/* RFC 4954 §4: AUTH mechanism [initial-response]. */
static bool check_auth(struct tern_server_session *s, struct cmd *c) {
  char *args = c->args;
  size_t len = c->len;
  if (!tern__auth_offered(s)) {
    if ((s->cfg.extensions & TERN_EXT_AUTH) && s->cb.on_auth &&
        s->cfg.auth_mechanisms[0] && !s->tls &&
        (s->cfg.extensions & TERN_EXT_STARTTLS))
      /* RFC 3207 §4: AUTH waits for TLS here. */
      return refuse(s, 530, "5.7.0", "Must issue a STARTTLS command first");
    return refuse(s, 502, "5.5.1", "Error: command not implemented");
  }
  if (!s->helo_seen || !s->esmtp)
    return refuse(s, 503, "5.5.1", "Error: send EHLO first");
  if (s->authenticated)
    return refuse(s, 503, "5.5.1", "Error: already authenticated");
  if (s->in_txn)
    return refuse(s, 503, "5.5.1", "Error: MAIL transaction in progress");
  size_t m = 0;
  while (m < len && args[m] != ' ')
    m++;
  size_t r0 = m < len ? m + 1 : len;
  if (!m || (r0 < len && memchr(args + r0, ' ', len - r0)) ||
      (m < len && r0 == len))
    return refuse(s, 501, "5.5.4", "Syntax: AUTH mechanism [initial-response]");
  if (m >= sizeof s->mech ||
      !tern__mech_listed(s->cfg.auth_mechanisms, args, m))
    return refuse(s, 504, "5.5.4", "Unrecognized authentication type");
  for (size_t i = 0; i < m; i++)
    s->mech[i] = (char)tern__upper((unsigned char)args[i]);
  s->mech[m] = '\0';
  s->auth_step = 0;
  struct tern_str resp = {args + r0, len - r0};
  return auth_step(s, resp, r0 < len, c);
}

/* 334: the next line is a response; 2xx: authenticated; 5xx counts
 * against max_errors (password guessing). */
static void apply_auth(struct tern_server_session *s, int code,
                       const char *enh, const char *text) {
  tern__emit(s, code, enh, text);
  if (tern__closed(s))
    return;
  if (code == 334) {
    s->state = ST_AUTH;
    s->auth_step++;
    return;
  }
  s->state = ST_CMD;
  if (code / 100 == 2)
    s->authenticated = true;
  else if (code / 100 == 5)
    tern__count_error(s);
}

/* A line in the middle of an AUTH exchange (RFC 4954 §4). */
static void auth_continue(struct tern_server_session *s, char *line,
                          size_t len) {
  struct cmd c = {NULL, line, len, {0, NULL, NULL}, TERN_REPLY_NOW};
  if (s->cb.on_command) {
    struct tern_str red = {"*", 1};
    s->cb.on_command(s, red, s->ud);
  }
  if (len == 1 && line[0] == '*') {
    s->state = ST_CMD;
    tern__fail(s, 501, "5.0.0", "Authentication cancelled");
    return;
  }
  struct tern_str resp = {line, len};
  if (auth_step(s, resp, true, &c))
    tern__decide(s, TERN_EV_AUTH, apply_auth, c.rc, &c.r);
}

/* ---- XCLIENT (Postfix XCLIENT_README) ------------------------------------------ */

enum xc_kind { XC_NAME, XC_ADDR, XC_PORT, XC_PROTO, XC_TEXT };

/*
 * Is the decoded value v[0..n) what the attribute may carry? Values end
 * up in logs, Received: lines and the app's policy, so every one is
 * checked (issue 8 item 16: "ADDR=1.2.3.4+0D+0AX-Injected:+20yes"):
 * XCLIENT_README allows "[UNAVAILABLE]" and "[TEMPUNAVAIL]" anywhere;
 * NAME is a host name (letters, digits, "-", ".", "_"); ADDR and DESTADDR
 * an IPv4 or IPv6 address, the latter optionally as "IPV6:..." (the
 * prefix is dropped: *skip says how much); PORT and DESTPORT 0..65535;
 * PROTO SMTP or ESMTP; HELO and LOGIN printable, no space, no control
 * (UTF-8 allowed in LOGIN). At most 255 octets.
 */
static bool xclient_value_ok(enum xc_kind kind, const char *v, size_t n,
                             size_t *skip) {
  *skip = 0;
  if (!n || n > 255)
    return false;
  if ((n == 13 && memcmp(v, "[UNAVAILABLE]", 13) == 0) ||
      (n == 13 && memcmp(v, "[TEMPUNAVAIL]", 13) == 0))
    return true;
  switch (kind) {
  case XC_NAME:
    for (size_t i = 0; i < n; i++) {
      unsigned char c = (unsigned char)v[i];
      if (!(tern__is_alnum(c) || c == '-' || c == '.' || c == '_'))
        return false;
    }
    return true;
  case XC_ADDR:
    if (n > 5 && tern__str_ieq(v, 5, "IPV6:")) {
      *skip = 5;
      return tern__ipv6_valid(v + 5, n - 5);
    }
    return tern__ipv4_valid(v, n) || tern__ipv6_valid(v, n);
  case XC_PORT: {
    uint64_t port;
    for (size_t i = 0; i < n; i++)
      if (!tern__is_digit((unsigned char)v[i]))
        return false;
    return n <= 5 && tern__parse_u64(v, n, 65535, &port) == 0;
  }
  case XC_PROTO:
    return tern__str_ieq(v, n, "SMTP") || tern__str_ieq(v, n, "ESMTP");
  case XC_TEXT:
    for (size_t i = 0; i < n; i++) {
      unsigned char c = (unsigned char)v[i];
      if (c <= 0x20 || c == 0x7f)
        return false;
    }
    return true;
  }
  return false;
}

static bool check_xclient(struct tern_server_session *s, struct cmd *c) {
  static const char *const names[] = {"NAME",  "ADDR",  "PORT",
                                      "PROTO", "HELO",  "LOGIN",
                                      "DESTADDR", "DESTPORT"};
  static const enum xc_kind kinds[] = {XC_NAME,  XC_ADDR, XC_PORT,
                                       XC_PROTO, XC_TEXT, XC_TEXT,
                                       XC_ADDR,  XC_PORT};
  struct tern_xclient x;
  struct tern_str *slot[] = {&x.name,  &x.addr,  &x.port,     &x.proto,
                             &x.helo,  &x.login, &x.destaddr, &x.destport};
  char *args = c->args;
  size_t len = c->len;

  if (!s->xclient_trusted)
    return refuse(s, 550, "5.7.0", "Error: insufficient authorization");
  if (s->in_txn)
    return refuse(s, 503, "5.5.1", "Error: MAIL transaction in progress");
  memset(&x, 0, sizeof x);
  size_t i = skip_sp(args, len, 0);
  if (i == len)
    return refuse(s, 501, "5.5.4", "Syntax: XCLIENT attribute=value ...");
  while (i < len) {
    size_t st = i, eq = 0;
    while (i < len && args[i] != ' ') {
      if (args[i] == '=' && !eq)
        eq = i;
      i++;
    }
    size_t k;
    for (k = 0; eq && k < sizeof names / sizeof names[0]; k++)
      if (tern__str_ieq(args + st, eq - st, names[k]))
        break;
    long vlen = eq ? tern__xtext_decode(args + eq + 1, i - eq - 1) : -1;
    if (!eq || k == sizeof names / sizeof names[0] || vlen < 0)
      return refuse(s, 501, "5.5.4", "Bad XCLIENT attribute");
    size_t skip;
    if (!xclient_value_ok(kinds[k], args + eq + 1, (size_t)vlen, &skip)) {
      char t[48];
      size_t n = tern__cats(t, sizeof t, 0, "Bad XCLIENT ");
      n = tern__cats(t, sizeof t, n, names[k]);
      tern__cats(t, sizeof t, n, " value");
      return refuse(s, 501, "5.5.4", t);
    }
    slot[k]->ptr = args + eq + 1 + skip;
    slot[k]->len = (size_t)vlen - skip;
    i = skip_sp(args, len, i);
  }
  dflt(s, &c->r, 220, NULL, s->greeting);
  if (s->cb.on_xclient)
    c->rc = s->cb.on_xclient(s, &x, &c->r, s->ud);
  return true;
}

/* Accepted: the session starts over as if newly connected. */
static void apply_xclient(struct tern_server_session *s, int code,
                          const char *enh, const char *text) {
  tern__emit(s, code, enh, text);
  if (code / 100 != 2 || tern__closed(s))
    return;
  tern__txn_reset(s, true);
  s->helo_seen = s->esmtp = s->authenticated = false;
}

/* ---- the table ------------------------------------------------------------------ */

/* The rows: name, flags, extension, arg, event, check, apply. */
static const struct verb verbs[] = {
    {"HELO", V_JUNK | V_NOT_LMTP, 0, TERN_HELO, TERN_EV_HELO, check_hello,
     apply_helo},
    {"EHLO", V_JUNK | V_NOT_LMTP | V_ENDS_GROUP, 0, TERN_EHLO, TERN_EV_HELO,
     check_hello, apply_ehlo},
    {"LHLO", V_JUNK | V_LMTP_ONLY | V_ENDS_GROUP, 0, TERN_LHLO, TERN_EV_HELO,
     check_hello, apply_ehlo},
    {"MAIL", V_HELO | V_AUTH, 0, 0, TERN_EV_MAIL, check_mail, apply_mail},
    {"RCPT", 0, 0, 0, TERN_EV_RCPT, check_rcpt, apply_rcpt},
    {"DATA", V_ENDS_GROUP | V_NO_ARGS, 0, 0, TERN_EV_DATA_START, check_data,
     apply_data},
    {"BDAT", 0, 0, 0, TERN_EV_DATA_START, check_bdat, apply_bdat},
    {"RSET", V_JUNK | V_NO_ARGS, 0, NOW_RSET, TERN_EV_NONE, check_now, NULL},
    {"NOOP", V_JUNK | V_ENDS_GROUP, 0, NOW_NOOP, TERN_EV_NONE, check_now,
     NULL},
    {"QUIT", V_ENDS_GROUP | V_NO_ARGS | V_AFTER_REJECT, 0, NOW_QUIT,
     TERN_EV_NONE, check_now, NULL},
    {"HELP", V_JUNK, TERN_EXT_HELP, NOW_HELP, TERN_EV_NONE, check_now, NULL},
    {"VRFY", V_JUNK | V_ENDS_GROUP, 0, false, TERN_EV_VRFY, check_verify,
     apply_reply},
    {"EXPN", V_JUNK | V_ENDS_GROUP, 0, true, TERN_EV_EXPN, check_verify,
     apply_reply},
    {"STARTTLS", V_ENDS_GROUP | V_NO_ARGS, TERN_EXT_STARTTLS, 0, TERN_EV_NONE,
     check_starttls, NULL},
    {"AUTH", V_ENDS_GROUP | V_SECRET, 0, 0, TERN_EV_AUTH, check_auth,
     apply_auth},
    {"XCLIENT", V_ENDS_GROUP, TERN_EXT_XCLIENT, 0, TERN_EV_XCLIENT,
     check_xclient, apply_xclient},
};

/* ---- dispatch ---------------------------------------------------------------- */

static const struct verb *find_verb(const char *line, size_t len) {
  for (size_t k = 0; k < sizeof verbs / sizeof verbs[0]; k++)
    if (tern__str_ieq(line, len, verbs[k].name))
      return &verbs[k];
  return NULL;
}

static void observe(struct tern_server_session *s, const char *line,
                    size_t len, bool secret, size_t verb_len) {
  if (!s->cb.on_command)
    return;
  struct tern_str l = {line, len};
  char red[40];
  if (secret) { /* never hand AUTH payloads to observers (logs) */
    size_t m = verb_len + 1;
    while (m < len && line[m] != ' ' && m < sizeof red - 1)
      m++;
    if (m > len)
      m = len;
    memcpy(red, line, m);
    l.ptr = red;
    l.len = m;
  }
  s->cb.on_command(s, l, s->ud);
}

/* The table's flags, for every verb alike; true when the verb may run. */
static bool allowed(struct tern_server_session *s, const struct verb *v,
                    size_t len) {
  unsigned f = v->flags;
  if ((f & V_NOT_LMTP) && s->cfg.lmtp)
    return refuse(s, 500, "5.5.1", "Error: use LHLO in LMTP");
  if ((f & V_LMTP_ONLY) && !s->cfg.lmtp)
    return refuse(s, 500, "5.5.1", "Error: LHLO is for LMTP only");
  if (v->ext && !(s->cfg.extensions & v->ext))
    return refuse(s, 502, "5.5.1", "Error: command not implemented");
  if ((f & V_NO_ARGS) && len) {
    char t[32];
    tern__cats(t, sizeof t, tern__cats(t, sizeof t, 0, "Syntax: "), v->name);
    return refuse(s, 501, "5.5.4", t);
  }
  if ((f & V_HELO) && !s->helo_seen)
    return refuse(s, 503, "5.5.1",
                  s->cfg.lmtp ? "Error: send LHLO first"
                              : "Error: send HELO/EHLO first");
  if ((f & V_AUTH) && s->cfg.auth_required && !s->authenticated)
    return refuse(s, 530, "5.7.0", "Authentication required");
  return true;
}

/* An unknown command's verdict: a 5xx counts as an error. */
static void apply_unknown(struct tern_server_session *s, int code,
                          const char *enh, const char *text) {
  tern__emit(s, code, enh, text);
  if (code / 100 == 5)
    tern__count_error(s);
}

/* A verb not in the table: on_unknown decides, else 500 5.5.2. */
static void unknown(struct tern_server_session *s, char *verb, size_t vlen,
                    struct cmd *c) {
  if (!s->cb.on_unknown) {
    tern__fail(s, 500, "5.5.2", "Error: command not recognized");
    return;
  }
  struct tern_str v = {verb, vlen}, rest = {c->args, c->len};
  dflt(s, &c->r, 500, "5.5.2", "Error: command not recognized");
  int rc = s->cb.on_unknown(s, v, rest, &c->r, s->ud);
  tern__decide(s, TERN_EV_UNKNOWN, apply_unknown, rc, &c->r);
}

void tern__command(struct tern_server_session *s, char *line, size_t len) {
  if (s->state == ST_AUTH) {
    auth_continue(s, line, len);
    return;
  }
  s->cmd_junk = false;
  while (len && (line[len - 1] == ' ' || line[len - 1] == '\t'))
    len--;
  size_t vlen = 0;
  while (vlen < len && line[vlen] != ' ')
    vlen++;
  const struct verb *v = find_verb(line, vlen);
  observe(s, line, len, v && (v->flags & V_SECRET), vlen);

  /* RFC 5321 §2.3.8: commands are text; NUL and bare CR have no place. */
  if (memchr(line, '\0', len) || memchr(line, '\r', len)) {
    tern__fail(s, 500, "5.5.2", "Error: bad character in command");
    return;
  }
  if (s->rejected && !(v && (v->flags & V_AFTER_REJECT))) {
    tern__fail(s, 503, "5.5.1", "Error: connection rejected, send QUIT");
    return;
  }
  struct cmd c = {v, line + (vlen < len ? vlen + 1 : len),
                  vlen < len ? len - vlen - 1 : 0, {0, NULL, NULL},
                  TERN_REPLY_NOW};
  /* Past the junk limit the command is not run: 421 instead. */
  if ((!v || (v->flags & V_JUNK)) && tern__junk(s))
    return;
  if (!v)
    unknown(s, line, vlen, &c);
  else if (allowed(s, v, c.len) && v->check(s, &c))
    tern__decide(s, v->ev, v->apply, c.rc, &c.r);
}
