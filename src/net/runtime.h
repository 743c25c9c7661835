/*
 * The runtime's internal state: server, workers, listeners, connections.
 * server.c owns the server, its workers and listeners; conn.c owns the
 * connections (conn.h; their transport is stream.c, AUTH auth.c).
 */
#ifndef TERN_NET_RUNTIME_H
#define TERN_NET_RUNTIME_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "tern/net.h"

#include "proxy.h"
#include "sasl_internal.h"
#include "stream.h"
#include "tls.h"

#define TERN__MAX_LISTENERS 32

struct tern__conn;

/* One configured listener: one socket, bound at listen time so errors
 * show at once; at start every worker gets a duplicate of it. */
struct tern__listener {
  char *url;                       /* as given */
  bool is_unix;                    /* unix socket (worker 0 only) */
  bool implicit_tls;               /* smtps:// */
  bool lmtp;                       /* lmtp:// */
  struct tern_listener_options lo; /* options */
  struct sockaddr_storage addr;    /* TCP: bound address */
  char *path;                      /* unix: socket path */
  int fd;                          /* the listening socket (worker 0's) */
  int port;                        /* actual TCP port */
  bool adopted;                    /* from listen_fd(): not ours to unlink */
};

/* Per-worker listening handle. */
struct tern__lhandle {
  union {
    uv_tcp_t tcp;
    uv_pipe_t pipe;
    uv_handle_t handle;
    uv_stream_t stream;
  } h;
  struct tern__worker *w;
  struct tern__listener *l;
  bool open;
};

/* One event-loop thread. */
struct tern__worker {
  struct tern_server *srv;
  unsigned index;
  uv_loop_t *loop;                 /* srv->loop for worker 0 */
  uv_loop_t own_loop;              /* other workers' loop */
  uv_thread_t thread;
  bool thread_started;
  uv_async_t wake;                 /* shutdown request from worker 0 */
  uv_timer_t deadline;             /* shutdown deadline */
  struct tern__lhandle lh[TERN__MAX_LISTENERS];
  struct tern__sasl *sasl;         /* this thread's GNU SASL context */
  unsigned auth_running;           /* password checks on the pool (conn.c) */
  unsigned auth_waiting;           /* checks queued behind them */
  struct tern__conn *auth_head, *auth_tail; /* that queue, FIFO */
  struct tern__conn *conns;        /* live connections (list) */
  unsigned nconns;
  unsigned open_handles;           /* wake, deadline, listeners */
  bool draining;                   /* shutdown started here */
  bool done;                       /* every handle closed */
  struct tern__scratch scratch;    /* its connections' buffers */
};

/* Per-IP connection counts (shared by all workers, under a mutex). */
struct tern__ipcount {
  unsigned char key[17]; /* family byte + 16 address bytes */
  unsigned count;
  struct tern__ipcount *next;
};
#define TERN__IP_BUCKETS 1024

struct tern_server {
  uv_loop_t *loop;                     /* worker 0's loop */
  struct tern_server_options opt;      /* copy; strings below; its
                                          session is NULL: see below */
  struct tern_server_config session;   /* the session template, copied */
  struct tern_server_callbacks cb;     /* app callbacks, copy */
  struct tern_tls_cert *certs;         /* copy */
  char *strings;                       /* one block for copied strings */
  struct tern__tls_ctx *tls;           /* NULL without certificates */
  struct tern__cidr_list *xclient_nets;
  struct tern__listener listeners[TERN__MAX_LISTENERS];
  size_t nlisteners;
  struct tern__worker *workers;
  unsigned nworkers;
  atomic_uint total_conns;             /* across workers */
  atomic_ulong next_id;                /* session ids */
  unsigned long id_base;               /* start time, for ids */
  uv_mutex_t ip_lock;
  struct tern__ipcount *ip[TERN__IP_BUCKETS];
  bool started;
  bool shutting_down;
  atomic_uint workers_done;
  uv_async_t done_async;               /* a worker thread finished */
  bool done_async_open;
  void (*shutdown_cb)(struct tern_server *srv, void *arg);
  void *shutdown_arg;
  char err[512];                       /* tern_server_last_error() */
  /* tern_server_update(): `session` is copied under live_lock; the
   * other settings it changes are read with TERN__LIVE. Replaced
   * hostname/banner strings are kept until free (a worker may have just
   * copied the pointer). */
  uv_mutex_t live_lock;
  char **retired;
  size_t nretired;
  atomic_bool ip_used;                 /* per-IP counting ever happened */
};

/* Read a setting that tern_server_update() may change from another
 * thread (max_connections, max_per_ip, greeting_delay_ms,
 * auth_fail_delay_ms, shutdown_timeout_ms, session.hostname). */
#define TERN__LIVE(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)

/* server.c: a copy of the current session template. */
void tern__server_template(struct tern_server *srv,
                           struct tern_server_config *out);

/* server.c, for conn.c */
bool tern__ip_acquire(struct tern_server *srv, const struct sockaddr *sa);
void tern__ip_release(struct tern_server *srv, const struct sockaddr *sa);
void tern__worker_maybe_done(struct tern__worker *w);

/* conn.c, for server.c */
void tern__conn_accept(struct tern__lhandle *lh);
/* Shutdown: close idle sessions now (421 4.3.2), let the others finish;
 * `force` closes every session. */
void tern__conn_drain(struct tern__conn *c, bool force);
struct tern__conn *tern__conn_next(struct tern__conn *c);

#endif
