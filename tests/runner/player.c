/*
 * player — plays a tern server transcript (a tests/transcripts/server/ file)
 * against the sans-IO server session, through the public API only.
 *
 *   player [MODE] FILE.smtp
 *
 * MODE (default: all of them, one after another):
 *   --whole        each input segment in one feed() call
 *   --bytewise     one byte per feed() call
 *   --splits       for every split point k of the whole input, feed
 *                  [0,k) then [k,len), a fresh session each time (long
 *                  inputs: at most SPLIT_RUNS runs, run r splitting at
 *                  every k with k % SPLIT_RUNS == r, so every boundary is
 *                  still covered)
 *   --random SEED  chunk sizes 1..64 drawn from SEED, 20 iterations
 *                  (without --random the default seed is TERN_TEST_SEED
 *                  from the environment, else time-based; printed on
 *                  failure)
 *   --nomem        fail each allocation in turn: the session must fail
 *                  cleanly (TERN_ENOMEM from _new) and leak nothing
 *   --trace        play whole once and print the actual trace (to help
 *                  writing a transcript; judge it, do not just copy it)
 *
 * Every mode must produce the identical trace, equal to the S:/E: lines
 * of the file. The file format is documented in tests/transcripts/README.md;
 * in short:
 *
 *   # comment                  (blank lines are ignored too)
 *   @config KEY=VALUE          session config, before the first C: line
 *   @decide EVENT VERDICT [CODE ENH TEXT...]
 *                              scripted answer for the next firing of that
 *                              decision callback (FIFO per event, wherever
 *                              the line stands in the file)
 *   C: text                    client sends text + CRLF
 *   @ehlo [NAME]               "C: EHLO NAME" (client.example), its helo
 *                              event and the default EHLO reply (the
 *                              lines of ehlo_default_reply); only with a
 *                              @config that leaves that reply as it is
 *   @tls @eof @timeout @close [CODE ENH TEXT...]
 *                              runtime actions at this point of the input
 *   S: line                    expected reply line (no CRLF)
 *   E: event                   expected application event
 *
 * C: escapes: \r \n \t \0 \\ \xHH. The rule for "no CRLF": a C: line whose
 * LAST character is a single, unescaped backslash is sent without the
 * CRLF, and the backslash itself is not sent ("C: DA\" then "C: TA" sends
 * "DATA\r\n"). To end a line with a literal backslash, write "\\".
 * S:/E: lines ending in '*' match any suffix (a prefix match).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <tern/tern.h>

#define SPLIT_RUNS 400
#define RANDOM_ITERATIONS 20

/* ---- small utilities ----------------------------------------------------- */

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (p == NULL) {
    fprintf(stderr, "player: out of memory\n");
    exit(2);
  }
  return p;
}

static void *xrealloc(void *p, size_t n) {
  p = realloc(p, n ? n : 1);
  if (p == NULL) {
    fprintf(stderr, "player: out of memory\n");
    exit(2);
  }
  return p;
}

static char *xstrndup(const char *s, size_t n) {
  char *d = xmalloc(n + 1);
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}

/* A growable byte buffer. */
struct buf {
  char *p;
  size_t len, cap;
};

static void buf_add(struct buf *b, const void *src, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + n + 1) cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
  }
  if (n) memcpy(b->p + b->len, src, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void buf_adds(struct buf *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_printf(struct buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void buf_printf(struct buf *b, const char *fmt, ...) {
  char tmp[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n < sizeof tmp) {
    buf_add(b, tmp, (size_t)n);
    return;
  }
  char *big = xmalloc((size_t)n + 1);
  va_start(ap, fmt);
  vsnprintf(big, (size_t)n + 1, fmt, ap);
  va_end(ap);
  buf_add(b, big, (size_t)n);
  free(big);
}

static void buf_free(struct buf *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

/* Event-field escaping: controls, DEL and backslash as escapes; 8-bit
 * bytes (UTF-8) pass as they are so transcripts stay readable. */
static void esc_field(struct buf *b, const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '\\') buf_adds(b, "\\\\");
    else if (c == '\r') buf_adds(b, "\\r");
    else if (c == '\n') buf_adds(b, "\\n");
    else if (c == '\t') buf_adds(b, "\\t");
    else if (c < 0x20 || c == 0x7f) buf_printf(b, "\\x%02X", c);
    else buf_add(b, &s[i], 1);
  }
}

/* Message-content escaping: everything outside printable ASCII. */
static void esc_data(struct buf *b, const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '\\') buf_adds(b, "\\\\");
    else if (c == '"') buf_adds(b, "\\\"");
    else if (c == '\r') buf_adds(b, "\\r");
    else if (c == '\n') buf_adds(b, "\\n");
    else if (c == '\t') buf_adds(b, "\\t");
    else if (c < 0x20 || c >= 0x7f) buf_printf(b, "\\x%02X", c);
    else buf_add(b, &s[i], 1);
  }
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Decode the escapes of a C: line (or a reply text) into b. Returns false
 * on a bad escape. *no_crlf is set when the line ends with a lone "\". */
static bool unescape(struct buf *b, const char *s, size_t n, bool *no_crlf) {
  if (no_crlf) *no_crlf = false;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c != '\\') {
      buf_add(b, &c, 1);
      continue;
    }
    if (i + 1 == n) {
      if (no_crlf == NULL) return false;
      *no_crlf = true;
      return true;
    }
    char e = s[++i];
    switch (e) {
    case 'r': buf_adds(b, "\r"); break;
    case 'n': buf_adds(b, "\n"); break;
    case 't': buf_adds(b, "\t"); break;
    case '0': buf_add(b, "", 1); break;
    case '\\': buf_adds(b, "\\"); break;
    case 'x': {
      if (i + 2 >= n) return false;
      int h = hexval(s[i + 1]), l = hexval(s[i + 2]);
      if (h < 0 || l < 0) return false;
      char v = (char)(h * 16 + l);
      buf_add(b, &v, 1);
      i += 2;
      break;
    }
    default: return false;
    }
  }
  return true;
}

/* ---- the script ---------------------------------------------------------- */

enum ev {
  EV_CONNECT, EV_HELO, EV_AUTH, EV_MAIL, EV_RCPT, EV_DATA_START, EV_DATA_END,
  EV_VRFY, EV_EXPN, EV_XCLIENT, EV_UNKNOWN, EV_DATA, EV_COUNT
};

static const char *const ev_names[EV_COUNT] = {
    "connect", "helo", "auth", "mail", "rcpt", "data_start", "data_end",
    "vrfy", "expn", "xclient", "unknown", "data"};

static const enum tern_server_event ev_core[EV_COUNT] = {
    TERN_EV_CONNECT, TERN_EV_HELO, TERN_EV_AUTH, TERN_EV_MAIL, TERN_EV_RCPT,
    TERN_EV_DATA_START, TERN_EV_DATA_END, TERN_EV_VRFY, TERN_EV_EXPN,
    TERN_EV_XCLIENT, TERN_EV_UNKNOWN, TERN_EV_NONE};

enum verdict { V_NOW, V_PENDING, V_ERROR, V_PAUSE };

struct decision {
  enum verdict verdict;
  bool has_reply;
  struct tern_reply reply; /* strings owned by the decision */
  int line;
};

enum action_kind { A_INPUT, A_TLS, A_EOF, A_TIMEOUT, A_CLOSE };

struct action {
  enum action_kind kind;
  size_t off, len; /* A_INPUT: bytes [off, off+len) of script.input */
  bool has_reply;  /* A_CLOSE */
  struct tern_reply reply;
  int line;
};

struct script {
  const char *path;
  struct tern_server_config cfg;
  bool trace_commands;
  bool trace_envelope; /* @config trace_envelope=1: on_data_end's envelope */
  bool install[EV_COUNT]; /* @config install=auth: callback without @decide */
  struct decision *dec[EV_COUNT];
  size_t ndec[EV_COUNT];
  struct action *act;
  size_t nact;
  struct buf input;
  char **expect;
  int *expect_line;
  size_t nexpect;
};

static int script_err(const char *path, int line, const char *msg,
                      const char *text) {
  fprintf(stderr, "%s:%d: %s: %s\n", path, line, msg, text);
  return -1;
}

static bool parse_ulong(const char *v, unsigned long long *out) {
  char *end;
  if (*v == '\0') return false;
  *out = strtoull(v, &end, 10);
  return *end == '\0';
}

static const struct {
  const char *name;
  unsigned bit;
} ext_names[] = {
    {"PIPELINING", TERN_EXT_PIPELINING}, {"SIZE", TERN_EXT_SIZE},
    {"8BITMIME", TERN_EXT_8BITMIME}, {"SMTPUTF8", TERN_EXT_SMTPUTF8},
    {"ENHANCEDSTATUSCODES", TERN_EXT_ENHANCEDSTATUSCODES},
    {"CHUNKING", TERN_EXT_CHUNKING}, {"BINARYMIME", TERN_EXT_BINARYMIME},
    {"DSN", TERN_EXT_DSN}, {"STARTTLS", TERN_EXT_STARTTLS},
    {"AUTH", TERN_EXT_AUTH}, {"REQUIRETLS", TERN_EXT_REQUIRETLS},
    {"LIMITS", TERN_EXT_LIMITS}, {"XCLIENT", TERN_EXT_XCLIENT},
    {"HELP", TERN_EXT_HELP}};

static int parse_config(struct script *sc, int line, const char *kv) {
  const char *eq = strchr(kv, '=');
  if (eq == NULL) return script_err(sc->path, line, "@config needs KEY=VALUE", kv);
  char *key = xstrndup(kv, (size_t)(eq - kv));
  const char *v = eq + 1;
  unsigned long long n = 0;
  bool isnum = parse_ulong(v, &n);
  struct tern_server_config *c = &sc->cfg;
  int rc = 0;
#define NUMFIELD(name, type)                                                \
  else if (strcmp(key, #name) == 0) {                                       \
    if (!isnum) rc = -1;                                                    \
    else c->name = (type)n;                                                 \
  }
  if (strcmp(key, "hostname") == 0) c->hostname = xstrndup(v, strlen(v));
  else if (strcmp(key, "banner") == 0) c->banner = xstrndup(v, strlen(v));
  else if (strcmp(key, "auth_mechanisms") == 0)
    c->auth_mechanisms = xstrndup(v, strlen(v));
  else if (strcmp(key, "lmtp") == 0 || strcmp(key, "auth_required") == 0 ||
           strcmp(key, "auth_insecure_ok") == 0 ||
           strcmp(key, "xclient_trusted") == 0 ||
           strcmp(key, "trace_commands") == 0 ||
           strcmp(key, "trace_envelope") == 0) {
    if (!isnum || n > 1) rc = -1;
    else if (key[0] == 'l') c->lmtp = n;
    else if (strcmp(key, "auth_required") == 0) c->auth_required = n;
    else if (strcmp(key, "auth_insecure_ok") == 0) c->auth_insecure_ok = n;
    else if (strcmp(key, "xclient_trusted") == 0) c->xclient_trusted = n;
    else if (strcmp(key, "trace_envelope") == 0) sc->trace_envelope = n;
    else sc->trace_commands = n;
  } else if (strcmp(key, "ext") == 0) {
    rc = -1;
    if (v[0] == '+' || v[0] == '-') {
      for (size_t i = 0; i < sizeof ext_names / sizeof ext_names[0]; i++) {
        if (strcmp(v + 1, ext_names[i].name) == 0) {
          if (v[0] == '+') c->extensions |= ext_names[i].bit;
          else c->extensions &= ~ext_names[i].bit;
          rc = 0;
        }
      }
    }
  } else if (strcmp(key, "install") == 0) {
    rc = -1;
    for (int i = 0; i < EV_COUNT; i++) {
      if (strcmp(v, ev_names[i]) == 0) {
        sc->install[i] = true;
        rc = 0;
      }
    }
  } else if (strcmp(key, "bare_lf") == 0) {
    if (strcmp(v, "normalize") == 0) c->bare_lf = TERN_BARE_LF_NORMALIZE;
    else if (strcmp(v, "reject") == 0) c->bare_lf = TERN_BARE_LF_REJECT;
    else rc = -1;
  }
  NUMFIELD(max_line, size_t)
  NUMFIELD(max_auth_line, size_t)
  NUMFIELD(max_line_length, size_t)
  NUMFIELD(max_message_size, uint64_t)
  NUMFIELD(max_recipients, unsigned)
  NUMFIELD(max_errors, unsigned)
  NUMFIELD(max_junk_commands, unsigned)
  NUMFIELD(max_transactions, unsigned)
  NUMFIELD(output_high_water, size_t)
  else rc = -1;
#undef NUMFIELD
  free(key);
  if (rc) return script_err(sc->path, line, "bad @config", kv);
  return 0;
}

/* Parse "CODE ENH TEXT..." (all optional) into r. Returns 1 when a reply
 * was given, 0 when the string is empty, -1 on error. */
static int parse_reply(const char *s, struct tern_reply *r) {
  while (*s == ' ') s++;
  if (*s == '\0') return 0;
  char *end;
  long code = strtol(s, &end, 10);
  if (end == s || (*end != ' ' && *end != '\0')) return -1;
  r->code = (int)code;
  r->enhanced = NULL;
  r->text = NULL;
  s = end;
  while (*s == ' ') s++;
  if (*s == '\0') return 1;
  const char *e = strchr(s, ' ');
  size_t elen = e ? (size_t)(e - s) : strlen(s);
  if (!(elen == 1 && s[0] == '-')) r->enhanced = xstrndup(s, elen);
  s += elen;
  if (*s == ' ') s++;
  if (*s == '\0') return 1;
  if (strcmp(s, "\"\"") == 0) {
    r->text = xstrndup("", 0);
    return 1;
  }
  struct buf t = {0};
  if (!unescape(&t, s, strlen(s), NULL)) {
    buf_free(&t);
    return -1;
  }
  buf_add(&t, "", 0);
  r->text = t.p;
  return 1;
}

static int parse_decide(struct script *sc, int line, const char *rest) {
  char ev[32], verdict[32];
  int used = 0;
  if (sscanf(rest, "%31s %31s%n", ev, verdict, &used) != 2)
    return script_err(sc->path, line, "bad @decide", rest);
  int e = -1;
  for (int i = 0; i < EV_COUNT; i++)
    if (strcmp(ev, ev_names[i]) == 0) e = i;
  if (e < 0) return script_err(sc->path, line, "unknown @decide event", ev);
  struct decision d = {0};
  d.line = line;
  if (strcmp(verdict, "now") == 0) d.verdict = V_NOW;
  else if (strcmp(verdict, "pending") == 0) d.verdict = V_PENDING;
  else if (strcmp(verdict, "error") == 0) d.verdict = V_ERROR;
  else if (strcmp(verdict, "pause") == 0) d.verdict = V_PAUSE;
  else return script_err(sc->path, line, "unknown @decide verdict", verdict);
  if (e == EV_DATA && d.verdict != V_PAUSE && d.verdict != V_ERROR)
    return script_err(sc->path, line, "data takes pause|error only", rest);
  if (e != EV_DATA && d.verdict == V_PAUSE)
    return script_err(sc->path, line, "pause is for data only", rest);
  int r = parse_reply(rest + used, &d.reply);
  if (r < 0) return script_err(sc->path, line, "bad reply in @decide", rest);
  d.has_reply = r == 1;
  sc->dec[e] = xrealloc(sc->dec[e], (sc->ndec[e] + 1) * sizeof d);
  sc->dec[e][sc->ndec[e]++] = d;
  return 0;
}

static void add_action(struct script *sc, struct action a) {
  sc->act = xrealloc(sc->act, (sc->nact + 1) * sizeof a);
  sc->act[sc->nact++] = a;
}

static void add_expect(struct script *sc, const char *text, int line) {
  sc->expect = xrealloc(sc->expect, (sc->nexpect + 1) * sizeof(char *));
  sc->expect_line = xrealloc(sc->expect_line, (sc->nexpect + 1) * sizeof(int));
  sc->expect[sc->nexpect] = xstrndup(text, strlen(text));
  sc->expect_line[sc->nexpect++] = line;
}

/* The default EHLO reply, written out once: what a session made from
 * tern_server_config_init() must answer to EHLO, line for line. "@ehlo"
 * stands for exactly these lines, so they are still checked byte for byte
 * against what the session sends. */
static const char *const ehlo_default_reply[] = {
    "250-localhost",           "250-PIPELINING",
    "250-SIZE 31457280",       "250-ENHANCEDSTATUSCODES",
    "250-8BITMIME",            "250-BINARYMIME",
    "250-CHUNKING",            "250-DSN",
    "250-SMTPUTF8",            "250-LIMITS RCPTMAX=1000",
    "250 HELP"};

/* NULL when the file's @config leaves the EHLO reply (and the events
 * around it) as the defaults make them, else what it changes. */
static const char *ehlo_config_changed(const struct script *sc) {
  struct tern_server_config d;
  tern_server_config_init(&d);
  const struct tern_server_config *c = &sc->cfg;
  if (strcmp(c->hostname, d.hostname) != 0) return "hostname";
  if (c->extensions != d.extensions) return "ext";
  if (c->max_message_size != d.max_message_size) return "max_message_size";
  if (c->max_recipients != d.max_recipients) return "max_recipients";
  if (c->max_transactions != d.max_transactions) return "max_transactions";
  if (c->lmtp != d.lmtp) return "lmtp";
  if (sc->trace_commands) return "trace_commands";
  return NULL;
}

static int script_line(struct script *sc, int lineno, const char *l,
                       bool *seen_input);

/* Takes the line HEAD TAIL as if the file had it at lineno. */
static int ehlo_line(struct script *sc, int lineno, bool *seen_input,
                     const char *head, const char *tail) {
  struct buf b = {0};
  buf_adds(&b, head);
  buf_adds(&b, tail);
  int rc = script_line(sc, lineno, b.p, seen_input);
  buf_free(&b);
  return rc;
}

/* "@ehlo [NAME]": the client's "EHLO NAME" (NAME defaults to
 * client.example), the helo event and the default reply, as if those
 * lines were written out here. */
static int parse_ehlo(struct script *sc, int lineno, const char *l,
                      bool *seen_input) {
  if (l[5] != '\0' && l[5] != ' ')
    return script_err(sc->path, lineno, "unknown directive", l);
  const char *name = l[5] ? l + 6 : "client.example";
  if (*name == '\0' || strpbrk(name, " \\") != NULL)
    return script_err(sc->path, lineno, "@ehlo takes one plain name", l);
  const char *changed = ehlo_config_changed(sc);
  if (changed != NULL)
    return script_err(sc->path, lineno,
                      "@ehlo stands for the default reply, but @config "
                      "changes it; write the lines out",
                      changed);
  int rc = ehlo_line(sc, lineno, seen_input, "C: EHLO ", name);
  if (rc == 0) rc = ehlo_line(sc, lineno, seen_input, "E: helo EHLO ", name);
  size_t n = sizeof ehlo_default_reply / sizeof ehlo_default_reply[0];
  for (size_t i = 0; rc == 0 && i < n; i++)
    rc = ehlo_line(sc, lineno, seen_input, "S: ", ehlo_default_reply[i]);
  return rc;
}

/* One line of the file (without its line end). */
static int script_line(struct script *sc, int lineno, const char *l,
                       bool *seen_input) {
  const char *path = sc->path;
  int rc = 0;
  if (l[0] == '\0' || l[0] == '#') {
    /* comment */
  } else if (strncmp(l, "C:", 2) == 0) {
    const char *t = l + 2;
    if (*t == ' ') t++;
    bool no_crlf;
    struct action *last = sc->nact ? &sc->act[sc->nact - 1] : NULL;
    size_t off = sc->input.len;
    if (!unescape(&sc->input, t, strlen(t), &no_crlf))
      rc = script_err(path, lineno, "bad escape in C: line", l);
    if (!no_crlf) buf_adds(&sc->input, "\r\n");
    if (last && last->kind == A_INPUT) {
      last->len = sc->input.len - last->off;
    } else {
      struct action a = {A_INPUT, off, sc->input.len - off, false, {0}, lineno};
      add_action(sc, a);
    }
    *seen_input = true;
  } else if (strncmp(l, "S:", 2) == 0 || strncmp(l, "E:", 2) == 0) {
    const char *t = l + 2;
    if (*t == ' ') t++;
    char *x = xmalloc(strlen(t) + 4);
    snprintf(x, strlen(t) + 4, "%c: %s", l[0], t);
    add_expect(sc, x, lineno);
    free(x);
  } else if (strncmp(l, "@config ", 8) == 0) {
    if (*seen_input)
      rc = script_err(path, lineno, "@config after the first C: line", l);
    else
      rc = parse_config(sc, lineno, l + 8);
  } else if (strncmp(l, "@decide ", 8) == 0) {
    rc = parse_decide(sc, lineno, l + 8);
  } else if (strncmp(l, "@ehlo", 5) == 0) {
    rc = parse_ehlo(sc, lineno, l, seen_input);
  } else if (strcmp(l, "@tls") == 0 || strcmp(l, "@eof") == 0 ||
             strcmp(l, "@timeout") == 0 || strncmp(l, "@close", 6) == 0) {
    struct action a = {A_TLS, 0, 0, false, {0}, lineno};
    if (l[1] == 'e') a.kind = A_EOF;
    else if (l[1] == 't' && l[2] == 'i') a.kind = A_TIMEOUT;
    else if (l[1] == 'c') {
      a.kind = A_CLOSE;
      if (l[6] != '\0' && l[6] != ' ') {
        rc = script_err(path, lineno, "unknown directive", l);
      } else {
        int r = parse_reply(l + 6, &a.reply);
        if (r < 0) rc = script_err(path, lineno, "bad reply in @close", l);
        a.has_reply = r == 1;
      }
    }
    add_action(sc, a);
  } else {
    rc = script_err(path, lineno, "unknown line", l);
  }
  return rc;
}

static int script_load(struct script *sc, const char *path) {
  memset(sc, 0, sizeof *sc);
  sc->path = path;
  tern_server_config_init(&sc->cfg);
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    perror(path);
    return -1;
  }
  struct buf file = {0};
  char chunk[4096];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) buf_add(&file, chunk, n);
  fclose(f);
  if (file.p == NULL) buf_add(&file, "", 0);

  bool seen_input = false;
  int lineno = 0;
  char *p = file.p, *end = file.p + file.len;
  while (p < end) {
    char *nl = memchr(p, '\n', (size_t)(end - p));
    size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
    if (len && p[len - 1] == '\r') len--;
    char *l = xstrndup(p, len);
    p = nl ? nl + 1 : end;
    lineno++;
    int rc = script_line(sc, lineno, l, &seen_input);
    free(l);
    if (rc) {
      buf_free(&file);
      return -1;
    }
  }
  buf_free(&file);
  if (sc->input.p == NULL) buf_add(&sc->input, "", 0);
  return 0;
}

static void reply_free(struct tern_reply *r) {
  free((char *)r->enhanced);
  free((char *)r->text);
}

static void script_free(struct script *sc) {
  for (int e = 0; e < EV_COUNT; e++) {
    for (size_t i = 0; i < sc->ndec[e]; i++) reply_free(&sc->dec[e][i].reply);
    free(sc->dec[e]);
  }
  for (size_t i = 0; i < sc->nact; i++) reply_free(&sc->act[i].reply);
  free(sc->act);
  for (size_t i = 0; i < sc->nexpect; i++) free(sc->expect[i]);
  free(sc->expect);
  free(sc->expect_line);
  buf_free(&sc->input);
  struct tern_server_config d;
  tern_server_config_init(&d);
  if (sc->cfg.hostname != d.hostname) free((char *)sc->cfg.hostname);
  if (sc->cfg.banner != d.banner) free((char *)sc->cfg.banner);
  if (sc->cfg.auth_mechanisms != d.auth_mechanisms)
    free((char *)sc->cfg.auth_mechanisms);
}

/* ---- allocator hooks for --nomem ----------------------------------------- */

struct counting_mem {
  long calls;     /* allocations attempted */
  long fail_at;   /* fail the allocation with this index (-1: never) */
  long live;      /* allocated minus freed */
  bool failed;    /* an allocation was failed */
};

static void *cm_malloc(size_t n, void *ud) {
  struct counting_mem *m = ud;
  if (m->calls++ == m->fail_at) {
    m->failed = true;
    return NULL;
  }
  void *p = malloc(n);
  if (p) m->live++;
  return p;
}

static void *cm_realloc(void *p, size_t n, void *ud) {
  struct counting_mem *m = ud;
  if (m->calls++ == m->fail_at) {
    m->failed = true;
    return NULL;
  }
  void *q = realloc(p, n);
  if (q && p == NULL) m->live++;
  return q;
}

static void cm_free(void *p, void *ud) {
  struct counting_mem *m = ud;
  if (p) m->live--;
  free(p);
}

/* ---- one run ------------------------------------------------------------- */

enum mode { M_WHOLE, M_BYTEWISE, M_SPLITS, M_RANDOM, M_NOMEM };

struct run {
  const struct script *sc;
  struct tern_server_session *s;
  /* chunking */
  enum mode mode;
  size_t split_mod, split_rem; /* M_SPLITS: split where k % mod == rem */
  uint64_t rng;
  /* decisions */
  size_t next_dec[EV_COUNT];
  const struct decision *pending; /* answer owed by the player */
  int pending_ev;
  bool answering;
  bool paused;
  unsigned mails; /* MAIL commands seen (the trace_envelope ids) */
  /* trace */
  char **trace;
  size_t ntrace;
  struct buf replies; /* on_reply bytes */
  struct buf output;  /* output() bytes */
  /* message */
  bool msg_open;
  struct buf msg;
  int closes;          /* on_close calls: exactly 1 per session */
  bool freeing;        /* inside tern_server_session_free() */
  bool closed_feeding;
  /* failure */
  struct buf err;
  bool nomem;
};

static void fail(struct run *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void fail(struct run *r, const char *fmt, ...) {
  char tmp[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (r->err.len < 8192) buf_printf(&r->err, "  %s\n", tmp);
}

static void trace_add(struct run *r, const char *s) {
  if (r->freeing) /* what free() fires is the harness's, not the file's */
    return;
  r->trace = xrealloc(r->trace, (r->ntrace + 1) * sizeof(char *));
  r->trace[r->ntrace++] = xstrndup(s, strlen(s));
}

static void trace_buf(struct run *r, struct buf *b) {
  trace_add(r, b->p ? b->p : "");
  buf_free(b);
}

/* Emit the accumulated message as one "data" event. */
static void flush_msg(struct run *r) {
  if (!r->msg_open) return;
  struct buf b = {0};
  buf_adds(&b, "E: data \"");
  esc_data(&b, r->msg.p ? r->msg.p : "", r->msg.len);
  buf_adds(&b, "\"");
  trace_buf(r, &b);
  buf_free(&r->msg);
  r->msg_open = false;
}

/* A decision callback fired: check the protocol, pop the scripted answer. */
static int decide(struct run *r, int ev, struct tern_reply *reply) {
  if (r->pending && !r->answering)
    fail(r, "%s callback fired while %s was pending", ev_names[ev],
         ev_names[r->pending_ev]);
  if (r->paused)
    fail(r, "%s callback fired while on_data was paused", ev_names[ev]);
  if (reply == NULL) {
    fail(r, "%s callback got a NULL reply", ev_names[ev]);
    return 0;
  }
  if (r->next_dec[ev] >= r->sc->ndec[ev]) return TERN_REPLY_NOW;
  const struct decision *d = &r->sc->dec[ev][r->next_dec[ev]++];
  switch (d->verdict) {
  case V_NOW:
    if (d->has_reply) *reply = d->reply;
    return TERN_REPLY_NOW;
  case V_PENDING:
    if (r->pending && r->answering) {
      /* A new decision fired from inside reply(): allowed (e.g. the next
       * LMTP recipient); it is answered once reply() returns. */
    } else if (r->pending) {
      fail(r, "second pending decision while one is open");
    }
    r->pending = d;
    r->pending_ev = ev;
    return TERN_PENDING;
  case V_ERROR:
    return TERN_EINVAL;
  default:
    fail(r, "bad verdict");
    return TERN_REPLY_NOW;
  }
}

static bool rejected(const struct tern_reply *rep) { return rep->code >= 400; }

#define RUN(ud) ((struct run *)(ud))

static int cb_connect(struct tern_server_session *s, struct tern_reply *reply,
                      void *ud) {
  (void)s;
  trace_add(RUN(ud), "E: connect");
  return decide(RUN(ud), EV_CONNECT, reply);
}

static int cb_helo(struct tern_server_session *s, enum tern_helo_verb verb,
                   struct tern_str domain, struct tern_reply *reply, void *ud) {
  (void)s;
  struct buf b = {0};
  buf_printf(&b, "E: helo %s ",
             verb == TERN_HELO ? "HELO" : verb == TERN_EHLO ? "EHLO" : "LHLO");
  esc_field(&b, domain.ptr, domain.len);
  trace_buf(RUN(ud), &b);
  return decide(RUN(ud), EV_HELO, reply);
}

static int cb_auth(struct tern_server_session *s, struct tern_str mech,
                   struct tern_str resp, bool has_resp, unsigned step,
                   struct tern_reply *reply, void *ud) {
  (void)s;
  struct buf b = {0};
  buf_adds(&b, "E: auth ");
  esc_field(&b, mech.ptr, mech.len);
  buf_printf(&b, " step=%u resp=", step);
  if (has_resp) esc_field(&b, resp.ptr, resp.len);
  else buf_adds(&b, "-none-");
  trace_buf(RUN(ud), &b);
  return decide(RUN(ud), EV_AUTH, reply);
}

static void path_field(struct buf *b, const struct tern_path *p) {
  buf_adds(b, "<");
  esc_field(b, p->mailbox.ptr, p->mailbox.len);
  buf_adds(b, ">");
}

/* The sender and MAIL parameters, as on_mail and the envelope show them. */
static void mail_fields(struct buf *b, const struct tern_path *from,
                        const struct tern_mail_params *mp) {
  path_field(b, from);
  if (mp->has_size) buf_printf(b, " size=%llu", (unsigned long long)mp->size);
  if (mp->body == TERN_BODY_7BIT) buf_adds(b, " body=7BIT");
  else if (mp->body == TERN_BODY_8BITMIME) buf_adds(b, " body=8BITMIME");
  else if (mp->body == TERN_BODY_BINARYMIME) buf_adds(b, " body=BINARYMIME");
  if (mp->smtputf8) buf_adds(b, " smtputf8");
  if (mp->requiretls) buf_adds(b, " requiretls");
  if (mp->ret == TERN_RET_FULL) buf_adds(b, " ret=FULL");
  else if (mp->ret == TERN_RET_HDRS) buf_adds(b, " ret=HDRS");
  if (mp->envid.len) {
    buf_adds(b, " envid=");
    esc_field(b, mp->envid.ptr, mp->envid.len);
  }
  if (mp->auth.len) {
    buf_adds(b, " auth=");
    esc_field(b, mp->auth.ptr, mp->auth.len);
  }
}

static int cb_mail(struct tern_server_session *s, const struct tern_path *from,
                   const struct tern_mail_params *mp, struct tern_reply *reply,
                   void *ud) {
  struct run *r = RUN(ud);
  struct buf b = {0};
  buf_adds(&b, "E: mail ");
  mail_fields(&b, from, mp);
  trace_buf(r, &b);
  if (r->sc->trace_envelope) { /* the envelope then shows this id */
    char id[32];
    snprintf(id, sizeof id, "msg-%u", ++r->mails);
    if (tern_server_session_set_message_id(s, id) != 0)
      fail(r, "set_message_id() failed");
  }
  return decide(r, EV_MAIL, reply);
}

/* A recipient and its parameters, as on_rcpt and the envelope show them. */
static void rcpt_fields(struct buf *b, const struct tern_path *to,
                        const struct tern_rcpt_params *rp) {
  path_field(b, to);
  if (rp->notify) {
    const char *sep = " notify=";
    static const struct {
      unsigned bit;
      const char *name;
    } nb[] = {{TERN_NOTIFY_NEVER, "NEVER"},
              {TERN_NOTIFY_SUCCESS, "SUCCESS"},
              {TERN_NOTIFY_FAILURE, "FAILURE"},
              {TERN_NOTIFY_DELAY, "DELAY"}};
    for (size_t i = 0; i < 4; i++) {
      if (rp->notify & nb[i].bit) {
        buf_printf(b, "%s%s", sep, nb[i].name);
        sep = ",";
      }
    }
  }
  if (rp->orcpt_type.len || rp->orcpt.len) {
    buf_adds(b, " orcpt=");
    esc_field(b, rp->orcpt_type.ptr, rp->orcpt_type.len);
    buf_adds(b, ";");
    esc_field(b, rp->orcpt.ptr, rp->orcpt.len);
  }
}

static int cb_rcpt(struct tern_server_session *s, const struct tern_path *to,
                   const struct tern_rcpt_params *rp, struct tern_reply *reply,
                   void *ud) {
  (void)s;
  struct buf b = {0};
  buf_adds(&b, "E: rcpt ");
  rcpt_fields(&b, to, rp);
  trace_buf(RUN(ud), &b);
  return decide(RUN(ud), EV_RCPT, reply);
}

static int cb_data_start(struct tern_server_session *s,
                         struct tern_reply *reply, void *ud) {
  (void)s;
  struct run *r = RUN(ud);
  trace_add(r, "E: data_start");
  buf_free(&r->msg);
  r->msg_open = true;
  int v = decide(r, EV_DATA_START, reply);
  if (v == TERN_REPLY_NOW && rejected(reply)) r->msg_open = false;
  if (v < 0) r->msg_open = false;
  return v;
}

static int cb_data(struct tern_server_session *s, const char *buf, size_t len,
                   void *ud) {
  (void)s;
  struct run *r = RUN(ud);
  if (r->pending && !r->answering)
    fail(r, "on_data fired while %s was pending", ev_names[r->pending_ev]);
  if (r->paused) fail(r, "on_data fired while paused");
  if (len && buf == NULL) fail(r, "on_data: NULL buffer");
  if (!r->msg_open) {
    buf_free(&r->msg);
    r->msg_open = true;
  }
  buf_add(&r->msg, buf, len);
  if (r->next_dec[EV_DATA] < r->sc->ndec[EV_DATA]) {
    const struct decision *d = &r->sc->dec[EV_DATA][r->next_dec[EV_DATA]++];
    if (d->verdict == V_PAUSE) {
      r->paused = true;
      return TERN_PENDING;
    }
    return TERN_EINVAL;
  }
  return 0;
}

/*
 * With trace_envelope: the whole envelope on the first end-of-data call
 * of a message, and in LMTP the recipient each call answers for:
 *   E: envelope id=ID helo=VERB:NAME tls=0 auth=0 lmtp=0 rcpts=N
 *   E: envelope mail <from> PARAMS      (as "E: mail")
 *   E: envelope rcpt <to> PARAMS        (as "E: rcpt"), N of them
 *   E: envelope for <to>                (LMTP only)
 */
static void trace_envelope(struct run *r, const struct tern_envelope *env) {
  static const char *const verbs[] = {"HELO", "EHLO", "LHLO"};
  struct buf b = {0};
  if (env->rcpt_index == 0) {
    buf_printf(&b, "E: envelope id=%s helo=%s:", env->id ? env->id : "-",
               verbs[env->helo_verb]);
    esc_field(&b, env->helo.ptr, env->helo.len);
    buf_printf(&b, " tls=%d auth=%d lmtp=%d rcpts=%zu", env->tls,
               env->authenticated, env->lmtp, env->nrcpts);
    trace_buf(r, &b);
    buf_adds(&b, "E: envelope mail ");
    mail_fields(&b, &env->from, &env->mail);
    trace_buf(r, &b);
    for (size_t i = 0; i < env->nrcpts; i++) {
      const struct tern_envelope_rcpt *rc = tern_envelope_rcpt(env, i);
      buf_adds(&b, "E: envelope rcpt ");
      rcpt_fields(&b, &rc->to, &rc->params);
      trace_buf(r, &b);
    }
    if (tern_envelope_rcpt(env, env->nrcpts) != NULL)
      fail(r, "tern_envelope_rcpt() past the end is not NULL");
  }
  if (env->lmtp) {
    buf_adds(&b, "E: envelope for ");
    path_field(&b, &tern_envelope_rcpt(env, env->rcpt_index)->to);
    trace_buf(r, &b);
  }
}

static int cb_data_end(struct tern_server_session *s,
                       const struct tern_envelope *env,
                       struct tern_reply *reply, void *ud) {
  (void)s;
  struct run *r = RUN(ud);
  flush_msg(r);
  struct buf b = {0};
  buf_printf(&b, "E: data_end size=%llu rcpt=%zu",
             (unsigned long long)env->size, env->rcpt_index);
  trace_buf(r, &b);
  if (r->sc->trace_envelope) trace_envelope(r, env);
  return decide(r, EV_DATA_END, reply);
}

static void cb_data_abort(struct tern_server_session *s, const char *why,
                          void *ud) {
  (void)s;
  struct run *r = RUN(ud);
  flush_msg(r);
  struct buf b = {0};
  buf_adds(&b, "E: data_abort ");
  buf_adds(&b, why ? why : "(null)");
  trace_buf(r, &b);
}

static void cb_reset(struct tern_server_session *s, void *ud) {
  (void)s;
  flush_msg(RUN(ud));
  trace_add(RUN(ud), "E: reset");
}

static int str_event(void *ud, int ev, const char *name, struct tern_str arg,
                     struct tern_reply *reply) {
  struct buf b = {0};
  buf_printf(&b, "E: %s ", name);
  esc_field(&b, arg.ptr, arg.len);
  trace_buf(RUN(ud), &b);
  return decide(RUN(ud), ev, reply);
}

static int cb_vrfy(struct tern_server_session *s, struct tern_str arg,
                   struct tern_reply *reply, void *ud) {
  (void)s;
  return str_event(ud, EV_VRFY, "vrfy", arg, reply);
}

static int cb_expn(struct tern_server_session *s, struct tern_str arg,
                   struct tern_reply *reply, void *ud) {
  (void)s;
  return str_event(ud, EV_EXPN, "expn", arg, reply);
}

static int cb_xclient(struct tern_server_session *s,
                      const struct tern_xclient *x, struct tern_reply *reply,
                      void *ud) {
  (void)s;
  struct buf b = {0};
  buf_adds(&b, "E: xclient");
  const struct {
    const char *name;
    struct tern_str v;
  } attrs[] = {{"NAME", x->name}, {"ADDR", x->addr}, {"PORT", x->port},
               {"PROTO", x->proto}, {"HELO", x->helo}, {"LOGIN", x->login},
               {"DESTADDR", x->destaddr}, {"DESTPORT", x->destport}};
  for (size_t i = 0; i < sizeof attrs / sizeof attrs[0]; i++) {
    if (attrs[i].v.len == 0) continue;
    buf_printf(&b, " %s=", attrs[i].name);
    esc_field(&b, attrs[i].v.ptr, attrs[i].v.len);
  }
  trace_buf(RUN(ud), &b);
  return decide(RUN(ud), EV_XCLIENT, reply);
}

static int cb_unknown(struct tern_server_session *s, struct tern_str verb,
                      struct tern_str args, struct tern_reply *reply, void *ud) {
  (void)s;
  struct buf b = {0};
  buf_adds(&b, "E: unknown ");
  esc_field(&b, verb.ptr, verb.len);
  if (args.len) {
    buf_adds(&b, " ");
    esc_field(&b, args.ptr, args.len);
  }
  trace_buf(RUN(ud), &b);
  return decide(RUN(ud), EV_UNKNOWN, reply);
}

static void cb_starttls(struct tern_server_session *s, void *ud) {
  (void)s;
  trace_add(RUN(ud), "E: starttls");
}

static void cb_command(struct tern_server_session *s, struct tern_str line,
                       void *ud) {
  (void)s;
  if (!RUN(ud)->sc->trace_commands) return;
  struct buf b = {0};
  buf_adds(&b, "E: command ");
  esc_field(&b, line.ptr, line.len);
  trace_buf(RUN(ud), &b);
}

static void cb_reply(struct tern_server_session *s, struct tern_str bytes,
                     void *ud) {
  (void)s;
  struct run *r = RUN(ud);
  buf_add(&r->replies, bytes.ptr, bytes.len);
  if (bytes.len < 2 || bytes.ptr[bytes.len - 2] != '\r' ||
      bytes.ptr[bytes.len - 1] != '\n') {
    fail(r, "on_reply bytes do not end with CRLF");
  }
  size_t i = 0;
  while (i < bytes.len) {
    size_t j = i;
    while (j < bytes.len && bytes.ptr[j] != '\r' && bytes.ptr[j] != '\n') j++;
    struct buf b = {0};
    buf_adds(&b, "S: ");
    esc_field(&b, bytes.ptr + i, j - i);
    trace_buf(r, &b);
    if (j < bytes.len) {
      if (bytes.ptr[j] == '\r' && j + 1 < bytes.len && bytes.ptr[j + 1] == '\n')
        j += 2;
      else {
        fail(r, "on_reply: bare CR or LF inside a reply");
        j += 1;
      }
    }
    i = j;
  }
}

static void cb_close(struct tern_server_session *s, void *ud) {
  (void)s;
  struct run *r = RUN(ud);
  flush_msg(r);
  r->closes++;
  if (r->closes > 1) fail(r, "on_close fired %d times", r->closes);
  trace_add(r, "E: close");
}

/* Take all queued output, as a runtime writing it would. Under --nomem an
 * idle session also gives its buffers back, as the runtime's does, so
 * that the allocations that remake them fail in turn too. */
static void drain(struct run *r) {
  for (int guard = 0; guard < 1000; guard++) {
    const char *data = NULL;
    size_t n = tern_server_session_output(r->s, &data);
    if (n == 0) {
      if (r->mode == M_NOMEM)
        tern_server_session_trim(r->s);
      return;
    }
    if (data == NULL) {
      fail(r, "output() returned %zu bytes with a NULL pointer", n);
      return;
    }
    buf_add(&r->output, data, n);
    tern_server_session_consume(r->s, n);
  }
  fail(r, "output() never drains");
}

/* Answer an owed decision / end a pause. Returns true if it did
 * something. */
static bool service(struct run *r) {
  bool did = false;
  drain(r);
  for (int guard = 0; guard < 10000; guard++) {
    if (r->pending) {
      enum tern_server_event pe = tern_server_session_pending(r->s);
      if (pe != ev_core[r->pending_ev])
        fail(r, "pending() = %d, expected the %s decision", (int)pe,
             ev_names[r->pending_ev]);
      const struct decision *d = r->pending;
      int ev = r->pending_ev;
      r->answering = true;
      r->pending = NULL;
      if (ev == EV_DATA_START && d->has_reply && rejected(&d->reply))
        r->msg_open = false;
      int rc = tern_server_session_reply(r->s, d->has_reply ? &d->reply : NULL);
      r->answering = false;
      if (rc != 0) {
        fail(r, "reply() for %s (line %d) returned %d", ev_names[ev], d->line, rc);
        return did;
      }
      did = true;
      drain(r);
      continue;
    }
    if (tern_server_session_pending(r->s) != TERN_EV_NONE) {
      fail(r, "session says pending (%d) but no callback returned TERN_PENDING",
           (int)tern_server_session_pending(r->s));
      return did;
    }
    if (r->paused) {
      r->paused = false;
      int rc = tern_server_session_resume(r->s);
      if (rc != 0) fail(r, "resume() returned %d", rc);
      did = true;
      drain(r);
      continue;
    }
    return did;
  }
  fail(r, "service loop does not settle");
  return did;
}

static size_t next_chunk(struct run *r, size_t goff, size_t left) {
  switch (r->mode) {
  case M_WHOLE:
  case M_NOMEM:
    return left;
  case M_BYTEWISE:
    return 1;
  case M_SPLITS: {
    if (r->split_mod == 0) return left;
    for (size_t k = 1; k < left; k++)
      if ((goff + k) % r->split_mod == r->split_rem) return k;
    return left;
  }
  case M_RANDOM: {
    r->rng ^= r->rng << 13;
    r->rng ^= r->rng >> 7;
    r->rng ^= r->rng << 17;
    size_t n = 1 + (size_t)(r->rng % 64);
    return n < left ? n : left;
  }
  }
  return left;
}

/* Feed one input segment in the mode's chunks. */
static void feed_segment(struct run *r, const struct action *a) {
  const char *in = r->sc->input.p + a->off;
  size_t pos = 0;
  while (pos < a->len && r->err.len == 0) {
    size_t n = next_chunk(r, a->off + pos, a->len - pos);
    size_t end = pos + n;
    while (pos < end && r->err.len == 0) {
      unsigned want = tern_server_session_want(r->s);
      bool closing = (want & TERN_WANT_CLOSE) != 0;
      long got = tern_server_session_feed(r->s, in + pos, end - pos);
      if (got < 0) {
        fail(r, "feed() returned %ld (%s)", got, tern_err_name((int)got));
        return;
      }
      if ((size_t)got > end - pos) {
        fail(r, "feed() took %ld of %zu bytes", got, end - pos);
        return;
      }
      pos += (size_t)got;
      bool did = service(r);
      if (got > 0 || did) continue;
      want = tern_server_session_want(r->s);
      if (closing || (want & TERN_WANT_CLOSE)) {
        /* Closed: the rest of the input is ignored. */
        r->closed_feeding = true;
        return;
      }
      if (want & TERN_WANT_TLS) {
        /* Plaintext after STARTTLS: a runtime drops it before the
         * handshake (CVE-2011-0411). */
        return;
      }
      fail(r, "stall: feed() took 0 of %zu bytes at input offset %zu with "
              "nothing pending (want=0x%x)",
           end - pos, a->off + pos, want);
      return;
    }
  }
}

static void run_free(struct run *r) {
  for (size_t i = 0; i < r->ntrace; i++) free(r->trace[i]);
  free(r->trace);
  buf_free(&r->replies);
  buf_free(&r->output);
  buf_free(&r->msg);
  buf_free(&r->err);
}

/* Play the script once. Returns 0 when the session could be created. */
static int play(struct run *r, const struct tern_mem *mem) {
  const struct script *sc = r->sc;
  struct tern_server_callbacks cb;
  tern_server_callbacks_init(&cb);
  cb.on_connect = cb_connect;
  cb.on_helo = cb_helo;
  cb.on_mail = cb_mail;
  cb.on_rcpt = cb_rcpt;
  cb.on_data_start = cb_data_start;
  cb.on_data = cb_data;
  cb.on_data_end = cb_data_end;
  cb.on_data_abort = cb_data_abort;
  cb.on_reset = cb_reset;
  cb.on_starttls = cb_starttls;
  cb.on_command = cb_command;
  cb.on_reply = cb_reply;
  cb.on_close = cb_close;
  if (sc->ndec[EV_AUTH] || sc->install[EV_AUTH]) cb.on_auth = cb_auth;
  if (sc->ndec[EV_VRFY] || sc->install[EV_VRFY]) cb.on_vrfy = cb_vrfy;
  if (sc->ndec[EV_EXPN] || sc->install[EV_EXPN]) cb.on_expn = cb_expn;
  if (sc->ndec[EV_XCLIENT] || sc->install[EV_XCLIENT]) cb.on_xclient = cb_xclient;
  if (sc->ndec[EV_UNKNOWN] || sc->install[EV_UNKNOWN]) cb.on_unknown = cb_unknown;

  struct tern_server_config cfg = sc->cfg;
  cfg.mem = mem;
  int rc = tern_server_session_new(&r->s, &cfg, &cb, r);
  if (rc != 0) {
    if (!r->nomem) fail(r, "tern_server_session_new() = %d (%s)", rc, tern_err_name(rc));
    r->s = NULL;
    return rc;
  }
  rc = tern_server_session_start(r->s);
  if (rc != 0) fail(r, "start() = %d", rc);
  service(r);

  for (size_t i = 0; i < sc->nact && r->err.len == 0; i++) {
    const struct action *a = &sc->act[i];
    switch (a->kind) {
    case A_INPUT:
      if (!r->closed_feeding) feed_segment(r, a);
      break;
    case A_TLS: {
      unsigned want = tern_server_session_want(r->s);
      if (!(want & TERN_WANT_TLS)) {
        fail(r, "line %d: @tls but want() = 0x%x has no TERN_WANT_TLS", a->line,
             want);
        break;
      }
      rc = tern_server_session_tls_started(r->s);
      if (rc != 0) fail(r, "line %d: tls_started() = %d", a->line, rc);
      if (!tern_server_session_is_tls(r->s))
        fail(r, "line %d: is_tls() false after tls_started()", a->line);
      service(r);
      break;
    }
    case A_EOF:
      tern_server_session_eof(r->s);
      service(r);
      break;
    case A_TIMEOUT:
      tern_server_session_timeout(r->s);
      service(r);
      break;
    case A_CLOSE:
      tern_server_session_close(r->s, a->has_reply ? &a->reply : NULL);
      service(r);
      break;
    }
  }
  service(r);
  drain(r);
  if (r->err.len == 0) {
    const char *d;
    if (tern_server_session_output(r->s, &d) != 0)
      fail(r, "output left undrained at the end");
    if (tern_server_session_want(r->s) & TERN_WANT_WRITE)
      fail(r, "want() has TERN_WANT_WRITE after everything was drained");
    if (r->replies.len != r->output.len ||
        (r->replies.len && memcmp(r->replies.p, r->output.p, r->replies.len)))
      fail(r, "output() bytes (%zu) differ from on_reply bytes (%zu)",
           r->output.len, r->replies.len);
    if (r->pending) fail(r, "a decision is still owed at the end");
    if (!r->nomem) {
      /* How often on_data fires depends on the chunking, so unused
       * "@decide data" lines are fine. */
      for (int e = 0; e < EV_DATA; e++)
        if (r->next_dec[e] < sc->ndec[e])
          fail(r, "@decide %s at line %d was never used", ev_names[e],
               sc->dec[e][r->next_dec[e]].line);
    }
  }
  /* One close path: on_close fires exactly once for every session,
   * whatever ended it (here, at the latest, free()). */
  r->freeing = true;
  tern_server_session_free(r->s);
  r->freeing = false;
  r->s = NULL;
  if (r->closes != 1)
    fail(r, "on_close fired %d times for the session", r->closes);
  return 0;
}

/* ---- comparing ----------------------------------------------------------- */

static bool line_match(const char *exp, const char *act) {
  size_t el = strlen(exp);
  if (el && exp[el - 1] == '*') return strncmp(exp, act, el - 1) == 0;
  return strcmp(exp, act) == 0;
}

static void print_trace(const struct run *r, FILE *f) {
  for (size_t i = 0; i < r->ntrace; i++) fprintf(f, "    %s\n", r->trace[i]);
}

static const char *mode_name(const struct run *r, char *tmp, size_t cap) {
  switch (r->mode) {
  case M_WHOLE: return "--whole";
  case M_BYTEWISE: return "--bytewise";
  case M_SPLITS:
    if (r->split_mod)
      snprintf(tmp, cap, "--splits (split at every k %% %zu == %zu)",
               r->split_mod, r->split_rem);
    else
      snprintf(tmp, cap, "--splits (no split)");
    return tmp;
  case M_RANDOM: return "--random";
  case M_NOMEM: return "--nomem";
  }
  return "?";
}

/* Returns 0 when the run's trace equals the expectation. */
static int check(const struct script *sc, struct run *r, const char *extra) {
  char tmp[128];
  const char *mname = mode_name(r, tmp, sizeof tmp);
  if (r->err.len) {
    fprintf(stderr, "%s: FAIL [%s%s]: consistency\n%s", sc->path, mname,
            extra, r->err.p);
    fprintf(stderr, "  actual trace:\n");
    print_trace(r, stderr);
    return 1;
  }
  size_t n = sc->nexpect > r->ntrace ? sc->nexpect : r->ntrace;
  for (size_t i = 0; i < n; i++) {
    const char *e = i < sc->nexpect ? sc->expect[i] : NULL;
    const char *a = i < r->ntrace ? r->trace[i] : NULL;
    if (e && a && line_match(e, a)) continue;
    fprintf(stderr, "%s: FAIL [%s%s]: trace differs at entry %zu", sc->path,
            mname, extra, i + 1);
    if (e) fprintf(stderr, " (file line %d)", sc->expect_line[i]);
    fprintf(stderr, "\n");
    size_t from = i >= 3 ? i - 3 : 0;
    for (size_t k = from; k < i; k++)
      fprintf(stderr, "    ok        %s\n", r->trace[k]);
    fprintf(stderr, "  expected: %s\n", e ? e : "(end of trace)");
    fprintf(stderr, "  actual:   %s\n", a ? a : "(end of trace)");
    fprintf(stderr, "  whole actual trace:\n");
    print_trace(r, stderr);
    return 1;
  }
  return 0;
}

static int run_mode(const struct script *sc, enum mode m, size_t mod,
                    size_t rem, uint64_t seed, const char *extra) {
  struct run r;
  memset(&r, 0, sizeof r);
  r.sc = sc;
  r.mode = m;
  r.split_mod = mod;
  r.split_rem = rem;
  r.rng = seed ? seed : 0x9E3779B97F4A7C15ull;
  play(&r, NULL);
  int rc = check(sc, &r, extra);
  run_free(&r);
  return rc;
}

static int run_splits(const struct script *sc) {
  size_t len = sc->input.len;
  if (len < 2) return run_mode(sc, M_SPLITS, 0, 0, 0, "");
  if (len - 1 <= SPLIT_RUNS) {
    /* One run per split point k: split where k % len == k. */
    for (size_t k = 1; k < len; k++) {
      char extra[64];
      snprintf(extra, sizeof extra, ", k=%zu", k);
      if (run_mode(sc, M_SPLITS, len, k, 0, extra)) return 1;
    }
    return 0;
  }
  for (size_t rem = 0; rem < SPLIT_RUNS; rem++)
    if (run_mode(sc, M_SPLITS, SPLIT_RUNS, rem, 0, "")) return 1;
  return 0;
}

static int run_random(const struct script *sc, uint64_t seed) {
  for (int i = 0; i < RANDOM_ITERATIONS; i++) {
    uint64_t s = seed + (uint64_t)i * 0x9E3779B97F4A7C15ull;
    if (s == 0) s = 1;
    char extra[96];
    snprintf(extra, sizeof extra, " %llu, iteration %d",
             (unsigned long long)seed, i);
    if (run_mode(sc, M_RANDOM, 0, 0, s, extra)) {
      fprintf(stderr, "%s: reproduce with: player --random %llu %s\n", sc->path,
              (unsigned long long)seed, sc->path);
      return 1;
    }
  }
  return 0;
}

/* Fail each allocation in turn. Whatever happens, nothing may leak or
 * crash; a failure inside _new must be TERN_ENOMEM. */
static int run_nomem(const struct script *sc) {
  struct counting_mem cm = {0, -1, 0, false};
  struct tern_mem mem = {cm_malloc, cm_realloc, cm_free, &cm};
  struct run r;
  memset(&r, 0, sizeof r);
  r.sc = sc;
  r.mode = M_NOMEM;
  play(&r, &mem);
  int rc = check(sc, &r, " (counting allocator)");
  run_free(&r);
  if (rc) return rc;
  if (cm.live != 0) {
    fprintf(stderr, "%s: FAIL [--nomem]: %ld allocations leaked\n", sc->path,
            cm.live);
    return 1;
  }
  long total = cm.calls;
  for (long k = 0; k < total; k++) {
    struct counting_mem fm = {0, k, 0, false};
    struct tern_mem fmem = {cm_malloc, cm_realloc, cm_free, &fm};
    memset(&r, 0, sizeof r);
    r.sc = sc;
    r.mode = M_NOMEM;
    r.nomem = true;
    int nrc = play(&r, &fmem);
    if (nrc != 0 && nrc != TERN_ENOMEM) {
      fprintf(stderr, "%s: FAIL [--nomem]: allocation %ld failed, _new() = %d, "
                      "expected TERN_ENOMEM\n",
              sc->path, k, nrc);
      rc = 1;
    }
    if (fm.live != 0) {
      fprintf(stderr, "%s: FAIL [--nomem]: allocation %ld failed, %ld leaked\n",
              sc->path, k, fm.live);
      rc = 1;
    }
    if (nrc == 0 && r.closes != 1) {
      fprintf(stderr, "%s: FAIL [--nomem]: allocation %ld failed, on_close "
                      "fired %d times\n", sc->path, k, r.closes);
      rc = 1;
    }
    run_free(&r);
    if (rc) return rc;
  }
  return 0;
}

static int usage(void) {
  fprintf(stderr, "usage: player [--whole|--bytewise|--splits|--random SEED|"
                  "--nomem|--trace] FILE.smtp\n");
  return 2;
}

int main(int argc, char **argv) {
  const char *mode = NULL, *file = NULL;
  uint64_t seed = 0;
  bool seed_given = false;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--random") == 0) {
      if (i + 1 >= argc) return usage();
      mode = argv[i];
      seed = strtoull(argv[++i], NULL, 10);
      seed_given = true;
    } else if (strncmp(argv[i], "--", 2) == 0) {
      mode = argv[i];
    } else if (file == NULL) {
      file = argv[i];
    } else {
      return usage();
    }
  }
  if (file == NULL) return usage();
  if (!seed_given) {
    const char *env = getenv("TERN_TEST_SEED");
    seed = env ? strtoull(env, NULL, 10)
               : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 16);
  }
  struct script sc;
  if (script_load(&sc, file) != 0) {
    script_free(&sc);
    return 2;
  }

  if (mode && strcmp(mode, "--trace") == 0) {
    struct run r;
    memset(&r, 0, sizeof r);
    r.sc = &sc;
    r.mode = M_WHOLE;
    play(&r, NULL);
    for (size_t i = 0; i < r.ntrace; i++) printf("%s\n", r.trace[i]);
    if (r.err.len) fprintf(stderr, "consistency:\n%s", r.err.p);
    int rc = r.err.len ? 1 : 0;
    run_free(&r);
    script_free(&sc);
    return rc;
  }
  int rc = 0;
  bool all = mode == NULL;
  if (!all && strcmp(mode, "--whole") && strcmp(mode, "--bytewise") &&
      strcmp(mode, "--splits") && strcmp(mode, "--random") &&
      strcmp(mode, "--nomem"))
    return usage();
  if (all || strcmp(mode, "--whole") == 0)
    rc |= run_mode(&sc, M_WHOLE, 0, 0, 0, "");
  if (!rc && (all || strcmp(mode, "--bytewise") == 0))
    rc |= run_mode(&sc, M_BYTEWISE, 0, 0, 0, "");
  if (!rc && (all || strcmp(mode, "--splits") == 0)) rc |= run_splits(&sc);
  if (!rc && (all || strcmp(mode, "--random") == 0)) rc |= run_random(&sc, seed);
  if (!rc && (all || strcmp(mode, "--nomem") == 0)) rc |= run_nomem(&sc);
  if (rc == 0 && all) printf("%s: ok\n", file);
  script_free(&sc);
  return rc ? 1 : 0;
}
