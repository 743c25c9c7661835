/*
 * poll_server — the sans-IO core in a plain poll() loop, public API only.
 *
 * A console mail sink in the spirit of node-smtp's synopsis: it listens
 * on 127.0.0.1:2525 (or the port given as the first argument), prints
 * the sender, the recipients and the message of every transaction, then
 * "EOT", and accepts it. No TLS, no AUTH: that is the runtime's job
 * (examples/console.c on libuv arrives with Step 2).
 *
 *   ./poll_server [port]
 *   swaks --server 127.0.0.1:2525 --to you@example.org
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <tern/tern.h>

#define MAX_CLIENTS 64

struct client {
  int fd;
  struct tern_server_session *s;
  char in[16384]; /* bytes read but not yet taken by the session */
  size_t in_len;
};

static int on_mail(struct tern_server_session *s, const struct tern_path *from,
                   const struct tern_mail_params *p, struct tern_reply *r,
                   void *ud) {
  (void)s, (void)p, (void)r, (void)ud;
  printf("MAIL FROM: <%.*s>\n", (int)from->mailbox.len, from->mailbox.ptr);
  return TERN_REPLY_NOW;
}

static int on_rcpt(struct tern_server_session *s, const struct tern_path *to,
                   const struct tern_rcpt_params *p, struct tern_reply *r,
                   void *ud) {
  (void)s, (void)p, (void)r, (void)ud;
  printf("RCPT TO: <%.*s>\n", (int)to->mailbox.len, to->mailbox.ptr);
  return TERN_REPLY_NOW;
}

static int on_data(struct tern_server_session *s, const char *buf, size_t len,
                   void *ud) {
  (void)s, (void)ud;
  fwrite(buf, 1, len, stdout);
  return 0;
}

static int on_data_end(struct tern_server_session *s,
                       const struct tern_envelope *env,
                       struct tern_reply *r, void *ud) {
  (void)s, (void)r, (void)ud;
  printf("EOT (%llu octets)\n", (unsigned long long)env->size);
  fflush(stdout);
  return TERN_REPLY_NOW;
}

/* Write what the session queued; false when the connection is done. */
static int flush_out(struct client *c) {
  const char *out;
  size_t n;
  while ((n = tern_server_session_output(c->s, &out)) > 0) {
    ssize_t w = write(c->fd, out, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return 0;
    tern_server_session_consume(c->s, (size_t)w);
  }
  return !(tern_server_session_want(c->s) & TERN_WANT_CLOSE);
}

/* Feed buffered input; keep what the session did not take yet. */
static int pump(struct client *c) {
  while (c->in_len && (tern_server_session_want(c->s) & TERN_WANT_READ)) {
    long n = tern_server_session_feed(c->s, c->in, c->in_len);
    if (n < 0)
      return 0;
    memmove(c->in, c->in + n, c->in_len - (size_t)n);
    c->in_len -= (size_t)n;
    if (!flush_out(c))
      return 0;
    if (n == 0)
      break;
  }
  return flush_out(c);
}

static void drop(struct client *c) {
  tern_server_session_eof(c->s);
  tern_server_session_free(c->s);
  close(c->fd);
  c->fd = -1;
}

int main(int argc, char **argv) {
  static struct client clients[MAX_CLIENTS];
  struct tern_server_callbacks cb;
  struct tern_server_config cfg;
  int port = argc > 1 ? atoi(argv[1]) : 2525;

  tern_server_callbacks_init(&cb);
  cb.on_mail = on_mail;
  cb.on_rcpt = on_rcpt;
  cb.on_data = on_data;
  cb.on_data_end = on_data_end;
  tern_server_config_init(&cfg);

  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_port = htons((unsigned short)port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
      listen(lfd, 16) != 0) {
    fprintf(stderr, "poll_server: 127.0.0.1:%d: %s\n", port, strerror(errno));
    return 1;
  }
  fprintf(stderr, "poll_server: listening on 127.0.0.1:%d\n", port);
  for (int i = 0; i < MAX_CLIENTS; i++)
    clients[i].fd = -1;

  for (;;) {
    struct pollfd pfd[MAX_CLIENTS + 1];
    int map[MAX_CLIENTS + 1], n = 0;
    pfd[n] = (struct pollfd){.fd = lfd, .events = POLLIN};
    map[n++] = -1;
    for (int i = 0; i < MAX_CLIENTS; i++) {
      if (clients[i].fd < 0)
        continue;
      pfd[n] = (struct pollfd){.fd = clients[i].fd, .events = POLLIN};
      map[n++] = i;
    }
    if (poll(pfd, (nfds_t)n, -1) < 0 && errno != EINTR)
      return 1;
    for (int k = 0; k < n; k++) {
      if (!pfd[k].revents)
        continue;
      if (map[k] < 0) {
        int fd = accept(lfd, NULL, NULL);
        int slot = 0;
        while (slot < MAX_CLIENTS && clients[slot].fd >= 0)
          slot++;
        struct client *c = &clients[slot < MAX_CLIENTS ? slot : 0];
        if (fd < 0 || slot == MAX_CLIENTS ||
            tern_server_session_new(&c->s, &cfg, &cb, NULL) != 0) {
          if (fd >= 0)
            close(fd);
          continue;
        }
        c->fd = fd;
        c->in_len = 0;
        tern_server_session_start(c->s);
        if (!flush_out(c))
          drop(c);
        continue;
      }
      struct client *c = &clients[map[k]];
      ssize_t r = read(c->fd, c->in + c->in_len, sizeof c->in - c->in_len);
      if (r <= 0) {
        drop(c);
        continue;
      }
      c->in_len += (size_t)r;
      if (!pump(c))
        drop(c);
    }
  }
}
