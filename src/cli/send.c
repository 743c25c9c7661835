/*
 * tern send — a sendmail-compatible sender over the client runtime.
 *
 *   tern send [options] [recipient ...] < message
 *   sendmail  [options] [recipient ...] < message      (same program)
 *
 * The message is read from stdin to the end (or to a lone "." line, see
 * -i) and spooled to an unnamed temporary file (tmpfile()) with CRLF line
 * ends, so input of any size is never held in memory: only the header
 * block is buffered (at most 1 MiB) to find recipients (-t), drop Bcc
 * and see whether a From: exists (-F). Then one SMTP connection sends it
 * with tern_client_send_fd(); the process exits with a <sysexits.h> code.
 * Reading everything before connecting (as sendmail does before it
 * queues) means a slow writer on stdin never makes the server time out.
 *
 * Semantics (Postfix's sendmail(1) where the classic one differs):
 *   -t    recipients are taken from To:, Cc: and Bcc: (or only from
 *         Resent-To/Cc/Bcc when any Resent- recipient header exists) and
 *         ADDED to the command-line recipients (Postfix ≥ 2.1; classic
 *         sendmail removed them instead). Bcc: and Resent-Bcc: lines are
 *         removed from what is sent.
 *   -i, -oi  a line with a single "." is ordinary text. Without them a
 *         lone "." line ends the input (the rest of stdin is not read).
 *   -f, -r ADDR  envelope sender ("" or "<>" for the null sender);
 *         default: LOGIN@HOSTNAME.
 *   -F NAME  adds "From: NAME <sender>" at the end of the header block
 *         only when the message has no From: header.
 *   Addresses without "@" get "@HOSTNAME" (gethostname()), as Postfix
 *   appends $myorigin. Exact duplicate recipients are sent once.
 *   Date: and Message-ID: are added at the end of the header block when
 *   the message has none (as msmtp does and Postfix's cleanup does for
 *   local submissions): Date in RFC 5322 §3.3 form with the local
 *   offset, Message-ID "<UTCTIME.RANDOM@HOSTNAME>" with 128 random bits.
 *   Header fields that exist are never changed. When fields are added
 *   and the body started without an empty line, one is inserted so the
 *   added fields stay in the header.
 *   A first line "From ..." (an mbox envelope line, as git format-patch
 *   writes) is dropped, as Postfix's sendmail does.
 *   -v prints the dialogue on stderr: MAIL, RCPT and DATA exactly as
 *   queued, the commands the session sends by itself rebuilt, every
 *   reply; AUTH lines are never shown. --version prints the version.
 *   -B, -N, -R, -V map to BODY=, NOTIFY=, RET=, ENVID=. Harmless
 *   sendmail options (-odX, -oeX, -om, -n, -U, -G, -h N, -L, -C, -X,
 *   -p, -O, -M, -d, other -oX) are accepted and ignored (a warning for
 *   those that could change meaning); queue/daemon modes (-bd, -bs, -bp,
 *   -bi, -bv, -bt, -q, ...) are refused with EX_USAGE: tern has no queue.
 *
 * Exit codes (sysexits):
 *   0               accepted for every recipient
 *   EX_USAGE 64     bad arguments, no recipients
 *   EX_DATAERR 65   -t found no recipient, a header address is malformed,
 *                   the header block exceeds 1 MiB
 *   EX_NOINPUT 66   password file or CA file unreadable
 *   EX_NOUSER 67    recipients refused with 5xx (all of them, or some: then
 *                   the message WAS delivered to the others)
 *   EX_NOHOST 68    the server's host name cannot be resolved
 *   EX_UNAVAILABLE 69  other 5xx: greeting, sender, DATA or the message
 *                   refused; SIZE over the server's limit; SMTPUTF8 needed
 *                   but not offered; credentials withheld because the
 *                   channel is not verified TLS (msmtp's code for the same
 *                   refusal: retrying cannot help)
 *   EX_SOFTWARE 70  internal error
 *   EX_TEMPFAIL 75  any 4xx (a refused recipient with 4xx wins over 5xx
 *                   ones), connection refused/reset/closed, timeouts,
 *                   spool file errors
 *   EX_PROTOCOL 76  malformed replies, TLS handshake failures
 *   EX_NOPERM 77    AUTH refused (5xx) or not possible
 *   EX_CONFIG 78    TLS policy not met: certificate verification failed,
 *                   or STARTTLS required but not offered
 * There is no queue: when some recipients were refused and others
 * accepted, the message is delivered to the accepted ones, each refused
 * one is printed with the server's reply, and the exit code says
 * 67 (all refusals 5xx) or 75 (some 4xx). A caller retrying on 75 would
 * deliver again to the recipients that accepted.
 *
 * TLS: "smtp://" uses STARTTLS when offered without verifying the
 * certificate (opportunistic, RFC 7435, as Postfix's "may" level: a
 * local MTA with a snake-oil certificate still works). --starttls (or
 * "smtp+starttls://") requires STARTTLS and a verified certificate, as
 * does "smtps://"; --no-verify turns verification off.
 *
 * Credentials (--user) go only over TLS whose certificate verified: with
 * --user, STARTTLS becomes required on smtp:// and an unverified
 * certificate ends the connection before anything is sent over it (no
 * AUTH, no message), exit 69. Explicit consent lifts it: --no-verify
 * (TLS without verification; plaintext still refused) or --insecure-auth
 * (any channel, PLAIN/LOGIN in the clear too). A unix socket
 * (lmtp:///PATH) is a local channel and needs neither. msmtp and
 * Postfix (smtp_tls_security_level = secure for SASL) behave alike.
 */
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "send_msg.h"

#define HDR_MAX (1024u * 1024u) /* header block buffered for -t / -F */
#define LINE_CAP 65536u         /* longest piece of a line handled at once */
#define READ_CHUNK 65536u

struct sopts {
  const char *prog;          /* "tern send" or "sendmail" */
  bool extract;              /* -t */
  bool ignore_dots;          /* -i / -oi */
  int verbose;               /* -v */
  const char *sender;        /* -f / -r, NULL = default */
  const char *fullname;      /* -F */
  const char *server;        /* --server / TERN_SERVER */
  bool starttls;             /* --starttls */
  bool no_verify;            /* --no-verify */
  const char *ca_file;       /* --ca-file */
  const char *user;          /* --user */
  const char *password_file; /* --password-file */
  bool insecure_auth;        /* --insecure-auth */
  const char *helo;          /* --helo */
  unsigned timeout_ms;       /* --timeout */
  unsigned notify;           /* -N */
  enum tern_dsn_ret ret;     /* -R */
  const char *envid;         /* -V */
  enum tern_body body;       /* -B */
};

struct send {
  struct sopts o;
  char host[256];            /* default domain for bare local parts */
  char *password;

  /* spooling */
  FILE *spool;
  uint64_t size;
  bool eightbit;
  bool in_header;
  char *hdr;
  size_t hlen, hcap;
  bool has_from, has_date, has_msgid;
  bool seen_line;            /* the first input line was looked at */
  bool skip_line;            /* dropping the rest of a long "From " line */
  int data_err;              /* EX_DATAERR found while spooling */
  char data_msg[512];

  struct strvec arg_rcpt, hdr_rcpt, resent_rcpt, rcpt;
  char *from;

  /* delivery */
  uv_loop_t loop;
  struct tern_client *cl;
  bool closed;
  const char *url;
  char endpoint[300];
  bool opportunistic;
  bool lmtp;
  struct tern_client_rcpt *trcpt;
  struct tern_client_message msg;
  int *rcode;                /* per recipient: its refusal code, 0 = ok */
  char **rtext;              /* per recipient: the refusal reply */
  size_t *acc_map;           /* LMTP: accepted index -> recipient index */
  size_t nacc;
  bool started, done, fd_pending;
  struct tern_client_outcome outcome;
  /* The first MAIL/DATA/end-of-data reply that failed: what really
   * failed. With PIPELINING a refused MAIL is followed by the replies to
   * the RCPTs and DATA of the same group ("503 need MAIL"): those are
   * its consequences and are never reported in its place. */
  char cmd_reply[600];
  int cmd_code;              /* its code, 0 = none failed */
  enum tern_client_cmd cmd_failed;
  int fail_exit;             /* first failure recorded */
  char fail_msg[800];
  bool verify_failed;
  bool session_ended;        /* the server closed it, 421, or a timeout */
  /* -v: which commands the trace has shown (see trace_command) */
  bool tr_helo, tr_mail, tr_data;
  size_t tr_rcpt;
  unsigned tr_auth;
  bool creds_withheld;       /* --user over an unverified channel: refused */
  bool creds_need_tls;       /* --user: verified TLS required (item 10) */
  char verify_why[300];
};

/* ---- small helpers ---------------------------------------------------------- */

/* Record the first failure: its exit code and its one line. */
static void set_fail(struct send *s, int ex, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_fail(struct send *s, int ex, const char *fmt, ...) {
  if (s->fail_exit)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->fail_msg, sizeof s->fail_msg, fmt, ap);
  va_end(ap);
  s->fail_exit = ex;
}

static int class_exit(int code, int ex5) {
  return code >= 400 && code < 500 ? EX_TEMPFAIL : ex5;
}

/* ---- addresses ---------------------------------------------------------------- */

/* Append "@host" to an address without a domain; check the result is a
 * mailbox an SMTP path can carry. Returns the address (owned) or NULL. */
static char *finish_addr(struct send *s, const char *a, const char **why) {
  bool quoted = false, has_at = false;
  for (const char *q = a; *q; q++) {
    if (*q == '\\' && q[1])
      q++;
    else if (*q == '"')
      quoted = !quoted;
    else if (*q == '@' && !quoted)
      has_at = true;
  }
  size_t n = strlen(a) + (has_at ? 0 : strlen(s->host) + 1);
  char *r = send_xmalloc(n + 1);
  if (has_at)
    memcpy(r, a, n + 1);
  else
    snprintf(r, n + 1, "%s@%s", a, s->host);

  char *path = send_xmalloc(n + 3);
  snprintf(path, n + 3, "<%s>", r);
  struct tern_path tp;
  size_t used = 0;
  int rc = tern_path_parse(path, n + 2, TERN_PATH_ALLOW_UTF8, &tp, &used);
  free(path);
  if (rc != 0 || used != n + 2) {
    *why = rc ? tern_strerror(rc) : "trailing characters";
    free(r);
    return NULL;
  }
  return r;
}

static bool non_ascii(const char *a) {
  for (; *a; a++)
    if ((unsigned char)*a >= 0x80)
      return true;
  return false;
}

/* ---- spooling stdin ------------------------------------------------------------ */

static void spool_write(struct send *s, const void *p, size_t n) {
  if (n && fwrite(p, 1, n, s->spool) != n && !s->fail_exit)
    set_fail(s, EX_TEMPFAIL, "%s: cannot write the spool file: %s",
             s->o.prog, strerror(errno));
  s->size += n;
}

static void add_from_header(struct send *s) {
  /* quote the display name unless it is plain atext words */
  const char *f = s->o.fullname;
  bool plain = true;
  for (const char *q = f; *q; q++)
    if (!((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') ||
          (*q >= '0' && *q <= '9') || *q == ' ' ||
          strchr("!#$%&'*+-/=?^_`{|}~", *q) || (unsigned char)*q >= 0x80))
      plain = false;
  spool_write(s, "From: ", 6);
  if (!plain)
    spool_write(s, "\"", 1);
  for (const char *q = f; *q; q++) {
    if (*q == '\r' || *q == '\n')
      continue;
    if (!plain && (*q == '"' || *q == '\\'))
      spool_write(s, "\\", 1);
    spool_write(s, q, 1);
  }
  if (!plain)
    spool_write(s, "\"", 1);
  spool_write(s, " <", 2);
  spool_write(s, s->from, strlen(s->from));
  spool_write(s, ">\r\n", 3);
}

static void add_date_header(struct send *s, time_t now) {
  char buf[80];
  size_t n = send_format_date(buf, sizeof buf, now);
  spool_write(s, buf, n);
}

static void add_msgid_header(struct send *s, time_t now) {
  char buf[400];
  size_t n = send_format_msgid(buf, sizeof buf, now, s->host);
  if (n == 0)
    set_fail(s, EX_OSERR, "%s: no random bytes for the Message-ID: %s",
             s->o.prog, strerror(errno));
  spool_write(s, buf, n);
}

/*
 * The header block is complete: extract, filter and spool it, then add
 * the fields it lacks. `body_follows`: the block ended at a line that is
 * not a header field (no empty line): if a field was added, an empty line
 * goes in before that body line.
 */
static void flush_header(struct send *s, bool body_follows) {
  size_t i = 0;
  bool open_line = false; /* the last field sent lacks its line end */
  s->in_header = false;
  while (i < s->hlen) {
    /* a field: its first line, then continuation lines (WSP first) */
    size_t start = i;
    for (;;) {
      const char *nl = memchr(s->hdr + i, '\n', s->hlen - i);
      i = nl ? (size_t)(nl - s->hdr) + 1 : s->hlen;
      if (i >= s->hlen || (s->hdr[i] != ' ' && s->hdr[i] != '\t'))
        break;
    }
    const char *f = s->hdr + start;
    size_t flen = i - start;
    const char *colon = memchr(f, ':', flen);
    const char *val = colon ? colon + 1 : f + flen;
    size_t vlen = (size_t)(f + flen - val);
    bool drop = false;

    if (send_field_named(f, flen, "From"))
      s->has_from = true;
    else if (send_field_named(f, flen, "Date"))
      s->has_date = true;
    else if (send_field_named(f, flen, "Message-ID"))
      s->has_msgid = true;
    if (s->o.extract) {
      if (send_field_named(f, flen, "To") || send_field_named(f, flen, "Cc") ||
          send_field_named(f, flen, "Bcc"))
        send_parse_addr_list(val, vlen, &s->hdr_rcpt);
      else if (send_field_named(f, flen, "Resent-To") ||
               send_field_named(f, flen, "Resent-Cc") ||
               send_field_named(f, flen, "Resent-Bcc"))
        send_parse_addr_list(val, vlen, &s->resent_rcpt);
      drop = send_field_named(f, flen, "Bcc") ||
             send_field_named(f, flen, "Resent-Bcc");
    }
    if (!drop) {
      spool_write(s, f, flen);
      open_line = flen > 0 && f[flen - 1] != '\n';
    }
  }
  uint64_t before = s->size;
  time_t now = time(NULL);
  bool add_from = !s->has_from && s->o.fullname;
  if (open_line && (add_from || !s->has_date || !s->has_msgid))
    spool_write(s, "\r\n", 2); /* input ended inside the last field */
  if (add_from)
    add_from_header(s);
  if (!s->has_date)
    add_date_header(s, now);
  if (!s->has_msgid)
    add_msgid_header(s, now);
  if (body_follows && s->size != before)
    spool_write(s, "\r\n", 2);
  s->hlen = 0;
}

static void hdr_append(struct send *s, const char *p, size_t n) {
  if (s->data_err)
    return;
  if (s->hlen + n > HDR_MAX) {
    s->data_err = EX_DATAERR;
    snprintf(s->data_msg, sizeof s->data_msg,
             "%s: the message's header block exceeds %u KiB", s->o.prog,
             HDR_MAX / 1024);
    return;
  }
  if (s->hlen + n > s->hcap) {
    size_t cap = s->hcap ? s->hcap : 16384;
    while (cap < s->hlen + n)
      cap *= 2;
    char *h = realloc(s->hdr, cap);
    if (!h) {
      fprintf(stderr, "%s: out of memory\n", s->o.prog);
      exit(EX_OSERR);
    }
    s->hdr = h;
    s->hcap = cap;
  }
  memcpy(s->hdr + s->hlen, p, n);
  s->hlen += n;
}

/*
 * One piece of an input line: the whole line when it fits LINE_CAP,
 * else consecutive pieces (`first` marks the first one, `eol` the one
 * that ended with a newline; the newline and a CR before it are not in
 * p). Returns false when input ends here (a lone ".").
 */
static bool on_piece(struct send *s, const char *p, size_t n, bool first,
                     bool eol) {
  if (s->skip_line) { /* the rest of a long "From " line */
    s->skip_line = !eol;
    return true;
  }
  if (!s->seen_line) {
    s->seen_line = true;
    if (first && n >= 5 && !memcmp(p, "From ", 5)) { /* mbox envelope */
      s->skip_line = !eol;
      return true;
    }
  }
  for (size_t i = 0; i < n && !s->eightbit; i++)
    if ((unsigned char)p[i] >= 0x80)
      s->eightbit = true;
  if (s->in_header) {
    if (first && eol && n == 0) { /* the empty line ends the header */
      flush_header(s, false);
      spool_write(s, "\r\n", 2);
      return true;
    }
    if (!first || (n > 0 && (p[0] == ' ' || p[0] == '\t') && s->hlen) ||
        send_field_start(p, n)) {
      hdr_append(s, p, n);
      if (eol)
        hdr_append(s, "\r\n", 2);
      return true;
    }
    flush_header(s, true); /* not a header line: the body starts here */
  }
  if (first && n == 1 && p[0] == '.' && !s->o.ignore_dots)
    return false; /* classic sendmail: a lone "." ends the input */
  spool_write(s, p, n);
  if (eol)
    spool_write(s, "\r\n", 2);
  return true;
}

/* Read stdin to the end (or a lone "."), line by line, into the spool. */
static int spool_stdin(struct send *s) {
  char *rb = send_xmalloc(READ_CHUNK), *lb = send_xmalloc(LINE_CAP);
  size_t ll = 0;
  bool first = true, go = true;

  s->spool = tmpfile();
  if (!s->spool) {
    set_fail(s, EX_TEMPFAIL, "%s: cannot create a spool file: %s",
             s->o.prog, strerror(errno));
    goto out;
  }
  s->in_header = true;
  while (go) {
    ssize_t r = read(STDIN_FILENO, rb, READ_CHUNK);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      set_fail(s, EX_IOERR, "%s: cannot read the message from stdin: %s",
               s->o.prog, strerror(errno));
      goto out;
    }
    if (r == 0)
      break;
    size_t i = 0, len = (size_t)r;
    while (go && i < len) {
      const char *nl = memchr(rb + i, '\n', len - i);
      size_t seg = nl ? (size_t)(nl - (rb + i)) : len - i;
      size_t room = LINE_CAP - ll;
      if (seg > room || (!nl && seg == room)) {
        /* the line is longer than LINE_CAP: pass a piece on */
        memcpy(lb + ll, rb + i, room);
        i += room;
        go = on_piece(s, lb, LINE_CAP, first, false);
        first = false;
        ll = 0;
        continue;
      }
      memcpy(lb + ll, rb + i, seg);
      ll += seg;
      i += seg;
      if (nl) {
        i++;
        size_t n = ll;
        if (n && lb[n - 1] == '\r')
          n--;
        go = on_piece(s, lb, n, first, true);
        first = true;
        ll = 0;
      }
    }
  }
  if (go && (ll || !first)) /* a last line without a newline */
    on_piece(s, lb, ll, first, false);
  if (s->in_header)
    flush_header(s, false);
  if (fflush(s->spool) != 0 || ferror(s->spool))
    set_fail(s, EX_TEMPFAIL, "%s: cannot write the spool file: %s",
             s->o.prog, strerror(errno));
out:
  free(rb);
  free(lb);
  free(s->hdr);
  s->hdr = NULL;
  if (s->data_err && !s->fail_exit)
    set_fail(s, s->data_err, "%s", s->data_msg);
  return s->fail_exit;
}

/* ---- the SMTP side ---------------------------------------------------------- */

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
  const char *helo = s->o.helo ? s->o.helo : "localhost";
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
        !(tern_client_session_caps(c) & TERN_CAP_SMTPUTF8))
      set_fail(s, EX_UNAVAILABLE,
               "%s: the server does not offer SMTPUTF8, needed for a "
               "non-ASCII address", s->o.prog);
    else
      set_fail(s, EX_UNAVAILABLE, "%s: the server cannot take the "
               "message: %s", s->o.prog, tern_strerror(rc));
    tern_client_close(s->cl);
    return;
  }
  if (rc < 0) {
    set_fail(s, rc == TERN_EINVAL ? EX_DATAERR : EX_SOFTWARE,
             "%s: cannot send the message: %s", s->o.prog,
             tern_strerror(rc));
    tern_client_close(s->cl);
    return;
  }
  rc = tern_client_send_fd(s->cl, fileno(s->spool));
  if (rc == TERN_ESTATE)
    s->fd_pending = true; /* retried when the 354 arrives */
  else if (rc < 0) {
    set_fail(s, EX_SOFTWARE, "%s: cannot send the body: %s", s->o.prog,
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
      set_fail(s, class_exit(r->code, EX_UNAVAILABLE),
               "%s: STARTTLS refused by %s: %s", s->o.prog, s->endpoint,
               buf);
    else if (!(tern_client_session_caps(c) & TERN_CAP_STARTTLS) &&
             s->creds_need_tls && s->opportunistic)
      set_fail(s, EX_UNAVAILABLE,
               "%s: not sending credentials to %s without TLS: the server "
               "does not offer STARTTLS (--insecure-auth allows it)",
               s->o.prog, s->endpoint);
    else if (!(tern_client_session_caps(c) & TERN_CAP_STARTTLS))
      set_fail(s, EX_CONFIG, "%s: server does not offer STARTTLS",
               s->o.prog);
    else
      set_fail(s, EX_PROTOCOL, "%s: STARTTLS failed with %s: %s", s->o.prog,
               s->endpoint, tern_client_last_error(s->cl));
    break;
  case TERN_EAUTH:
    if (r)
      set_fail(s, class_exit(r->code, EX_NOPERM),
               "%s: authentication failed: %s", s->o.prog, buf);
    else
      set_fail(s, EX_NOPERM, "%s: authentication not possible: %s",
               s->o.prog, tern_client_last_error(s->cl));
    break;
  case TERN_ECLOSED:
    /* Without a reply the session only knows the connection ended; the
     * runtime knows why (a timeout, a reset, the server hanging up) and
     * says it in tern_client_last_error(). */
    if (r)
      set_fail(s, class_exit(r->code, EX_UNAVAILABLE),
               "%s: %s closed the session: %s", s->o.prog, s->endpoint, buf);
    else
      set_fail(s, EX_TEMPFAIL, "%s: %s", s->o.prog,
               tern_client_last_error(s->cl));
    break;
  default:
    if (r && r->code >= 400)
      set_fail(s, class_exit(r->code, EX_UNAVAILABLE),
               "%s: %s refused the session: %s", s->o.prog, s->endpoint,
               buf);
    else if (r)
      set_fail(s, EX_PROTOCOL, "%s: unexpected reply from %s: %s",
               s->o.prog, s->endpoint, buf);
    else
      set_fail(s, err == TERN_EPROTO ? EX_PROTOCOL : EX_TEMPFAIL,
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

static void on_connect(struct tern_client *cl, int status, void *ud) {
  struct send *s = ud;
  const char *e = tern_client_last_error(cl);
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
    set_fail(s, EX_NOHOST, "%s: cannot resolve the host name of %s: %s",
             s->o.prog, s->endpoint, e);
    break;
  case TERN_ECONNECT:
    if (contains_ci(e, "refused"))
      set_fail(s, EX_TEMPFAIL, "%s: connection refused by %s", s->o.prog,
               s->endpoint);
    else
      set_fail(s, EX_TEMPFAIL, "%s: cannot connect to %s: %s", s->o.prog,
               s->endpoint, e);
    break;
  case TERN_ETIMEDOUT:
    set_fail(s, EX_TEMPFAIL, "%s: timed out talking to %s: %s", s->o.prog,
             s->endpoint, e);
    break;
  case TERN_ETLS:
    if (s->creds_withheld)
      set_fail(s, EX_UNAVAILABLE, "%s: not sending credentials to %s: its TLS "
               "certificate is not verified (%s); trust its CA with "
               "--ca-file, or allow it with --no-verify or --insecure-auth",
               s->o.prog, s->endpoint, s->verify_why);
    else if (s->verify_failed)
      set_fail(s, EX_CONFIG, "%s: TLS certificate verification failed: %s",
               s->o.prog, s->verify_why);
    else
      set_fail(s, EX_PROTOCOL, "%s: TLS failure with %s: %s", s->o.prog,
               s->endpoint, e);
    break;
  case TERN_EAUTH:
    set_fail(s, EX_NOPERM, "%s: authentication failed: %s", s->o.prog, e);
    break;
  case TERN_EPROTO:
    set_fail(s, EX_PROTOCOL, "%s: protocol error from %s: %s", s->o.prog,
             s->endpoint, e);
    break;
  default:
    set_fail(s, EX_TEMPFAIL, "%s: %s: %s", s->o.prog, s->endpoint, e);
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
      set_fail(s, EX_SOFTWARE, "%s: the connection ended without an "
               "outcome: %s", s->o.prog,
               s->cl ? tern_client_last_error(s->cl) : "?");
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

static int deliver(struct send *s) {
  char urlbuf[1024];
  struct tern_client_options co;
  struct tern_client_callbacks cb;
  int rc;

  s->url = cli_url_starttls(s->o.server, s->o.starttls, urlbuf,
                            sizeof urlbuf);
  s->opportunistic = cli_url_opportunistic(s->url) && !s->o.starttls;
  cli_url_endpoint(s->url, s->endpoint, sizeof s->endpoint);
  s->lmtp = !strncmp(s->url, "lmtp:", 5);

  tern_client_callbacks_init(&cb);
  cb.on_reply = on_reply;
  cb.on_ready = on_ready;
  cb.on_message_done = on_message_done;
  cb.on_error = on_error;

  tern_client_options_init(&co);
  co.url = s->url;
  co.callbacks = &cb;
  co.ud = s;
  if (s->o.helo)
    co.session.ehlo_name = s->o.helo;
  if (s->o.starttls)
    co.session.starttls = TERN_STARTTLS_REQUIRED;
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
    co.session.starttls = TERN_STARTTLS_REQUIRED;
  co.tls_verify = true;
  co.verify = on_verify;
  co.ca_file = s->o.ca_file;
  co.auth_user = s->o.user;
  co.auth_password = s->password;
  co.auth_insecure_ok = s->o.insecure_auth || unix_sock;
  if (s->o.user)
    co.session.auth_required = true;
  co.connect_timeout_ms = s->o.timeout_ms;
  co.command_timeout_ms = s->o.timeout_ms;
  co.data_timeout_ms = s->o.timeout_ms;
  co.on_connect = on_connect;
  co.on_close = on_close;

  s->msg.from = s->from;
  s->msg.rcpts = s->trcpt;
  s->msg.size = s->size;
  s->msg.body = s->o.body ? s->o.body
                          : s->eightbit ? TERN_BODY_8BITMIME
                                        : TERN_BODY_UNSPECIFIED;
  s->msg.ret = s->o.ret;
  s->msg.envid = s->o.envid;
  s->msg.smtputf8 = non_ascii(s->from);
  for (size_t i = 0; i < s->msg.nrcpts; i++)
    if (non_ascii(s->trcpt[i].address))
      s->msg.smtputf8 = true;
  if (s->msg.nrcpts > co.session.max_recipients)
    co.session.max_recipients = (unsigned)s->msg.nrcpts;

  if (lseek(fileno(s->spool), 0, SEEK_SET) != 0) {
    fprintf(stderr, "%s: cannot rewind the spool file: %s\n", s->o.prog,
            strerror(errno));
    return EX_TEMPFAIL;
  }
  if (uv_loop_init(&s->loop) != 0) {
    fprintf(stderr, "%s: cannot create an event loop\n", s->o.prog);
    return EX_OSERR;
  }
  rc = tern_client_new(&s->cl, &s->loop, &co);
  if (rc == TERN_EINVAL) {
    fprintf(stderr, "%s: invalid server URL '%s' (smtp://HOST[:PORT], "
            "smtp+starttls://, smtps://, lmtp://, lmtp:///PATH)\n",
            s->o.prog, s->o.server);
    uv_loop_close(&s->loop);
    return EX_USAGE;
  }
  if (rc == TERN_ETLS) {
    fprintf(stderr, "%s: cannot load the CA certificates%s%s\n", s->o.prog,
            s->o.ca_file ? " from " : "", s->o.ca_file ? s->o.ca_file : "");
    uv_loop_close(&s->loop);
    return EX_CONFIG;
  }
  if (rc < 0) {
    fprintf(stderr, "%s: cannot create the client: %s\n", s->o.prog,
            tern_strerror(rc));
    uv_loop_close(&s->loop);
    return EX_OSERR;
  }
  rc = tern_client_connect(s->cl);
  if (rc < 0) {
    fprintf(stderr, "%s: cannot connect: %s\n", s->o.prog,
            tern_strerror(rc));
    tern_client_free(s->cl);
    s->cl = NULL;
    uv_loop_close(&s->loop);
    return EX_SOFTWARE;
  }
  uv_run(&s->loop, UV_RUN_DEFAULT);
  int ex = conclude(s);
  if (s->closed) {
    tern_client_free(s->cl);
    s->cl = NULL;
  }
  if (uv_loop_close(&s->loop) != 0 && s->o.verbose)
    fprintf(stderr, "%s: event loop not empty at exit\n", s->o.prog);
  return ex;
}

/* ---- options -------------------------------------------------------------------- */

static void usage(FILE *f, const char *prog) {
  fprintf(f,
    "usage: %s [options] [recipient ...] < message\n"
    "  -t            also take recipients from To:, Cc:, Bcc: (Bcc: is "
    "removed)\n"
    "  -i, -oi       a line with a lone \".\" does not end the message\n"
    "  -f, -r ADDR   envelope sender (default LOGIN@HOSTNAME)\n"
    "  -F NAME       full name for a From: header added when none exists\n"
    "  -v            print the dialogue on stderr: commands (>>>, AUTH never\n"
    "                shown) and the server's replies (<<<)\n"
    "  --version     print the version and exit\n"
    "  -B 7BIT|8BITMIME, -N never|success,failure,delay, -R full|hdrs, "
    "-V ENVID\n"
    "  --server URL  smtp://HOST[:PORT] (default smtp://127.0.0.1:25, env "
    "TERN_SERVER),\n"
    "                smtp+starttls://, smtps://, lmtp://, lmtp:///PATH\n"
    "  --starttls    require STARTTLS with a verified certificate\n"
    "  --no-verify   do not verify the server's certificate (with --user:\n"
    "                consent to send credentials over unverified TLS)\n"
    "  --ca-file F   trust the CA certificates in F (PEM)\n"
    "  --user U --password-file F   AUTH (password: first line of F);\n"
    "                only over TLS with a verified certificate, else exit "
    "69\n"
    "  --insecure-auth   consent to send credentials over any channel:\n"
    "                unverified TLS or plaintext (PLAIN/LOGIN included)\n"
    "  --helo NAME   EHLO name (default localhost)\n"
    "  --timeout S   connect and reply timeout in seconds\n"
    "Exit codes: sysexits(3); see the top of src/cli/send.c.\n",
    prog);
}

static int parse_notify(struct sopts *o, const char *v) {
  char buf[64];
  if (strlen(v) >= sizeof buf)
    return -1;
  snprintf(buf, sizeof buf, "%s", v);
  o->notify = 0;
  for (char *save = NULL, *t = strtok_r(buf, ",", &save); t;
       t = strtok_r(NULL, ",", &save)) {
    if (!strcasecmp(t, "never"))
      o->notify |= TERN_NOTIFY_NEVER;
    else if (!strcasecmp(t, "success"))
      o->notify |= TERN_NOTIFY_SUCCESS;
    else if (!strcasecmp(t, "failure"))
      o->notify |= TERN_NOTIFY_FAILURE;
    else if (!strcasecmp(t, "delay"))
      o->notify |= TERN_NOTIFY_DELAY;
    else
      return -1;
  }
  if ((o->notify & TERN_NOTIFY_NEVER) && o->notify != TERN_NOTIFY_NEVER)
    return -1;
  return o->notify ? 0 : -1;
}

/* -o options: -oi matters; the well-known harmless ones pass silently. */
static void opt_o(struct sopts *o, const char *v) {
  if (!strcmp(v, "i") || !strcasecmp(v, "itrue") || !strcmp(v, "i=true") ||
      !strcasecmp(v, "IgnoreDots") || !strcasecmp(v, "IgnoreDots=true")) {
    o->ignore_dots = true;
    return;
  }
  if (v[0] == 'd' || v[0] == 'e' || !strcmp(v, "m") || v[0] == 'Q' ||
      v[0] == 'L')
    return; /* delivery mode, error mode, me-too, queue dir, log level */
  fprintf(stderr, "%s: warning: ignoring option -o%s\n", o->prog, v);
}

static int parse_args(struct send *s, int argc, char **argv) {
  struct sopts *o = &s->o;
  bool opts_done = false;

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (opts_done || a[0] != '-' || a[1] == '\0') {
      if (a[0] == '-' && a[1] == '\0') {
        fprintf(stderr, "%s: '-' is not a recipient\n", o->prog);
        return EX_USAGE;
      }
      send_parse_addr_list(a, strlen(a), &s->arg_rcpt);
      continue;
    }
    if (!strcmp(a, "--")) {
      opts_done = true;
      continue;
    }
    if (a[1] == '-') { /* long options: --name VALUE or --name=VALUE */
      const char *name = a + 2, *eq = strchr(name, '=');
      size_t nl = eq ? (size_t)(eq - name) : strlen(name);
      static const char *const with_arg[] = {
          "server", "ca-file", "user", "password-file", "helo", "timeout"};
      const char *val = NULL;
      bool takes = false;
      for (size_t k = 0; k < sizeof with_arg / sizeof *with_arg; k++)
        if (strlen(with_arg[k]) == nl && !strncmp(name, with_arg[k], nl))
          takes = true;
      if (takes) {
        if (eq)
          val = eq + 1;
        else if (i + 1 < argc)
          val = argv[++i];
        else {
          fprintf(stderr, "%s: option --%.*s needs a value\n", o->prog,
                  (int)nl, name);
          return EX_USAGE;
        }
      } else if (eq) {
        fprintf(stderr, "%s: option --%.*s takes no value\n", o->prog,
                (int)nl, name);
        return EX_USAGE;
      }
#define IS(n) (strlen(n) == nl && !strncmp(name, n, nl))
      if (IS("server"))
        o->server = val;
      else if (IS("ca-file"))
        o->ca_file = val;
      else if (IS("user"))
        o->user = val;
      else if (IS("password-file"))
        o->password_file = val;
      else if (IS("helo"))
        o->helo = val;
      else if (IS("timeout")) {
        if (cli_parse_seconds_ms(val, &o->timeout_ms) != 0) {
          fprintf(stderr, "%s: bad --timeout '%s' (seconds)\n", o->prog,
                  val);
          return EX_USAGE;
        }
      } else if (IS("starttls"))
        o->starttls = true;
      else if (IS("no-verify"))
        o->no_verify = true;
      else if (IS("insecure-auth"))
        o->insecure_auth = true;
      else if (IS("verbose"))
        o->verbose++;
      else if (IS("version")) {
        printf("tern %s (library %s)\n", TERN_VERSION_STRING,
               tern_version_string());
        return -1;
      } else if (IS("help")) {
        usage(stdout, o->prog);
        return -1;
      } else {
        fprintf(stderr, "%s: unknown option '%s'\n", o->prog, a);
        usage(stderr, o->prog);
        return EX_USAGE;
      }
#undef IS
      continue;
    }
    /* short options, clustered as getopt does: -ti, -fuser, -f user */
    for (size_t j = 1; a[j]; j++) {
      char c = a[j];
      if (strchr("tivnmUGe", c)) {
        if (c == 't')
          o->extract = true;
        else if (c == 'i')
          o->ignore_dots = true;
        else if (c == 'v')
          o->verbose++;
        continue; /* -n -m -U -G -e: nothing to do without a queue */
      }
      if (!strchr("frFBNRVCLXhOopdMAbq", c)) {
        fprintf(stderr, "%s: unknown option '-%c'\n", o->prog, c);
        usage(stderr, o->prog);
        return EX_USAGE;
      }
      const char *v;
      if (a[j + 1])
        v = a + j + 1;
      else if (c == 'q')
        v = "";
      else if (i + 1 < argc)
        v = argv[++i];
      else {
        fprintf(stderr, "%s: option -%c needs a value\n", o->prog, c);
        return EX_USAGE;
      }
      switch (c) {
      case 'f':
      case 'r':
        o->sender = v;
        break;
      case 'F':
        o->fullname = v;
        break;
      case 'B':
        if (!strcasecmp(v, "8BITMIME"))
          o->body = TERN_BODY_8BITMIME;
        else if (!strcasecmp(v, "7BIT"))
          o->body = TERN_BODY_7BIT;
        else {
          fprintf(stderr, "%s: bad -B '%s' (7BIT or 8BITMIME)\n", o->prog,
                  v);
          return EX_USAGE;
        }
        break;
      case 'N':
        if (parse_notify(o, v) != 0) {
          fprintf(stderr, "%s: bad -N '%s' (never, or a list of "
                  "success,failure,delay)\n", o->prog, v);
          return EX_USAGE;
        }
        break;
      case 'R':
        if (!strcasecmp(v, "full"))
          o->ret = TERN_RET_FULL;
        else if (!strcasecmp(v, "hdrs"))
          o->ret = TERN_RET_HDRS;
        else {
          fprintf(stderr, "%s: bad -R '%s' (full or hdrs)\n", o->prog, v);
          return EX_USAGE;
        }
        break;
      case 'V':
        o->envid = v;
        break;
      case 'o':
        opt_o(o, v);
        break;
      case 'b':
        if (strcmp(v, "m") != 0) {
          fprintf(stderr, "%s: -b%s is not supported (tern has no queue "
                  "and no daemon mode here; only -bm)\n", o->prog, v);
          return EX_USAGE;
        }
        break;
      case 'q':
        fprintf(stderr, "%s: -q is not supported: tern has no queue\n",
                o->prog);
        return EX_USAGE;
      case 'h': /* hop count */
      case 'L': /* syslog label */
      case 'p': /* protocol:host */
      case 'A':
        break;
      default: /* C X O M d: configuration and debugging */
        fprintf(stderr, "%s: warning: ignoring option -%c %s\n", o->prog, c,
                v);
        break;
      }
      break; /* the value used the rest of this argument */
    }
  }
  return 0;
}

static int read_password(struct send *s) {
  FILE *f = fopen(s->o.password_file, "r");
  char buf[1024];
  if (!f) {
    fprintf(stderr, "%s: cannot read the password file %s: %s\n",
            s->o.prog, s->o.password_file, strerror(errno));
    return EX_NOINPUT;
  }
  if (!fgets(buf, sizeof buf, f)) {
    int e = ferror(f);
    fclose(f);
    fprintf(stderr, "%s: the password file %s is %s\n", s->o.prog,
            s->o.password_file, e ? "unreadable" : "empty");
    return EX_NOINPUT;
  }
  fclose(f);
  buf[strcspn(buf, "\r\n")] = '\0';
  s->password = send_xstrndup(buf, strlen(buf));
  explicit_bzero(buf, sizeof buf);
  return 0;
}

int tern_cli_send(int argc, char **argv, bool as_sendmail) {
  struct send *s = calloc(1, sizeof *s);
  int ex;
  if (!s) {
    fprintf(stderr, "tern send: out of memory\n");
    return EX_OSERR;
  }
  s->o.prog = as_sendmail ? "sendmail" : "tern send";
  s->o.server = getenv("TERN_SERVER");
  if (!s->o.server || !*s->o.server)
    s->o.server = "smtp://127.0.0.1:25";
  if (gethostname(s->host, sizeof s->host - 1) != 0 || !s->host[0])
    snprintf(s->host, sizeof s->host, "localhost");

  ex = parse_args(s, argc, argv);
  if (ex != 0) {
    ex = ex < 0 ? 0 : ex;
    goto out;
  }
  if (!!s->o.user != !!s->o.password_file) {
    fprintf(stderr, "%s: --user and --password-file go together (the "
            "password is never taken from the command line)\n", s->o.prog);
    ex = EX_USAGE;
    goto out;
  }
  if (s->o.ca_file && access(s->o.ca_file, R_OK) != 0) {
    fprintf(stderr, "%s: cannot read the CA file %s: %s\n", s->o.prog,
            s->o.ca_file, strerror(errno));
    ex = EX_NOINPUT;
    goto out;
  }
  if (s->o.password_file && (ex = read_password(s)) != 0)
    goto out;

  /* the sender */
  {
    const char *why = NULL;
    if (s->o.sender) {
      struct strvec v = {0};
      send_parse_addr_list(s->o.sender, strlen(s->o.sender), &v);
      if (v.n > 1) {
        fprintf(stderr, "%s: more than one sender address in '%s'\n",
                s->o.prog, s->o.sender);
        send_sv_free(&v);
        ex = EX_USAGE;
        goto out;
      }
      s->from = v.n ? finish_addr(s, v.v[0], &why) : send_xstrndup("", 0);
      send_sv_free(&v);
    } else {
      struct passwd *pw = getpwuid(getuid());
      const char *login = getenv("LOGNAME");
      if (pw && pw->pw_name)
        login = pw->pw_name;
      s->from = finish_addr(s, login && *login ? login : "nobody", &why);
    }
    if (!s->from) {
      fprintf(stderr, "%s: invalid sender address '%s': %s\n", s->o.prog,
              s->o.sender ? s->o.sender : "(login name)", why);
      ex = EX_USAGE;
      goto out;
    }
  }
  if (!s->o.extract && s->arg_rcpt.n == 0) {
    fprintf(stderr, "%s: no recipients given (use -t to take them from "
            "the message)\n", s->o.prog);
    ex = EX_USAGE;
    goto out;
  }

  ex = spool_stdin(s);
  if (ex != 0) {
    fprintf(stderr, "%s\n", s->fail_msg);
    goto out;
  }

  /* the recipients: arguments, then (-t) the headers' */
  {
    struct strvec *hv = s->resent_rcpt.n ? &s->resent_rcpt : &s->hdr_rcpt;
    struct strvec *srcs[2] = {&s->arg_rcpt, hv};
    for (int k = 0; k < 2; k++)
      for (size_t i = 0; i < srcs[k]->n; i++) {
        const char *why = NULL;
        char *a = finish_addr(s, srcs[k]->v[i], &why);
        if (!a) {
          fprintf(stderr, "%s: invalid recipient address '%s' %s: %s\n",
                  s->o.prog, srcs[k]->v[i],
                  k == 0 ? "on the command line" : "in the header", why);
          ex = k == 0 ? EX_USAGE : EX_DATAERR;
          goto out;
        }
        send_sv_push(&s->rcpt, a);
      }
  }
  if (s->rcpt.n == 0) {
    fprintf(stderr, "%s: no recipient addresses found in the message "
            "header\n", s->o.prog);
    ex = EX_DATAERR;
    goto out;
  }
  s->trcpt = calloc(s->rcpt.n, sizeof *s->trcpt);
  s->rcode = calloc(s->rcpt.n, sizeof *s->rcode);
  s->rtext = calloc(s->rcpt.n, sizeof *s->rtext);
  s->acc_map = calloc(s->rcpt.n, sizeof *s->acc_map);
  if (!s->trcpt || !s->rcode || !s->rtext || !s->acc_map) {
    fprintf(stderr, "%s: out of memory\n", s->o.prog);
    ex = EX_OSERR;
    goto out;
  }
  for (size_t i = 0; i < s->rcpt.n; i++) {
    s->trcpt[i].address = s->rcpt.v[i];
    s->trcpt[i].notify = s->o.notify;
  }
  s->msg.nrcpts = s->rcpt.n;
  if (s->o.verbose) {
    fprintf(stderr, "%s: from <%s> to", s->o.prog, s->from);
    for (size_t i = 0; i < s->rcpt.n; i++)
      fprintf(stderr, " <%s>", s->rcpt.v[i]);
    fprintf(stderr, ", %llu bytes, via %s\n", (unsigned long long)s->size,
            s->o.server);
  }

  ex = deliver(s);

out:
  if (s->spool)
    fclose(s->spool);
  if (s->password) {
    explicit_bzero(s->password, strlen(s->password));
    free(s->password);
  }
  if (s->rtext)
    for (size_t i = 0; i < s->msg.nrcpts; i++)
      free(s->rtext[i]);
  free(s->rtext);
  free(s->rcode);
  free(s->trcpt);
  free(s->acc_map);
  free(s->from);
  send_sv_free(&s->arg_rcpt);
  send_sv_free(&s->hdr_rcpt);
  send_sv_free(&s->resent_rcpt);
  send_sv_free(&s->rcpt);
  free(s);
  return ex;
}
