/*
 * tern send — the command line: sendmail's options (short ones
 * clustered as getopt does: -ti, -fuser, -f user) and tern's long ones
 * (--name VALUE or --name=VALUE), each in a table (send.h).
 */
#include <arpa/inet.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sysexits.h>

#include "send.h"

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
    "  --helo NAME   EHLO name (default this host's FQDN)\n"
    "  --timeout S   connect and reply timeout in seconds\n"
    "  --mx DOMAIN   deliver to DOMAIN's mail hosts (MX, or the domain\n"
    "                itself), not to --server; TLS per --tls-policy\n"
    "  --tls-policy auto|none|may|encrypt|verify|dane   (with --mx;\n"
    "                auto: DANE, else MTA-STS, else opportunistic)\n"
    "  --resolver ADDR[:PORT]   DNS server(s) to ask (default\n"
    "                /etc/resolv.conf's); --trust-anchor FILE: DNSSEC keys;\n"
    "                --no-dnssec: do not validate (then no DANE)\n"
    "  --mx-port N   port of the mail hosts (default 25)\n"
    "  --requiretls  REQUIRETLS (RFC 8689): verified TLS all the way\n"
    "  --bind ADDR   connect from this local address\n"
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

/* ---- short options: sendmail's letters ----------------------------------- */

/* Apply one short option; v is its value (NULL for those without one).
 * Returns 0 or EX_USAGE (after printing why). */
typedef int (*short_fn)(struct sopts *o, char c, const char *v);

static int s_extract(struct sopts *o, char c, const char *v) {
  (void)c, (void)v;
  o->extract = true;
  return 0;
}

static int s_ignore_dots(struct sopts *o, char c, const char *v) {
  (void)c, (void)v;
  o->ignore_dots = true;
  return 0;
}

static int s_verbose(struct sopts *o, char c, const char *v) {
  (void)c, (void)v;
  o->verbose++;
  return 0;
}

/* Nothing to do without a queue (-n -m -U -G -e), or harmless
 * (-h hop count, -L syslog label, -p protocol:host, -A). */
static int s_nothing(struct sopts *o, char c, const char *v) {
  (void)o, (void)c, (void)v;
  return 0;
}

/* -C -X -O -M -d: configuration and debugging. */
static int s_warn(struct sopts *o, char c, const char *v) {
  fprintf(stderr, "%s: warning: ignoring option -%c %s\n", o->prog, c, v);
  return 0;
}

static int s_sender(struct sopts *o, char c, const char *v) {
  (void)c;
  o->sender = v;
  return 0;
}

static int s_fullname(struct sopts *o, char c, const char *v) {
  (void)c;
  o->fullname = v;
  return 0;
}

static int s_envid(struct sopts *o, char c, const char *v) {
  (void)c;
  o->envid = v;
  return 0;
}

static int s_body(struct sopts *o, char c, const char *v) {
  (void)c;
  if (!strcasecmp(v, "8BITMIME"))
    o->body = TERN_BODY_8BITMIME;
  else if (!strcasecmp(v, "7BIT"))
    o->body = TERN_BODY_7BIT;
  else {
    fprintf(stderr, "%s: bad -B '%s' (7BIT or 8BITMIME)\n", o->prog, v);
    return EX_USAGE;
  }
  return 0;
}

static int s_notify(struct sopts *o, char c, const char *v) {
  (void)c;
  if (parse_notify(o, v) != 0) {
    fprintf(stderr, "%s: bad -N '%s' (never, or a list of "
            "success,failure,delay)\n", o->prog, v);
    return EX_USAGE;
  }
  return 0;
}

static int s_ret(struct sopts *o, char c, const char *v) {
  (void)c;
  if (!strcasecmp(v, "full"))
    o->ret = TERN_RET_FULL;
  else if (!strcasecmp(v, "hdrs"))
    o->ret = TERN_RET_HDRS;
  else {
    fprintf(stderr, "%s: bad -R '%s' (full or hdrs)\n", o->prog, v);
    return EX_USAGE;
  }
  return 0;
}

static int s_o(struct sopts *o, char c, const char *v) {
  (void)c;
  opt_o(o, v);
  return 0;
}

/* -bm (deliver mail) is what tern send does; -bp (print the queue) is
 * `tern queue list`, the queue being tern serve's; the other modes are
 * not supported. */
static int s_mode(struct sopts *o, char c, const char *v) {
  (void)c;
  if (!strcmp(v, "p")) {
    o->queue_cmd = "list";
    return 0;
  }
  if (strcmp(v, "m") != 0) {
    fprintf(stderr, "%s: -b%s is not supported (only -bm, and -bp: "
            "tern queue list)\n", o->prog, v);
    return EX_USAGE;
  }
  return 0;
}

/* -q alone (run the queue once) is `tern queue flush`; -qINTERVAL (a
 * queue runner) and -qI/-qR/-qS (a selection) are not: tern serve
 * retries on its own schedule, and `tern queue flush ID` takes one. */
static int s_queue(struct sopts *o, char c, const char *v) {
  (void)c;
  if (v[0] != '\0') {
    fprintf(stderr, "%s: -q%s is not supported (-q alone: tern queue "
            "flush; tern serve retries on its own schedule)\n", o->prog, v);
    return EX_USAGE;
  }
  o->queue_cmd = "flush";
  return 0;
}

/* -C FILE: sendmail's configuration file; here tern serve's, where -bp
 * and -q find the queue. Ignored (with a warning) when sending. */
static int s_config(struct sopts *o, char c, const char *v) {
  (void)c;
  o->config = v;
  return 0;
}

static const struct short_opt {
  char c;
  bool value; /* takes a value: the rest of the argument, or the next */
  short_fn apply;
} short_opts[] = {
    {'t', false, s_extract}, {'i', false, s_ignore_dots},
    {'v', false, s_verbose}, {'n', false, s_nothing},
    {'m', false, s_nothing}, {'U', false, s_nothing},
    {'G', false, s_nothing}, {'e', false, s_nothing},
    {'f', true, s_sender},   {'r', true, s_sender},
    {'F', true, s_fullname}, {'B', true, s_body},
    {'N', true, s_notify},   {'R', true, s_ret},
    {'V', true, s_envid},    {'o', true, s_o},
    {'b', true, s_mode},     {'q', true, s_queue},
    {'h', true, s_nothing},  {'L', true, s_nothing},
    {'p', true, s_nothing},  {'A', true, s_nothing},
    {'C', true, s_config},   {'X', true, s_warn},
    {'O', true, s_warn},     {'M', true, s_warn},
    {'d', true, s_warn},
};

static const struct short_opt *short_opt(char c) {
  for (size_t k = 0; k < sizeof short_opts / sizeof *short_opts; k++)
    if (short_opts[k].c == c)
      return &short_opts[k];
  return NULL;
}

/* argv[*i], a cluster of short options ("-ti", "-fuser", "-f user"):
 * a letter with a value takes the rest of the argument, or the next
 * argument (-q alone has an empty one). */
static int parse_short(struct sopts *o, int argc, char **argv, int *i) {
  const char *a = argv[*i];
  for (size_t j = 1; a[j]; j++) {
    const struct short_opt *so = short_opt(a[j]);
    if (!so) {
      fprintf(stderr, "%s: unknown option '-%c'\n", o->prog, a[j]);
      usage(stderr, o->prog);
      return EX_USAGE;
    }
    if (!so->value) {
      so->apply(o, a[j], NULL);
      continue;
    }
    const char *v;
    if (a[j + 1])
      v = a + j + 1;
    else if (a[j] == 'q')
      v = "";
    else if (*i + 1 < argc)
      v = argv[++*i];
    else {
      fprintf(stderr, "%s: option -%c needs a value\n", o->prog, a[j]);
      return EX_USAGE;
    }
    return so->apply(o, a[j], v); /* the value used the rest of a */
  }
  return 0;
}

/* ---- long options: tern's own -------------------------------------------- */

enum long_kind {
  L_STRING,  /* a value, kept as it is */
  L_SERVER,  /* --server: a string, and server_given */
  L_SECONDS, /* a value, seconds (--timeout) */
  L_PORT,    /* a value, 1..65535 (--mx-port) */
  L_FLAG,    /* no value: sets a bool */
  L_COUNT,   /* no value: counts (--verbose) */
  L_VERSION,
  L_HELP,
};

#define SO(f) offsetof(struct sopts, f)

static const struct long_opt {
  const char *name;
  enum long_kind kind;
  size_t off; /* the field in struct sopts */
} long_opts[] = {
    {"server", L_SERVER, SO(server)},
    {"ca-file", L_STRING, SO(ca_file)},
    {"user", L_STRING, SO(user)},
    {"password-file", L_STRING, SO(password_file)},
    {"helo", L_STRING, SO(helo)},
    {"timeout", L_SECONDS, SO(timeout_ms)},
    {"mx", L_STRING, SO(mx)},
    {"resolver", L_STRING, SO(resolver)},
    {"trust-anchor", L_STRING, SO(trust_anchor)},
    {"no-dnssec", L_FLAG, SO(no_dnssec)},
    {"tls-policy", L_STRING, SO(tls_policy)},
    {"mx-port", L_PORT, SO(mx_port)},
    {"bind", L_STRING, SO(bind)},
    {"requiretls", L_FLAG, SO(requiretls)},
    {"starttls", L_FLAG, SO(starttls)},
    {"no-verify", L_FLAG, SO(no_verify)},
    {"insecure-auth", L_FLAG, SO(insecure_auth)},
    {"verbose", L_COUNT, SO(verbose)},
    {"version", L_VERSION, 0},
    {"help", L_HELP, 0},
};

static const struct long_opt *long_opt(const char *name, size_t nl) {
  for (size_t k = 0; k < sizeof long_opts / sizeof *long_opts; k++)
    if (strlen(long_opts[k].name) == nl &&
        !strncmp(name, long_opts[k].name, nl))
      return &long_opts[k];
  return NULL;
}

static int apply_long(struct sopts *o, const struct long_opt *lo,
                      const char *v) {
  char *field = (char *)o + lo->off;
  switch (lo->kind) {
  case L_SERVER:
    o->server_given = true;
    /* fall through */
  case L_STRING:
    *(const char **)field = v;
    return 0;
  case L_SECONDS:
    if (cli_parse_seconds_ms(v, (unsigned *)field) != 0) {
      fprintf(stderr, "%s: bad --%s '%s' (seconds)\n", o->prog, lo->name, v);
      return EX_USAGE;
    }
    return 0;
  case L_PORT: {
    char *end = NULL;
    unsigned long n = strtoul(v, &end, 10);
    if (!*v || *end || n < 1 || n > 65535 || v[0] == '-' || v[0] == '+') {
      fprintf(stderr, "%s: bad --%s '%s' (a port, 1-65535)\n", o->prog,
              lo->name, v);
      return EX_USAGE;
    }
    *(unsigned *)field = (unsigned)n;
    return 0;
  }
  case L_FLAG:
    *(bool *)field = true;
    return 0;
  case L_COUNT:
    (*(int *)field)++;
    return 0;
  case L_VERSION:
    printf("tern %s (library %s)\n", TERN_VERSION_STRING,
           tern_version_string());
    return -1;
  case L_HELP:
    usage(stdout, o->prog);
    return -1;
  }
  return 0;
}

/* argv[*i], "--name VALUE" or "--name=VALUE". */
static int parse_long(struct sopts *o, int argc, char **argv, int *i) {
  const char *a = argv[*i];
  const char *name = a + 2, *eq = strchr(name, '=');
  size_t nl = eq ? (size_t)(eq - name) : strlen(name);
  const struct long_opt *lo = long_opt(name, nl);
  const char *val = NULL;
  if (lo && (lo->kind == L_STRING || lo->kind == L_SECONDS ||
             lo->kind == L_SERVER || lo->kind == L_PORT)) {
    if (eq)
      val = eq + 1;
    else if (*i + 1 < argc)
      val = argv[++*i];
    else {
      fprintf(stderr, "%s: option --%.*s needs a value\n", o->prog, (int)nl,
              name);
      return EX_USAGE;
    }
  } else if (eq) {
    fprintf(stderr, "%s: option --%.*s takes no value\n", o->prog, (int)nl,
            name);
    return EX_USAGE;
  }
  if (!lo) {
    fprintf(stderr, "%s: unknown option '%s'\n", o->prog, a);
    usage(stderr, o->prog);
    return EX_USAGE;
  }
  return apply_long(o, lo, val);
}

/* ---- the command line ---------------------------------------------------- */

/* --mx and the options that only make sense with it. */
static int check_mx_args(struct send *s) {
  struct sopts *o = &s->o;
  const char *only_mx = o->resolver       ? "--resolver"
                        : o->trust_anchor ? "--trust-anchor"
                        : o->tls_policy   ? "--tls-policy"
                        : o->mx_port      ? "--mx-port"
                        : o->no_dnssec    ? "--no-dnssec"
                                          : NULL;
  if (o->requiretls && o->no_verify) {
    fprintf(stderr, "%s: --requiretls needs a verified certificate: not "
            "with --no-verify\n", o->prog);
    return EX_USAGE;
  }
  if (!o->mx) {
    if (only_mx) {
      fprintf(stderr, "%s: %s needs --mx DOMAIN\n", o->prog, only_mx);
      return EX_USAGE;
    }
    return 0;
  }
  if (o->server_given) {
    fprintf(stderr, "%s: --mx and --server exclude each other\n", o->prog);
    return EX_USAGE;
  }
  if (o->starttls) {
    fprintf(stderr, "%s: --starttls: with --mx, use --tls-policy\n", o->prog);
    return EX_USAGE;
  }
  if (o->tls_policy && strcmp(o->tls_policy, "auto") &&
      strcmp(o->tls_policy, "none") && strcmp(o->tls_policy, "may") &&
      strcmp(o->tls_policy, "encrypt") && strcmp(o->tls_policy, "verify") &&
      strcmp(o->tls_policy, "dane")) {
    fprintf(stderr, "%s: bad --tls-policy '%s' (auto, none, may, encrypt, "
            "verify, dane)\n", o->prog, o->tls_policy);
    return EX_USAGE;
  }
  struct in_addr v4; /* an address literal is not a domain */
  int n = snprintf(o->mx_url, sizeof o->mx_url, "mx:%s", o->mx);
  if (!*o->mx || n < 0 || (size_t)n >= sizeof o->mx_url ||
      strchr(o->mx, '/') || strchr(o->mx, ':') || strchr(o->mx, '[') ||
      inet_pton(AF_INET, o->mx, &v4) == 1) {
    fprintf(stderr, "%s: --mx: '%s' is not a domain\n", o->prog, o->mx);
    return EX_USAGE;
  }
  o->server = o->mx_url;
  return 0;
}

/* See send.h. A lone "-" is refused; "--" ends the options. */
int send_parse_args(struct send *s, int argc, char **argv) {
  struct sopts *o = &s->o;
  bool opts_done = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    int rc = 0;
    if (a[0] == '-' && a[1] == '\0') {
      fprintf(stderr, "%s: '-' is not a recipient\n", o->prog);
      return EX_USAGE;
    }
    if (opts_done || a[0] != '-')
      send_parse_addr_list(a, strlen(a), &s->arg_rcpt);
    else if (!strcmp(a, "--"))
      opts_done = true;
    else if (a[1] == '-')
      rc = parse_long(o, argc, argv, &i);
    else
      rc = parse_short(o, argc, argv, &i);
    if (rc != 0)
      return rc;
  }
  /* The EHLO name goes on a command line: a CR, LF, space or control
   * octet there is a usage error now, not a failed session later. */
  for (const char *p = o->helo; p && *p; p++)
    if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f) {
      fprintf(stderr, "%s: --helo: not a host name or address literal\n",
              o->prog);
      return EX_USAGE;
    }
  if (o->helo && !*o->helo) {
    fprintf(stderr, "%s: --helo: empty\n", o->prog);
    return EX_USAGE;
  }
  return check_mx_args(s);
}
