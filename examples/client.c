/*
 * client — send one message with tern_send(), the one-call API.
 *
 *   ./client URL FROM RCPT... < message
 *   ./client smtp://127.0.0.1:2525 alice@example.net bob@example.org < msg
 *
 * URL: smtp://HOST[:PORT] (STARTTLS when offered), smtp+starttls://,
 * smtps://, lmtp://HOST[:PORT] or lmtp:///path/to.sock. Whenever TLS
 * is used its certificate must verify (tern_send_options' tls_verify is
 * on by default; unlike Postfix's "may", a bad certificate fails the
 * send rather than falling back to plain text). The message is
 * read from standard input as it is sent (LF or CRLF line ends).
 * Exit status: 0 when every recipient got the message; 1 when any did
 * not (a line on stderr says who and why); 2 for a usage error.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include <tern/net.h>
#include <tern/tern.h>

static int status = 1;

static void on_sent(const struct tern_send_result *r, void *ud) {
  const char *url = ud;
  if (r->error) { /* no answer: could not connect, TLS, AUTH, ... */
    fprintf(stderr, "client: %s: %s\n", url, r->error_text);
    return;
  }
  for (size_t i = 0; i < r->nrcpt; i++) {
    const struct tern_send_rcpt_result *x = &r->rcpts[i];
    /* refused at RCPT, or after the data (the whole message, or in
     * LMTP this recipient alone) */
    const struct tern_send_reply *why =
        x->rcpt.code / 100 != 2 ? &x->rcpt : &x->data;
    if (!x->delivered)
      fprintf(stderr, "client: <%s> refused: %d%s%s %s\n", x->address,
              why->code, why->enhanced ? " " : "",
              why->enhanced ? why->enhanced : "", why->text);
  }
  if (r->delivered == r->nrcpt) {
    printf("sent to %zu recipient%s: %d %s\n", r->nrcpt,
           r->nrcpt == 1 ? "" : "s", r->reply.code, r->reply.text);
    status = 0;
  }
}

int main(int argc, char **argv) {
  if (argc == 2 && !strcmp(argv[1], "--help")) {
    printf("usage: %s URL FROM RCPT... < message\n", argv[0]);
    return 0;
  }
  if (argc < 4) {
    fprintf(stderr, "usage: %s URL FROM RCPT... < message\n", argv[0]);
    return 2;
  }
  /* A closed standard input would be taken by the loop's own first
   * descriptor and sent as the message: refuse it before. */
  if (fcntl(0, F_GETFD) < 0) {
    fprintf(stderr, "client: no standard input to read the message from\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN); /* a server that goes away is an error, not a
                               signal that ends the program */
  uv_loop_t *loop = uv_default_loop();
  struct tern_send_body body = tern_send_body_fd(0); /* standard input */
  int rc = tern_send(loop, argv[1], argv[2], (const char *const *)argv + 3,
                     (size_t)(argc - 3), &body, NULL, on_sent, argv[1]);
  if (rc) { /* the callback will not be called */
    fprintf(stderr, "client: cannot send: %s\n", tern_strerror(rc));
    return 2;
  }
  uv_run(loop, UV_RUN_DEFAULT); /* until on_sent has run */
  uv_loop_close(loop);
  return status;
}
