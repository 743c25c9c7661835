/*
 * Endpoint URLs: smtp://host:port, smtps://host:port (implicit TLS),
 * smtp+starttls://host:port, lmtp://host:port, and unix sockets as
 * smtp:///path or lmtp:///path. Shared by listeners and the client.
 */
#ifndef TERN_NET_URL_H
#define TERN_NET_URL_H

#include <stdbool.h>

enum tern__scheme {
  TERN__SMTP,          /* smtp://, default port 25 */
  TERN__SMTPS,         /* smtps://, implicit TLS, 465 */
  TERN__SMTP_STARTTLS, /* smtp+starttls://, 587 */
  TERN__LMTP           /* lmtp://, 24 */
};

struct tern__url {
  enum tern__scheme scheme;
  bool is_unix;   /* path is set, host/port are not */
  char host[256]; /* without brackets; "*" = any address */
  int port;       /* 0..65535 */
  char path[108]; /* unix socket path (sun_path size) */
};

/* Parse `text`. Returns 0, or TERN_ESYNTAX (unknown scheme, bad port,
 * missing host, path too long, trailing junk). Pure function. */
int tern__url_parse(const char *text, struct tern__url *out);

#endif
