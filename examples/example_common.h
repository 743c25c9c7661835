/*
 * Shared by the runtime examples: argument parsing and graceful shutdown
 * on SIGINT/SIGTERM. Public API only.
 */
#ifndef TERN_EXAMPLE_COMMON_H
#define TERN_EXAMPLE_COMMON_H

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tern/net.h>
#include <tern/tern.h>

struct example_args {
  const char *url;      /* listen URL */
  const char *cert;     /* --tls-cert */
  const char *key;      /* --tls-key */
  unsigned workers;     /* --workers */
  int quiet;            /* --quiet */
};

static inline int example_parse(int argc, char **argv,
                                struct example_args *a) {
  a->url = "smtp://127.0.0.1:2525";
  a->cert = a->key = NULL;
  a->workers = 1;
  a->quiet = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--tls-cert") && i + 1 < argc)
      a->cert = argv[++i];
    else if (!strcmp(argv[i], "--tls-key") && i + 1 < argc)
      a->key = argv[++i];
    else if (!strcmp(argv[i], "--workers") && i + 1 < argc)
      a->workers = (unsigned)strtoul(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--quiet"))
      a->quiet = 1;
    else if (argv[i][0] != '-')
      a->url = argv[i];
    else {
      fprintf(stderr,
              "usage: %s [URL] [--tls-cert FILE --tls-key FILE] "
              "[--workers N] [--quiet]\n",
              argv[0]);
      return -1;
    }
  }
  if (!a->cert != !a->key) {
    fprintf(stderr, "%s: --tls-cert and --tls-key go together\n", argv[0]);
    return -1;
  }
  return 0;
}

static void example_on_down(struct tern_server *srv, void *arg) {
  (void)srv;
  uv_stop(arg);
}

static void example_on_signal(uv_signal_t *sig, int signum) {
  (void)signum;
  tern_server_shutdown(sig->data, example_on_down, sig->loop);
  uv_close((uv_handle_t *)sig, NULL);
}

/* Create, listen, run until SIGINT/SIGTERM, shut down gracefully. */
static inline int example_run(const struct example_args *a,
                              struct tern_server_options *o) {
  uv_loop_t *loop = uv_default_loop();
  struct tern_server *srv;
  struct tern_tls_cert cert = {a->cert, a->key};
  struct tern_listener_options lo;
  uv_signal_t sigint, sigterm;
  int r;

  char why[256] = "";
  signal(SIGPIPE, SIG_IGN); /* net.h: a peer that goes away is an error of
                               its connection, not the end of the program */
  if (a->cert) {
    o->tls_certs = &cert;
    o->tls_cert_count = 1;
  }
  o->workers = a->workers;
  o->error = why;
  o->error_size = sizeof why;
  r = tern_server_new(&srv, loop, o);
  if (r) { /* srv is NULL: nothing to free */
    fprintf(stderr, "tern_server_new: %s (%s)\n", tern_strerror(r), why);
    return 1;
  }
  tern_listener_options_init(&lo);
  lo.starttls = a->cert != NULL;
  r = tern_server_listen(srv, a->url, &lo);
  if (r || (r = tern_server_start(srv)) != 0) {
    fprintf(stderr, "%s\n", tern_server_last_error(srv));
    tern_server_free(srv);
    return 1;
  }
  fprintf(stderr, "listening on %s (port %d)\n", a->url,
          tern_server_listener_port(srv, 0));
  uv_signal_init(loop, &sigint);
  uv_signal_init(loop, &sigterm);
  sigint.data = sigterm.data = srv;
  uv_signal_start_oneshot(&sigint, example_on_signal, SIGINT);
  uv_signal_start_oneshot(&sigterm, example_on_signal, SIGTERM);
  uv_unref((uv_handle_t *)&sigint);
  uv_unref((uv_handle_t *)&sigterm);
  uv_run(loop, UV_RUN_DEFAULT);
  if (!uv_is_closing((uv_handle_t *)&sigint))
    uv_close((uv_handle_t *)&sigint, NULL);
  if (!uv_is_closing((uv_handle_t *)&sigterm))
    uv_close((uv_handle_t *)&sigterm, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  tern_server_free(srv);
  uv_loop_close(loop);
  return 0;
}

#endif
