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
 *   those that could change meaning). -bp and -q (alone) are the queue of
 *   tern serve: `tern queue list` and `tern queue flush`, -C FILE naming
 *   its configuration; the other modes (-bd, -bs, -bi, -bv, -bt,
 *   -qINTERVAL, ...) are refused with EX_USAGE.
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
 * With --mx DOMAIN a failed connect exits from the reply the client made
 * (tern_client_failure_reply, printed): 5.1.x (null MX, no such domain)
 * EX_NOHOST, another 5xx (REQUIRETLS cannot be met, 5.7.30)
 * EX_UNAVAILABLE, 4xx (DNS failure, no host answered, TLS policy not
 * met anywhere: the next try may do better) EX_TEMPFAIL. See tern-send(1).
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
#include "send.h"

#define HDR_MAX (1024u * 1024u) /* header block buffered for -t / -F */
#define LINE_CAP 65536u         /* longest piece of a line handled at once */
#define READ_CHUNK 65536u

/* ---- small helpers ------------------------------------------------------- */

/* See send.h. */
void send_set_fail(struct send *s, int ex, const char *fmt, ...) {
  if (s->fail_exit)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->fail_msg, sizeof s->fail_msg, fmt, ap);
  va_end(ap);
  s->fail_exit = ex;
}

/* ---- addresses ----------------------------------------------------------- */

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

/* ---- spooling stdin ------------------------------------------------------ */

static void spool_write(struct send *s, const void *p, size_t n) {
  if (n && fwrite(p, 1, n, s->spool) != n && !s->fail_exit)
    send_set_fail(s, EX_TEMPFAIL, "%s: cannot write the spool file: %s",
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
    send_set_fail(s, EX_OSERR, "%s: no random bytes for the Message-ID: %s",
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
    send_set_fail(s, EX_TEMPFAIL, "%s: cannot create a spool file: %s",
                  s->o.prog, strerror(errno));
    goto out;
  }
  s->in_header = true;
  while (go) {
    ssize_t r = read(STDIN_FILENO, rb, READ_CHUNK);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      send_set_fail(s, EX_IOERR, "%s: cannot read the message from stdin: %s",
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
    send_set_fail(s, EX_TEMPFAIL, "%s: cannot write the spool file: %s",
                  s->o.prog, strerror(errno));
out:
  free(rb);
  free(lb);
  free(s->hdr);
  s->hdr = NULL;
  if (s->data_err && !s->fail_exit)
    send_set_fail(s, s->data_err, "%s", s->data_msg);
  return s->fail_exit;
}

/* ---- the command --------------------------------------------------------- */

/* --password-file: the password is its first line. */
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

/* The options that need each other or a file: --user with
 * --password-file (read now), a readable --ca-file. */
static int check_credentials(struct send *s) {
  if (!!s->o.user != !!s->o.password_file) {
    fprintf(stderr, "%s: --user and --password-file go together (the "
            "password is never taken from the command line)\n", s->o.prog);
    return EX_USAGE;
  }
  if (s->o.ca_file && access(s->o.ca_file, R_OK) != 0) {
    fprintf(stderr, "%s: cannot read the CA file %s: %s\n", s->o.prog,
            s->o.ca_file, strerror(errno));
    return EX_NOINPUT;
  }
  return s->o.password_file ? read_password(s) : 0;
}

/* The envelope sender: -f/-r (one address, or "" / "<>" for the null
 * sender), else LOGIN@HOSTNAME. */
static int resolve_sender(struct send *s) {
  const char *why = NULL;
  if (s->o.sender) {
    struct strvec v = {0};
    send_parse_addr_list(s->o.sender, strlen(s->o.sender), &v);
    if (v.n > 1) {
      fprintf(stderr, "%s: more than one sender address in '%s'\n",
              s->o.prog, s->o.sender);
      send_sv_free(&v);
      return EX_USAGE;
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
    return EX_USAGE;
  }
  return 0;
}

/* The recipients: the arguments', then (-t) the header's — the Resent-
 * fields' when there are any. */
/* --mx DOMAIN: the message goes to DOMAIN's mail hosts in one
 * transaction, so every recipient must be in DOMAIN (tern-send(1)); one
 * elsewhere would be handed to a host that is not its MX. Compared
 * without regard to ASCII case, a trailing dot ignored. Returns 0 or
 * EX_USAGE (printed). */
static int check_mx_domain(const struct send *s) {
  if (!s->o.mx)
    return 0;
  size_t mlen = strlen(s->o.mx);
  if (mlen && s->o.mx[mlen - 1] == '.')
    mlen--;
  for (size_t i = 0; i < s->rcpt.n; i++) {
    const char *at = strrchr(s->rcpt.v[i], '@');
    const char *dom = at ? at + 1 : "";
    size_t dlen = strlen(dom);
    if (dlen && dom[dlen - 1] == '.')
      dlen--;
    if (dlen == mlen && strncasecmp(dom, s->o.mx, mlen) == 0)
      continue;
    fprintf(stderr, "%s: --mx %s: recipient <%s> is not in %.*s (the "
            "message goes to that domain's mail hosts only: one domain a "
            "run)\n", s->o.prog, s->o.mx, s->rcpt.v[i], (int)mlen, s->o.mx);
    return EX_USAGE;
  }
  return 0;
}

static int resolve_recipients(struct send *s) {
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
        return k == 0 ? EX_USAGE : EX_DATAERR;
      }
      send_sv_push(&s->rcpt, a);
    }
  if (s->rcpt.n == 0) {
    fprintf(stderr, "%s: no recipient addresses found in the message "
            "header\n", s->o.prog);
    return EX_DATAERR;
  }
  return check_mx_domain(s);
}

/* The session's recipient list and the per-recipient outcome slots. */
static int prepare_envelope(struct send *s) {
  s->trcpt = calloc(s->rcpt.n, sizeof *s->trcpt);
  s->rcode = calloc(s->rcpt.n, sizeof *s->rcode);
  s->rtext = calloc(s->rcpt.n, sizeof *s->rtext);
  s->acc_map = calloc(s->rcpt.n, sizeof *s->acc_map);
  if (!s->trcpt || !s->rcode || !s->rtext || !s->acc_map) {
    fprintf(stderr, "%s: out of memory\n", s->o.prog);
    return EX_OSERR;
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
  return 0;
}

/* Everything a run of tern send gets before it reads the options. */
static struct send *send_new(bool as_sendmail) {
  struct send *s = calloc(1, sizeof *s);
  if (!s)
    return NULL;
  s->o.prog = as_sendmail ? "sendmail" : "tern send";
  s->o.server = getenv("TERN_SERVER");
  if (!s->o.server || !*s->o.server)
    s->o.server = "smtp://127.0.0.1:25";
  if (gethostname(s->host, sizeof s->host - 1) != 0 || !s->host[0])
    snprintf(s->host, sizeof s->host, "localhost");
  return s;
}

static void send_free(struct send *s) {
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
}

/* The options, the sender, stdin into the spool, the recipients, then
 * one session; each step prints why it stops. */
/* sendmail -bp / -q: `tern queue [-c FILE] list|flush`, as Postfix's
 * sendmail runs mailq / postqueue -f. Recipients, if any, are ignored,
 * as sendmail does. */
static int run_queue(const struct sopts *o) {
  char *qargv[5];
  int n = 0;
  qargv[n++] = "queue";
  if (o->config != NULL) {
    qargv[n++] = "-c";
    qargv[n++] = (char *)o->config;
  }
  qargv[n++] = (char *)o->queue_cmd;
  qargv[n] = NULL;
  return tern_cli_queue(n, qargv);
}

static int run(struct send *s, int argc, char **argv) {
  int ex = send_parse_args(s, argc, argv);
  if (ex != 0)
    return ex < 0 ? 0 : ex;
  if (s->o.queue_cmd != NULL)
    return run_queue(&s->o);
  if (s->o.config != NULL)
    fprintf(stderr, "%s: warning: ignoring option -C %s\n", s->o.prog,
            s->o.config);
  if ((ex = check_credentials(s)) != 0 || (ex = resolve_sender(s)) != 0)
    return ex;
  if (!s->o.extract && s->arg_rcpt.n == 0) {
    fprintf(stderr, "%s: no recipients given (use -t to take them from "
            "the message)\n", s->o.prog);
    return EX_USAGE;
  }
  if ((ex = spool_stdin(s)) != 0) {
    fprintf(stderr, "%s\n", s->fail_msg);
    return ex;
  }
  if ((ex = resolve_recipients(s)) != 0 || (ex = prepare_envelope(s)) != 0)
    return ex;
  return send_deliver(s);
}

int tern_cli_send(int argc, char **argv, bool as_sendmail) {
  struct send *s = send_new(as_sendmail);
  if (!s) {
    fprintf(stderr, "tern send: out of memory\n");
    return EX_OSERR;
  }
  int ex = run(s, argc, argv);
  send_free(s);
  return ex;
}
