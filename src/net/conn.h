/*
 * One server connection (conn.c), shared with the AUTH and XCLIENT glue
 * (auth.c). conn.c owns its life: accept, PROXY, timers, limits, close.
 */
#ifndef TERN_NET_CONN_H
#define TERN_NET_CONN_H

#include "auth.h"
#include "runtime.h"
#include "stream.h"

enum tern__phase { PH_PROXY, PH_GREET_WAIT, PH_TLS_WAIT, PH_SMTP };

struct tern__conn {
  struct tern__worker *w;         /* owner thread */
  struct tern__listener *l;       /* accepted on */
  struct tern__stream st;         /* socket, TLS, held input, writes */
  uv_timer_t timer;               /* idle timeouts, greeting, AUTH delay */
  uv_timer_t dl;                  /* total deadlines, below */
  int handles;                    /* open libuv handles (+ a check) */
  struct tern__conn *prev, *next; /* worker's list */

  struct tern_server_session *s;   /* NULL before the PROXY header */
  struct tern__sasl_session *sasl; /* an AUTH exchange in progress */
  struct tern_session_info info;   /* tern_session_info() */
  struct sockaddr_storage peer;    /* client (after PROXY) */
  struct sockaddr_storage counted; /* address counted for max_per_ip */
  bool ip_counted;
  char id[32];
  char peer_addr[64];
  char local_addr[64];
  char *auth_user; /* after AUTH, owned */

  char *proxy; /* PROXY header so far (PH_PROXY) */
  size_t proxy_len;

  unsigned char phase;          /* enum tern__phase */
  unsigned char tmode;          /* conn.c's timer mode */
  bool closing;                 /* conn_close() was called */
  bool drain;                   /* shutdown: close when idle */
  unsigned auth_failures;       /* for the growing delay */
  uv_work_t auth_work;          /* a password check on the pool */
  bool auth_busy;               /* auth_work submitted, not done */
  bool auth_queued;             /* in the worker's auth queue */
  struct tern__conn *auth_next; /* that queue */

  /* Total deadlines (uv_now() times, 0 = off); `dl` runs to the earliest.
   * Unlike the idle timer, traffic does not move them. */
  uint64_t dl_proxy; /* whole PROXY header */
  uint64_t dl_tls;   /* whole TLS handshake */
  uint64_t dl_line;  /* one command line, from its first byte */
  uint64_t dl_write; /* output pending: next progress due */
};

/* conn.c, for auth.c */
struct tern__conn *tern__conn_of(const struct tern_server_session *s);
/* Free a connection whose handles are all closed. */
void tern__conn_free(struct tern__conn *c);
/* Answer AUTH's failure (535) after `ms`; traffic does not move it. */
void tern__conn_auth_delay(struct tern__conn *c, uint64_t ms);

#endif
