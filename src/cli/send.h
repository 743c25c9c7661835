/*
 * tern send's parts, shared by its three files: send.c (the command:
 * sender, recipients, stdin spooled with the header fields it adds),
 * send_args.c (the sendmail-compatible options) and send_smtp.c (one
 * SMTP or LMTP session, its -v trace and the exit status). See the top
 * of send.c for what tern send does.
 */
#ifndef TERN_CLI_SEND_H
#define TERN_CLI_SEND_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "cli.h"
#include "send_msg.h"

/* The command line (send_args.c). */
struct sopts {
  const char *prog;          /* "tern send" or "sendmail" */
  bool extract;              /* -t */
  bool ignore_dots;          /* -i / -oi */
  int verbose;               /* -v */
  const char *sender;        /* -f / -r, NULL = default */
  const char *fullname;      /* -F */
  const char *server;        /* --server / TERN_SERVER */
  bool server_given;         /* --server on the command line */
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
  const char *queue_cmd;     /* -bp: "list", -q: "flush" (tern queue) */
  const char *config;        /* -C FILE: tern serve's, for -bp / -q */
  /* mail to a domain (tern/net.h "mx:" URLs) */
  const char *mx;            /* --mx DOMAIN: its MX hosts, not --server */
  const char *resolver;      /* --resolver ADDR[:PORT] (forwarders) */
  const char *trust_anchor;  /* --trust-anchor FILE (DNSSEC) */
  bool no_dnssec;            /* --no-dnssec: no validation, so no DANE */
  const char *tls_policy;    /* --tls-policy LEVEL (default auto) */
  unsigned mx_port;          /* --mx-port N (default 25) */
  const char *bind;          /* --bind ADDR: source address */
  bool requiretls;           /* --requiretls (RFC 8689) */
  char mx_url[300];          /* "mx:DOMAIN" */
};

/* One run of tern send: options, spool, envelope, session, outcome. */
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
  struct tern_resolver *res;  /* --mx: ours, freed after the loop */
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

/* Record the first failure: its exit code and its one line (later ones
 * are dropped: the first is what really failed). */
void send_set_fail(struct send *s, int ex, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Parse the command line into s->o; recipients given as arguments go
 * to s->arg_rcpt. Returns 0 to go on, -1 when the command is done and
 * exits 0 (--help, --version), or EX_USAGE after printing why.
 */
int send_parse_args(struct send *s, int argc, char **argv);

/*
 * Send the spooled message (s->spool, s->size) from s->from to
 * s->trcpt[0..s->msg.nrcpts) in one session to s->o.server, printing
 * each refusal. Returns the process exit status (see send.c).
 */
int send_deliver(struct send *s);

#endif /* TERN_CLI_SEND_H */
