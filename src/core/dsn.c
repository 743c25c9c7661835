/*
 * Delivery status notifications (RFC 3464), composed as text: the
 * multipart/report (RFC 6522, formerly RFC 3462) head up to the third
 * part, and its tail. No I/O, no clock: every date, the Message-ID and
 * the boundary come from the caller (tern/dsn.h).
 *
 * Everything the caller gives is checked before a byte is written, so a
 * field can never smuggle a line break, a header field or a MIME
 * boundary into the report. Output grows in one buffer (struct out)
 * whose first allocation failure sticks and is reported once at the end.
 */
#include "internal.h"

#include "tern/dsn.h"

/* RFC 5322 §2.1.1: lines "MUST be no more than 998 characters, and
 * SHOULD be no more than 78 characters, excluding the CRLF". */
#define LINE_SOFT 78
#define LINE_HARD 998

/* RFC 2046 §5.1.1: a boundary is 1 to 70 characters. */
#define BOUNDARY_MAX 70

/* ---- the output buffer --------------------------------------------------- */

struct out {
  char *p;
  size_t len, cap;
  int err; /* 0 or TERN_ENOMEM, kept from the first failure */
};

static void put(struct out *o, const char *s, size_t n) {
  if (o->err || n == 0)
    return;
  if (n > o->cap - o->len) {
    size_t cap = o->cap ? o->cap : 1024;
    while (cap - o->len < n) {
      if (cap > SIZE_MAX / 2) {
        o->err = TERN_ENOMEM;
        return;
      }
      cap *= 2;
    }
    char *np = tern__malloc(NULL, cap);
    if (!np) {
      o->err = TERN_ENOMEM;
      return;
    }
    if (o->len)
      memcpy(np, o->p, o->len);
    tern__free(NULL, o->p);
    o->p = np;
    o->cap = cap;
  }
  memcpy(o->p + o->len, s, n);
  o->len += n;
}

static void puts_(struct out *o, const char *s) { put(o, s, strlen(s)); }

static void crlf(struct out *o) { put(o, "\r\n", 2); }

/* Hand the buffer over as a NUL-terminated string (an empty one when
 * nothing was written), or free it. */
static int finish(struct out *o, char **out, size_t *len) {
  put(o, "", 1); /* the NUL, which also makes sure there is a buffer */
  if (o->err) {
    tern__free(NULL, o->p);
    return o->err;
  }
  o->len--;
  *out = o->p;
  if (len)
    *len = o->len;
  return 0;
}

/* ---- checks -------------------------------------------------------------- */

static bool is_wsp(unsigned char c) { return c == ' ' || c == '\t'; }

/*
 * Is s[0..n) text that may stand in a header field or a line of the
 * report? No NUL, CR, LF or other control character (HTAB is allowed);
 * octets above 127 only when utf8, and then well-formed UTF-8 (RFC 6532
 * §3.2).
 */
static bool text_ok(const char *s, size_t n, bool utf8) {
  bool high = false;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if ((c < 32 && c != '\t') || c == 127)
      return false;
    if (c >= 128)
      high = true;
  }
  if (high && (!utf8 || !tern__utf8_valid((const unsigned char *)s, n)))
    return false;
  return true;
}

static bool field_ok(const char *s, bool utf8) {
  return s && *s && text_ok(s, strlen(s), utf8);
}

static bool opt_ok(const char *s, bool utf8) {
  return s == NULL || field_ok(s, utf8);
}

static bool has_wsp(const char *s) {
  for (; *s; s++)
    if (is_wsp((unsigned char)*s))
      return true;
  return false;
}

static bool is_ascii(const char *s) {
  for (; *s; s++)
    if ((unsigned char)*s >= 128)
      return false;
  return true;
}

/* RFC 2046 §5.1.1 bchars, without the space (tern/dsn.h): a boundary we
 * write inside quotes and that needs no care at a line's end. */
static bool boundary_ok(const char *b) {
  size_t n = b ? strlen(b) : 0;
  if (n < 1 || n > BOUNDARY_MAX)
    return false;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)b[i];
    if (!tern__is_alnum(c) && !strchr("'()+_,-./:=?", c))
      return false;
  }
  return true;
}

/* 1*3DIGIT at *p, moving past it. */
static bool digits3(const char **p) {
  size_t k = 0;
  while (k < 4 && tern__is_digit((unsigned char)(*p)[k]))
    k++;
  if (k < 1 || k > 3)
    return false;
  *p += k;
  return true;
}

/* RFC 3464 §2.3.4 status-code = DIGIT "." 1*3DIGIT "." 1*3DIGIT, the
 * class one of 2, 4, 5 (RFC 3463 §3.1). */
static bool status_ok(const char *s) {
  if (!s || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
    return false;
  s += 2;
  if (!digits3(&s) || *s++ != '.' || !digits3(&s))
    return false;
  return *s == '\0';
}

/* RFC 3464 §2.3.3 action-value, compared without case; NULL if none. */
static const char *action_name(const char *a) {
  static const char *const names[] = {"failed", "delayed", "delivered",
                                      "relayed", "expanded"};
  static const char *const upper[] = {"FAILED", "DELAYED", "DELIVERED",
                                      "RELAYED", "EXPANDED"};
  if (!a)
    return NULL;
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (tern__str_ieq(a, strlen(a), upper[i]))
      return names[i];
  return NULL;
}

/* RFC 3461 §4.2 ORCPT: addr-type ";" xtext (given here decoded). The
 * type is an atom; we accept letters, digits and "-" (rfc822, utf-8). */
static bool orcpt_ok(const char *s, bool utf8) {
  size_t t = 0;
  if (!field_ok(s, utf8))
    return false;
  while (tern__is_alnum((unsigned char)s[t]) || s[t] == '-')
    t++;
  if (t == 0 || s[t] != ';')
    return false;
  t++;
  while (is_wsp((unsigned char)s[t]))
    t++;
  return s[t] != '\0';
}

/* One line of a text that may hold line breaks: its length without the
 * break (LF, or CRLF: a CR only counts as part of the break when an LF
 * follows it), and in *next where the next line starts, or NULL when
 * this was the last. */
static size_t line_len(const char *line, const char **next) {
  const char *e = strchr(line, '\n');
  if (!e) {
    *next = NULL;
    return strlen(line);
  }
  *next = e + 1;
  return e > line && e[-1] == '\r' ? (size_t)(e - line) - 1
                                   : (size_t)(e - line);
}

/* The diagnostic: lines split on LF (an LF may have a CR before it; a
 * CR anywhere else is refused), each line text, at least one not
 * empty. */
static bool diagnostic_ok(const char *s, bool utf8) {
  bool any = false;
  if (!s)
    return true;
  for (const char *line = s; line;) {
    const char *next;
    size_t n = line_len(line, &next);
    if (!text_ok(line, n, utf8))
      return false;
    for (size_t i = 0; i < n; i++)
      if (!is_wsp((unsigned char)line[i]))
        any = true;
    line = next;
  }
  return any;
}

/* Does a line starting at p look like a delimiter of this boundary? */
static bool is_delim(const char *p, size_t n, const char *b) {
  size_t bl = strlen(b);
  return n >= bl + 2 && p[0] == '-' && p[1] == '-' && memcmp(p + 2, b, bl) == 0;
}

/* The caller's human text: lines as for the diagnostic, and none that
 * the reader would take for a boundary delimiter (RFC 2046 §5.1.1). */
static bool human_ok(const char *s, const char *b, bool utf8) {
  for (const char *line = s; line;) {
    const char *next;
    size_t t = line_len(line, &next);
    if (!text_ok(line, t, utf8))
      return false;
    /* caller_human() cuts lines longer than LINE_HARD: each piece
     * starts a line. */
    for (size_t k = 0; k < t || k == 0; k += LINE_HARD)
      if (is_delim(line + k, t - k, b))
        return false;
    line = next;
  }
  return true;
}

static int check(const struct tern_dsn *d) {
  bool u = d->utf8;
  if (!field_ok(d->reporting_mta, u) || has_wsp(d->reporting_mta) ||
      !field_ok(d->from, u) || !field_ok(d->to, u) ||
      !field_ok(d->date, false) || !field_ok(d->message_id, false) ||
      !boundary_ok(d->boundary) || !opt_ok(d->subject, u) ||
      !human_ok(d->human, d->boundary, u) || !opt_ok(d->envid, u) ||
      !opt_ok(d->received_from_mta, u) || !opt_ok(d->arrival_date, false))
    return TERN_EINVAL;
  size_t mid = strlen(d->message_id);
  if (mid < 3 || d->message_id[0] != '<' || d->message_id[mid - 1] != '>' ||
      has_wsp(d->message_id))
    return TERN_EINVAL;
  if (d->received_from_mta && !strchr(d->received_from_mta, ';'))
    return TERN_EINVAL;
  if (d->include != TERN_RET_UNSPECIFIED && d->include != TERN_RET_FULL &&
      d->include != TERN_RET_HDRS)
    return TERN_EINVAL;
  if (!d->rcpts || d->nrcpts < 1)
    return TERN_EINVAL;
  for (size_t i = 0; i < d->nrcpts; i++) {
    const struct tern_dsn_rcpt *r = &d->rcpts[i];
    if (!field_ok(r->final_rcpt, u) || (r->orcpt && !orcpt_ok(r->orcpt, u)) ||
        !action_name(r->action) || !status_ok(r->status) ||
        !opt_ok(r->remote_mta, u) ||
        (r->remote_mta && has_wsp(r->remote_mta)) ||
        !diagnostic_ok(r->diagnostic, u) || !opt_ok(r->last_attempt, false) ||
        !opt_ok(r->will_retry_until, false))
      return TERN_EINVAL;
  }
  return 0;
}

/* ---- writing ------------------------------------------------------------- */

/*
 * Write v[0..n) (blanks at its ends dropped) on a line that already
 * holds `col` octets, breaking the text into lines: at a run of WSP when the
 * next word would pass LINE_SOFT, and inside a word only when it would pass
 * LINE_HARD. A header field (`fold`) keeps the WSP at the start of the next
 * line, as RFC 5322 §2.2.3 folding requires; body text (!fold) drops it and
 * starts the next line with `indent` instead. Ends with CRLF.
 */
static void wrap(struct out *o, size_t col, const char *v, size_t n, bool fold,
                 const char *indent) {
  size_t i = 0, ind = strlen(indent);
  while (n && is_wsp((unsigned char)v[n - 1]))
    n--;
  while (i < n && is_wsp((unsigned char)v[i]))
    i++;
  bool start = true; /* nothing of v on this line yet */
  while (i < n) {
    size_t ws = i, we, j;
    while (ws < n && is_wsp((unsigned char)v[ws]))
      ws++; /* [i, ws) blanks, then the word [ws, we) */
    for (j = ws; j < n && !is_wsp((unsigned char)v[j]);)
      j++;
    we = j;
    if (!start && col + (we - i) > LINE_SOFT) {
      crlf(o);
      if (fold) {
        col = 0; /* the blanks begin the continuation line */
      } else {
        put(o, indent, ind);
        col = ind;
        i = ws;
      }
    }
    if (start)
      i = ws;
    /* The blanks and the word, cut where LINE_HARD would be passed. */
    while (i < we) {
      size_t room = LINE_HARD > col ? LINE_HARD - col : 0;
      size_t k = we - i < room ? we - i : room;
      put(o, v + i, k);
      col += k;
      i += k;
      if (i < we) {
        put(o, "\r\n ", 3);
        col = 1;
      }
    }
    start = false;
  }
  crlf(o);
}

/* "Name: " and the value, folded. */
static void field(struct out *o, const char *name, const char *v, size_t n) {
  puts_(o, name);
  put(o, ": ", 2);
  wrap(o, strlen(name) + 2, v, n, true, "");
}

static void fields(struct out *o, const char *name, const char *v) {
  field(o, name, v, strlen(v));
}

/* A field whose value is "prefix" followed by v: built in `tmp` first. */
static void field2(struct out *o, struct out *tmp, const char *name,
                   const char *prefix, const char *v) {
  tmp->len = 0;
  puts_(tmp, prefix);
  puts_(tmp, v);
  if (tmp->err) {
    o->err = tmp->err;
    return;
  }
  field(o, name, tmp->p, tmp->len);
}

/* The diagnostic's reply lines joined with one space each (tern/dsn.h),
 * into tmp after its current contents. */
static void join_lines(struct out *tmp, const char *s) {
  bool first = true;
  for (const char *line = s; line;) {
    const char *next;
    size_t t = line_len(line, &next);
    while (t && is_wsp((unsigned char)line[t - 1]))
      t--;
    size_t b = 0;
    while (b < t && is_wsp((unsigned char)line[b]))
      b++;
    if (b < t) {
      if (!first)
        put(tmp, " ", 1);
      put(tmp, line + b, t - b);
      first = false;
    }
    line = next;
  }
}

static bool utf8_addr(const char *a) { return !is_ascii(a); }

static bool any_action(const struct tern_dsn *d, const char *name) {
  for (size_t i = 0; i < d->nrcpts; i++)
    if (strcmp(action_name(d->rcpts[i].action), name) == 0)
      return true;
  return false;
}

static const char *default_subject(const struct tern_dsn *d) {
  if (any_action(d, "failed"))
    return "Undelivered Mail Returned to Sender";
  if (any_action(d, "delayed"))
    return "Delayed Mail (still being retried)";
  return "Successful Mail Delivery Report";
}

/* A paragraph of body text, wrapped at LINE_SOFT. */
static void para(struct out *o, const char *text) {
  wrap(o, 0, text, strlen(text), false, "");
}

/* Our words for people: what happened, then each recipient with the
 * reply that decided it. */
static void default_human(struct out *o, struct out *tmp,
                          const struct tern_dsn *d) {
  tmp->len = 0;
  puts_(tmp, "This is the mail system at ");
  puts_(tmp, d->reporting_mta);
  puts_(tmp, ".");
  if (tmp->err) {
    o->err = tmp->err;
    return;
  }
  wrap(o, 0, tmp->p, tmp->len, false, "");
  crlf(o);
  if (any_action(d, "failed")) {
    para(o, "Your message could not be delivered to one or more "
            "recipients; the mail system has given up on them. "
            "The recipients and the reasons are listed below.");
    crlf(o);
  }
  if (any_action(d, "delayed")) {
    para(o, "Your message has not been delivered yet to one or more "
            "recipients. The mail system will keep trying; you do not "
            "need to send it again.");
    crlf(o);
  }
  if (any_action(d, "delivered") || any_action(d, "relayed") ||
      any_action(d, "expanded")) {
    para(o, "Your message was delivered to the recipients listed below "
            "as delivered, or passed on for them (relayed, expanded), as "
            "you asked.");
    crlf(o);
  }
  if (d->include == TERN_RET_FULL)
    para(o, "Your message is attached after the delivery report.");
  else if (d->include == TERN_RET_HDRS)
    para(o, "The header of your message is attached after the delivery "
            "report.");
  if (d->include != TERN_RET_UNSPECIFIED)
    crlf(o);
  for (size_t i = 0; i < d->nrcpts; i++) {
    const struct tern_dsn_rcpt *r = &d->rcpts[i];
    tmp->len = 0;
    puts_(tmp, "<");
    puts_(tmp, r->final_rcpt);
    puts_(tmp, ">: ");
    puts_(tmp, action_name(r->action));
    puts_(tmp, " (");
    puts_(tmp, r->status);
    puts_(tmp, ")");
    if (tmp->err) {
      o->err = tmp->err;
      return;
    }
    wrap(o, 0, tmp->p, tmp->len, false, "    ");
    if (r->diagnostic) {
      tmp->len = 0;
      /* only a remote MTA "said" anything; a reply made here (a null
       * MX, a failed lookup, a pipe's status) is the reason */
      if (r->remote_mta) {
        puts_(tmp, r->remote_mta);
        puts_(tmp, " said: ");
      } else {
        puts_(tmp, "Reason: ");
      }
      join_lines(tmp, r->diagnostic);
      if (tmp->err) {
        o->err = tmp->err;
        return;
      }
      put(o, "    ", 4);
      wrap(o, 4, tmp->p, tmp->len, false, "    ");
    }
    if (r->will_retry_until && strcmp(action_name(r->action), "delayed") == 0) {
      tmp->len = 0;
      puts_(tmp, "Will retry until ");
      puts_(tmp, r->will_retry_until);
      puts_(tmp, ".");
      if (tmp->err) {
        o->err = tmp->err;
        return;
      }
      put(o, "    ", 4);
      wrap(o, 4, tmp->p, tmp->len, false, "    ");
    }
  }
}

/* The caller's text, one output line per input line, CRLF. */
static void caller_human(struct out *o, const char *s) {
  for (const char *line = s; line;) {
    const char *next;
    size_t t = line_len(line, &next);
    if (!next && t == 0)
      return; /* text ended with a line break */
    /* Only lines longer than allowed are cut; the caller's layout stays
     * as it is otherwise. */
    size_t i = 0;
    do {
      size_t k = t - i < LINE_HARD ? t - i : LINE_HARD;
      put(o, line + i, k);
      i += k;
      crlf(o);
    } while (i < t);
    line = next;
  }
}

static void delim(struct out *o, const struct tern_dsn *d) {
  put(o, "\r\n--", 4);
  puts_(o, d->boundary);
  crlf(o);
}

/* One recipient's block (RFC 3464 §2.3, in its order). */
static void rcpt_block(struct out *o, struct out *tmp,
                       const struct tern_dsn_rcpt *r) {
  const char *action = action_name(r->action);
  if (r->orcpt)
    fields(o, "Original-Recipient", r->orcpt);
  field2(o, tmp, "Final-Recipient",
         utf8_addr(r->final_rcpt) ? "utf-8; " : "rfc822; ", r->final_rcpt);
  fields(o, "Action", action);
  fields(o, "Status", r->status);
  if (r->remote_mta)
    field2(o, tmp, "Remote-MTA", "dns; ", r->remote_mta);
  if (r->diagnostic) {
    tmp->len = 0;
    puts_(tmp, "smtp; ");
    join_lines(tmp, r->diagnostic);
    if (tmp->err)
      o->err = tmp->err;
    else
      field(o, "Diagnostic-Code", tmp->p, tmp->len);
  }
  if (r->last_attempt)
    fields(o, "Last-Attempt-Date", r->last_attempt);
  if (r->will_retry_until && strcmp(action, "delayed") == 0)
    fields(o, "Will-Retry-Until", r->will_retry_until);
}

static void head(struct out *o, struct out *tmp, const struct tern_dsn *d) {
  bool eight = d->utf8 || d->eight_bit;

  /* The top header (RFC 6522 §3: multipart/report is the outermost
   * entity; RFC 3834 §5: Auto-Submitted on every automatic reply). */
  fields(o, "From", d->from);
  fields(o, "To", d->to);
  fields(o, "Subject", d->subject ? d->subject : default_subject(d));
  fields(o, "Date", d->date);
  fields(o, "Message-ID", d->message_id);
  fields(o, "Auto-Submitted", "auto-replied");
  fields(o, "MIME-Version", "1.0");
  tmp->len = 0;
  puts_(tmp, "multipart/report; report-type=");
  puts_(tmp, d->utf8 ? "global-delivery-status" : "delivery-status");
  puts_(tmp, "; boundary=\"");
  puts_(tmp, d->boundary);
  puts_(tmp, "\"");
  if (tmp->err)
    o->err = tmp->err;
  else
    field(o, "Content-Type", tmp->p, tmp->len);
  if (eight)
    fields(o, "Content-Transfer-Encoding", "8bit");
  crlf(o);
  puts_(o, "This is a MIME-encapsulated message.\r\n");

  /* 1. For people. */
  delim(o, d);
  fields(o, "Content-Description", "Notification");
  fields(o, "Content-Type",
         d->utf8 ? "text/plain; charset=utf-8"
                 : "text/plain; charset=us-ascii");
  if (d->utf8)
    fields(o, "Content-Transfer-Encoding", "8bit");
  crlf(o);
  if (d->human)
    caller_human(o, d->human);
  else
    default_human(o, tmp, d);

  /* 2. For programs: per-message fields, then a block per recipient,
   * each after a blank line (RFC 3464 §2.1). */
  delim(o, d);
  fields(o, "Content-Description", "Delivery report");
  fields(o, "Content-Type",
         d->utf8 ? "message/global-delivery-status"
                 : "message/delivery-status");
  if (d->utf8)
    fields(o, "Content-Transfer-Encoding", "8bit");
  crlf(o);
  if (d->envid)
    fields(o, "Original-Envelope-Id", d->envid);
  field2(o, tmp, "Reporting-MTA", "dns; ", d->reporting_mta);
  if (d->received_from_mta)
    fields(o, "Received-From-MTA", d->received_from_mta);
  if (d->arrival_date)
    fields(o, "Arrival-Date", d->arrival_date);
  for (size_t i = 0; i < d->nrcpts; i++) {
    crlf(o);
    rcpt_block(o, tmp, &d->rcpts[i]);
  }

  /* 3. The original or its header (RFC 6522 §3, RFC 6533 §6), or the
   * end. */
  if (d->include == TERN_RET_UNSPECIFIED) {
    put(o, "\r\n--", 4);
    puts_(o, d->boundary);
    put(o, "--\r\n", 4);
    return;
  }
  delim(o, d);
  if (d->include == TERN_RET_FULL) {
    fields(o, "Content-Description", "Original message");
    fields(o, "Content-Type", d->utf8 ? "message/global" : "message/rfc822");
  } else {
    fields(o, "Content-Description", "Original message header");
    fields(o, "Content-Type",
           d->utf8 ? "message/global-headers" : "text/rfc822-headers");
  }
  if (eight)
    fields(o, "Content-Transfer-Encoding", "8bit");
  crlf(o);
}

/* The caller's struct over our defaults (size tag, DESIGN §1), checked. */
static int take(struct tern_dsn *d, const struct tern_dsn *in) {
  if (!in)
    return TERN_EINVAL;
  tern_dsn_init(d);
  if (tern__copy_sized(d, sizeof *d, in) != 0)
    return TERN_EINVAL;
  return check(d);
}

/*
 * tern_dsn_head() checks the whole report (take(), check()), then writes
 * it from the top header to the third part's blank line (or to the
 * closing delimiter when nothing is included). See tern/dsn.h.
 */
/* What both calls begin with: the outputs cleared, the report taken and
 * checked into *d. Returns 0 or the error to give. */
static int begin_report(struct tern_dsn *d, const struct tern_dsn *in,
                        char **out, size_t *len) {
  if (!out)
    return TERN_EINVAL;
  *out = NULL;
  if (len)
    *len = 0;
  return take(d, in);
}

int tern_dsn_head(const struct tern_dsn *in, char **out, size_t *len) {
  struct tern_dsn d;
  struct out o = {0}, tmp = {0};
  int rc = begin_report(&d, in, out, len);
  if (rc)
    return rc;
  head(&o, &tmp, &d);
  tern__free(NULL, tmp.p);
  if (tmp.err && !o.err)
    o.err = tmp.err;
  return finish(&o, out, len);
}

/*
 * tern_dsn_tail() checks the report as tern_dsn_head() does, then
 * writes the closing delimiter. The CRLF before "--" belongs to the
 * delimiter (RFC 2046 §5.1.1), so an original that ends with CRLF keeps
 * it and one that does not still gets its delimiter on a line of its
 * own.
 */
int tern_dsn_tail(const struct tern_dsn *in, char **out, size_t *len) {
  struct tern_dsn d;
  struct out o = {0};
  int rc = begin_report(&d, in, out, len);
  if (rc)
    return rc;
  if (d.include != TERN_RET_UNSPECIFIED) {
    put(&o, "\r\n--", 4);
    puts_(&o, d.boundary);
    put(&o, "--\r\n", 4);
  }
  return finish(&o, out, len);
}
