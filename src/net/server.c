/*
 * tern_server: listeners, worker threads, connection limits, graceful
 * shutdown. Connections themselves are in conn.c.
 *
 * Worker 0 runs on the caller's loop. Workers 1..n-1 are threads with a
 * loop each. Every listener is one socket, bound once in
 * tern_server_listen() without SO_REUSEPORT (so a second process cannot
 * bind the same port: TERN_EADDRINUSE); each worker watches its own
 * duplicate of it and accepts from it, so no connection ever moves
 * between threads (docs/decisions/0012-one-listening-socket.md).
 */
#include "internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "runtime.h"
#include "url.h"

static char *dup_str(const char *s) { return s ? strdup(s) : NULL; }

static void set_err(struct tern_server *srv, const char *a, const char *b) {
  snprintf(srv->err, sizeof srv->err, "%s%s%s", a, b ? ": " : "",
           b ? b : "");
}

/* ---- per-IP counts ------------------------------------------------------------ */

/* family byte + address; port ignored. False for non-IP addresses. */
static bool ip_key(const struct sockaddr *sa, unsigned char key[17]) {
  memset(key, 0, 17);
  if (sa->sa_family == AF_INET) {
    key[0] = 4;
    memcpy(key + 1, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    return true;
  }
  if (sa->sa_family == AF_INET6) {
    key[0] = 6;
    memcpy(key + 1, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
    return true;
  }
  return false;
}

static unsigned ip_hash(const unsigned char key[17]) {
  unsigned h = 2166136261u; /* FNV-1a */
  for (int i = 0; i < 17; i++)
    h = (h ^ key[i]) * 16777619u;
  return h % TERN__IP_BUCKETS;
}

/* Count a connection from sa; false when max_per_ip is reached. */
bool tern__ip_acquire(struct tern_server *srv, const struct sockaddr *sa) {
  unsigned char key[17];
  bool ok = true;
  unsigned max = TERN__LIVE(srv->opt.max_per_ip);
  if (!max || !ip_key(sa, key))
    return true;
  atomic_store(&srv->ip_used, true);
  uv_mutex_lock(&srv->ip_lock);
  struct tern__ipcount **b = &srv->ip[ip_hash(key)], *e = *b;
  while (e && memcmp(e->key, key, sizeof key))
    e = e->next;
  if (e && e->count >= max) {
    ok = false;
  } else if (e) {
    e->count++;
  } else if ((e = calloc(1, sizeof *e)) != NULL) {
    memcpy(e->key, key, sizeof key);
    e->count = 1;
    e->next = *b;
    *b = e;
  } else {
    ok = false; /* OutOfMemory: refuse rather than not count */
  }
  uv_mutex_unlock(&srv->ip_lock);
  return ok;
}

void tern__ip_release(struct tern_server *srv, const struct sockaddr *sa) {
  unsigned char key[17];
  /* max_per_ip may have changed since the acquire (tern_server_update):
   * look the address up whenever counting ever happened */
  if (!atomic_load(&srv->ip_used) || !ip_key(sa, key))
    return;
  uv_mutex_lock(&srv->ip_lock);
  struct tern__ipcount **pp = &srv->ip[ip_hash(key)];
  while (*pp && memcmp((*pp)->key, key, sizeof key))
    pp = &(*pp)->next;
  if (*pp && --(*pp)->count == 0) {
    struct tern__ipcount *dead = *pp;
    *pp = dead->next;
    free(dead);
  }
  uv_mutex_unlock(&srv->ip_lock);
}

/* ---- server ------------------------------------------------------------------- */

static void certs_free(struct tern_tls_cert *certs, size_t n) {
  for (size_t i = 0; certs && i < n; i++) {
    free((char *)certs[i].cert_file);
    free((char *)certs[i].key_file);
  }
  free(certs);
}

static struct tern_tls_cert *certs_dup(const struct tern_tls_cert *c,
                                       size_t n) {
  struct tern_tls_cert *d = calloc(n, sizeof *d);
  bool ok = d != NULL;
  for (size_t i = 0; ok && i < n; i++) {
    d[i].cert_file = dup_str(c[i].cert_file);
    d[i].key_file = dup_str(c[i].key_file);
    ok = d[i].cert_file && (!c[i].key_file || d[i].key_file);
  }
  if (!ok) {
    certs_free(d, n);
    d = NULL;
  }
  return d;
}

/* Copy the options' structs and strings into srv. No pointer in srv is
 * the caller's at any point, so tern_server_free() can undo a failure
 * anywhere. */
static int copy_options(struct tern_server *srv,
                        const struct tern_server_options *opts) {
  struct tern_server_options o;
  struct tern_server_config sc;
  tern_server_options_init(&o);
  tern_server_config_init(&sc);
  tern_server_callbacks_init(&srv->cb);
  if (tern__copy_sized(&o, sizeof o, opts) != 0 ||
      (o.session && tern__copy_sized(&sc, sizeof sc, o.session)) ||
      (o.callbacks && tern__copy_sized(&srv->cb, sizeof srv->cb, o.callbacks))) {
    set_err(srv, "options from a newer header with unknown fields set", NULL);
    return TERN_EINVAL;
  }
  srv->opt = o;
  srv->session = sc;
  srv->opt.session = NULL;   /* srv->session */
  srv->opt.callbacks = NULL; /* srv->cb */
  srv->opt.error = NULL;
  srv->opt.error_size = 0;
  srv->session.hostname = dup_str(sc.hostname ? sc.hostname : "localhost");
  srv->session.banner = dup_str(sc.banner);
  srv->session.auth_mechanisms = NULL; /* set per connection */
  srv->opt.auth_mechanisms = dup_str(o.auth_mechanisms);
  srv->opt.xclient_networks = dup_str(o.xclient_networks);
  srv->opt.auth = NULL;
  srv->opt.tls_certs = NULL;
  srv->opt.tls_cert_count = 0;
  if (o.tls_cert_count &&
      (srv->certs = certs_dup(o.tls_certs, o.tls_cert_count)) != NULL) {
    srv->opt.tls_certs = srv->certs;
    srv->opt.tls_cert_count = o.tls_cert_count;
  }
  struct tern_auth_callbacks *a = NULL;
  if (o.auth && (a = malloc(sizeof *a)) != NULL) {
    tern_auth_callbacks_init(a);
    srv->opt.auth = a;
    if (tern__copy_sized(a, sizeof *a, o.auth) != 0) {
      set_err(srv, "auth callbacks from a newer header with unknown fields "
                   "set", NULL);
      return TERN_EINVAL;
    }
  }
  if (!srv->session.hostname || (sc.banner && !srv->session.banner) ||
      (o.auth && !a) || (o.tls_cert_count && !srv->certs) ||
      (o.auth_mechanisms && !srv->opt.auth_mechanisms) ||
      (o.xclient_networks && !srv->opt.xclient_networks)) {
    set_err(srv, "out of memory", NULL);
    return TERN_ENOMEM;
  }
  return 0;
}

/* Everything tern_server_new() does after allocating. */
static int server_setup(struct tern_server *srv,
                        const struct tern_server_options *opts) {
  int r = copy_options(srv, opts);
  if (r)
    return r;
  if (!srv->opt.proxy_timeout_ms)
    srv->opt.proxy_timeout_ms = 10000;
  if (!srv->opt.tls_handshake_timeout_ms)
    srv->opt.tls_handshake_timeout_ms = 30000;
  if (!srv->opt.write_timeout_ms)
    srv->opt.write_timeout_ms = 60000;
  if (srv->opt.workers == 0)
    srv->opt.workers = uv_available_parallelism();
  if (srv->opt.workers > 256)
    srv->opt.workers = 256;
  if (srv->certs) {
    r = tern__tls_ctx_new(&srv->tls, srv->certs, srv->opt.tls_cert_count,
                          srv->err, sizeof srv->err);
    if (r)
      return r;
  }
  if (srv->opt.xclient_networks) {
    size_t bad = 0;
    r = tern__cidr_parse(&srv->xclient_nets, srv->opt.xclient_networks, &bad);
    if (r == TERN_ENOMEM) {
      set_err(srv, "out of memory", NULL);
      return r;
    }
    if (r) {
      set_err(srv, "xclient_networks: bad network at",
              srv->opt.xclient_networks + bad);
      return TERN_EINVAL;
    }
  }
  /* Check the session template once, so listen/accept cannot fail on it. */
  struct tern_server_session *probe;
  r = tern_server_session_new(&probe, &srv->session, NULL, NULL);
  if (r) {
    set_err(srv, "invalid session configuration", NULL);
    return r;
  }
  tern_server_session_free(probe);
  return 0;
}

int tern_server_new(struct tern_server **out, uv_loop_t *loop,
                    const struct tern_server_options *opts) {
  struct tern_server *srv;
  if (out)
    *out = NULL;
  if (!out || !loop || !opts)
    return TERN_EINVAL;
  srv = calloc(1, sizeof *srv);
  if (!srv)
    return TERN_ENOMEM;
  srv->loop = loop;
  srv->id_base = (unsigned long)time(NULL);
  if (uv_mutex_init(&srv->ip_lock) != 0) {
    free(srv);
    return TERN_ENOMEM;
  }
  if (uv_mutex_init(&srv->live_lock) != 0) {
    uv_mutex_destroy(&srv->ip_lock);
    free(srv);
    return TERN_ENOMEM;
  }
  int r = server_setup(srv, opts);
  if (r) {
    /* the size was checked (copy_options), so these fields exist */
    if (opts->size >= sizeof *opts && opts->error && opts->error_size)
      snprintf(opts->error, opts->error_size, "%s",
               srv->err[0] ? srv->err : tern_strerror(r));
    tern_server_free(srv);
    return r;
  }
  *out = srv;
  return 0;
}

void tern_server_free(struct tern_server *srv) {
  if (!srv)
    return;
  for (size_t i = 0; i < srv->nlisteners; i++) {
    struct tern__listener *l = &srv->listeners[i];
    if (!srv->started && l->fd >= 0)
      close(l->fd);
    if (l->is_unix && l->path && !l->adopted)
      unlink(l->path);
    free(l->url);
    free(l->path);
  }
  free(srv->workers);
  for (int i = 0; i < TERN__IP_BUCKETS; i++)
    while (srv->ip[i]) {
      struct tern__ipcount *e = srv->ip[i];
      srv->ip[i] = e->next;
      free(e);
    }
  uv_mutex_destroy(&srv->ip_lock);
  uv_mutex_destroy(&srv->live_lock);
  for (size_t i = 0; i < srv->nretired; i++)
    free(srv->retired[i]);
  free(srv->retired);
  tern__tls_ctx_free(srv->tls);
  tern__cidr_free(srv->xclient_nets);
  certs_free(srv->certs, srv->opt.tls_cert_count);
  free((char *)srv->session.hostname);
  free((char *)srv->session.banner);
  free((char *)srv->opt.auth_mechanisms);
  free((char *)srv->opt.xclient_networks);
  free((void *)srv->opt.auth);
  free(srv);
}

const char *tern_server_last_error(const struct tern_server *srv) {
  return srv ? srv->err : "no server";
}

int tern_server_reload_tls(struct tern_server *srv) {
  if (!srv || !srv->tls)
    return TERN_EINVAL;
  return tern__tls_ctx_reload(srv->tls, srv->err, sizeof srv->err);
}

void tern__server_template(struct tern_server *srv,
                           struct tern_server_config *out) {
  uv_mutex_lock(&srv->live_lock);
  *out = srv->session;
  uv_mutex_unlock(&srv->live_lock);
}

/* Keep a replaced string until tern_server_free() (room reserved). */
static void retire(struct tern_server *srv, const char *p) {
  if (p)
    srv->retired[srv->nretired++] = (char *)p;
}

/* Everything is checked and allocated first; then the changes are made,
 * none of which can fail, so a failure leaves the server as it was. */
/* tern_server_update()'s checks: the options copied into `n` and `sc`,
 * the same session check as at creation (so accept cannot fail on it)
 * and no change in whether the server has certificates. */
static int update_check(struct tern_server *srv,
                        const struct tern_server_options *o,
                        struct tern_server_options *n,
                        struct tern_server_config *sc) {
  tern_server_options_init(n);
  tern_server_config_init(sc);
  if (tern__copy_sized(n, sizeof *n, o) != 0 ||
      (n->session && tern__copy_sized(sc, sizeof *sc, n->session) != 0)) {
    set_err(srv, "options from a newer header with unknown fields set", NULL);
    return TERN_EINVAL;
  }
  if ((n->tls_cert_count > 0) != (srv->tls != NULL)) {
    set_err(srv, srv->tls ? "certificates cannot be removed from a running "
                            "server"
                          : "certificates cannot be added to a server "
                            "created without them",
            NULL);
    return TERN_ESTATE;
  }
  struct tern_server_session *probe;
  if (!sc->hostname)
    sc->hostname = "localhost";
  sc->auth_mechanisms = NULL;
  int r = tern_server_session_new(&probe, sc, NULL, NULL);
  if (r != 0) {
    set_err(srv, "invalid session configuration", NULL);
    return r;
  }
  tern_server_session_free(probe);
  return 0;
}

/* The limits and timeouts every worker reads live (relaxed atomics). */
static void update_limits(struct tern_server *srv,
                          struct tern_server_options *n) {
  /* 0 means the default here as in tern_server_new() */
  if (!n->proxy_timeout_ms)
    n->proxy_timeout_ms = 10000;
  if (!n->tls_handshake_timeout_ms)
    n->tls_handshake_timeout_ms = 30000;
  if (!n->write_timeout_ms)
    n->write_timeout_ms = 60000;
  struct tern_server_options *live = &srv->opt;
  __atomic_store_n(&live->max_connections, n->max_connections,
                   __ATOMIC_RELAXED);
  __atomic_store_n(&live->max_per_ip, n->max_per_ip, __ATOMIC_RELAXED);
  __atomic_store_n(&live->greeting_delay_ms, n->greeting_delay_ms,
                   __ATOMIC_RELAXED);
  __atomic_store_n(&live->auth_fail_delay_ms, n->auth_fail_delay_ms,
                   __ATOMIC_RELAXED);
  __atomic_store_n(&live->shutdown_timeout_ms, n->shutdown_timeout_ms,
                   __ATOMIC_RELAXED);
  __atomic_store_n(&live->proxy_timeout_ms, n->proxy_timeout_ms,
                   __ATOMIC_RELAXED);
  __atomic_store_n(&live->tls_handshake_timeout_ms,
                   n->tls_handshake_timeout_ms, __ATOMIC_RELAXED);
  __atomic_store_n(&live->write_timeout_ms, n->write_timeout_ms,
                   __ATOMIC_RELAXED);
}

int tern_server_update(struct tern_server *srv,
                       const struct tern_server_options *o) {
  struct tern_server_options n;
  struct tern_server_config sc;
  struct tern__tls_ctx *fresh = NULL;
  struct tern_tls_cert *certs = NULL;
  int r;

  if (!srv || !o)
    return TERN_EINVAL;
  if ((r = update_check(srv, o, &n, &sc)) != 0)
    return r;
  if (n.tls_cert_count) {
    r = tern__tls_ctx_new(&fresh, n.tls_certs, n.tls_cert_count, srv->err,
                          sizeof srv->err);
    if (r)
      return r;
  }
  char *host = dup_str(sc.hostname);
  char *banner = dup_str(sc.banner);
  if (n.tls_cert_count)
    certs = certs_dup(n.tls_certs, n.tls_cert_count);
  char **room = realloc(srv->retired, (srv->nretired + 2) * sizeof *room);
  if (room)
    srv->retired = room;
  if (!host || (sc.banner && !banner) ||
      (n.tls_cert_count && !certs) || !room) {
    free(host);
    free(banner);
    tern__tls_ctx_free(fresh);
    certs_free(certs, n.tls_cert_count);
    set_err(srv, "out of memory", NULL);
    return TERN_ENOMEM;
  }
  /* room for two retired strings is reserved: retire() cannot fail now */
  sc.hostname = host;
  sc.banner = banner;
  uv_mutex_lock(&srv->live_lock);
  const char *old_host = srv->session.hostname;
  const char *old_banner = srv->session.banner;
  srv->session = sc;
  uv_mutex_unlock(&srv->live_lock);
  retire(srv, old_host);
  retire(srv, old_banner);
  update_limits(srv, &n);
  if (fresh) {
    tern__tls_ctx_take(srv->tls, fresh);
    certs_free(srv->certs, srv->opt.tls_cert_count);
    srv->certs = certs;
    srv->opt.tls_certs = certs;
    srv->opt.tls_cert_count = n.tls_cert_count;
  }
  return 0;
}

int tern_server_listener_port(const struct tern_server *srv, size_t i) {
  if (!srv || i >= srv->nlisteners)
    return TERN_EINVAL;
  return srv->listeners[i].port;
}

/* ---- sockets ------------------------------------------------------------------ */

/* A listening TCP socket on addr. No SO_REUSEPORT: with it, any process
 * of the same user could bind the port too and take part of the
 * traffic; the workers share this one socket instead. */
static int tcp_socket(struct tern_server *srv, const struct sockaddr *addr,
                      const char *url, int *fd_out) {
  int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK,
                  0);
  int one = 1;
  if (fd < 0) {
    set_err(srv, url, strerror(errno));
    return TERN_EIO;
  }
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (addr->sa_family == AF_INET6)
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  socklen_t len = addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                              : sizeof(struct sockaddr_in);
  if (bind(fd, addr, len) != 0 || listen(fd, 511) != 0) {
    int e = errno;
    close(fd);
    set_err(srv, url, strerror(e));
    return e == EADDRINUSE ? TERN_EADDRINUSE : TERN_EIO;
  }
  *fd_out = fd;
  return 0;
}

static int unix_socket(struct tern_server *srv, const char *path,
                       const char *url, const struct tern_listener_options *lo,
                       int *fd_out) {
  struct sockaddr_un sun = {.sun_family = AF_UNIX};
  struct stat st;
  if (strlen(path) >= sizeof sun.sun_path) {
    set_err(srv, url, "path too long");
    return TERN_EINVAL;
  }
  memcpy(sun.sun_path, path, strlen(path) + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    set_err(srv, url, strerror(errno));
    return TERN_EIO;
  }
  /* A socket file left by a dead process is removed; a live one is not. */
  if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe >= 0 && connect(probe, (struct sockaddr *)&sun, sizeof sun) != 0 &&
        errno == ECONNREFUSED)
      unlink(path);
    if (probe >= 0)
      close(probe);
  }
  if (bind(fd, (struct sockaddr *)&sun, sizeof sun) != 0) {
    int e = errno;
    close(fd);
    set_err(srv, url, strerror(e));
    return e == EADDRINUSE ? TERN_EADDRINUSE : TERN_EIO;
  }
  /* Owner and mode before listen(): nobody connects with other rights. */
  const char *what = NULL;
  if ((lo->socket_uid >= 0 || lo->socket_gid >= 0) &&
      chown(path, lo->socket_uid >= 0 ? (uid_t)lo->socket_uid : (uid_t)-1,
            lo->socket_gid >= 0 ? (gid_t)lo->socket_gid : (gid_t)-1) != 0)
    what = "cannot set the socket's owner";
  else if (lo->socket_mode && chmod(path, (mode_t)lo->socket_mode) != 0)
    what = "cannot set the socket's mode";
  if (what || listen(fd, 511) != 0) {
    char m[256];
    int e = errno;
    snprintf(m, sizeof m, "%s%s%s", what ? what : "", what ? ": " : "",
             strerror(e));
    close(fd);
    unlink(path);
    set_err(srv, url, m);
    return TERN_EIO;
  }
  *fd_out = fd;
  return 0;
}

static int resolve_host(const struct tern__url *u,
                        struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof *ss);
  const char *h = u->host;
  if (!strcmp(h, "*"))
    h = "0.0.0.0";
  else if (!strcmp(h, "localhost"))
    h = "127.0.0.1";
  if (uv_ip4_addr(h, u->port, (struct sockaddr_in *)ss) == 0)
    return 0;
  if (uv_ip6_addr(h, u->port, (struct sockaddr_in6 *)ss) == 0)
    return 0;
  return TERN_EINVAL;
}

static struct tern__listener *add_listener(struct tern_server *srv,
                                           const char *url,
                                           const struct tern__url *u,
                                           const struct tern_listener_options *lo) {
  if (srv->nlisteners == TERN__MAX_LISTENERS)
    return NULL;
  struct tern__listener *l = &srv->listeners[srv->nlisteners];
  memset(l, 0, sizeof *l);
  l->fd = -1;
  l->url = strdup(url);
  if (!l->url)
    return NULL;
  tern_listener_options_init(&l->lo);
  if (lo && tern__copy_sized(&l->lo, sizeof l->lo, lo) != 0) {
    free(l->url);
    l->url = NULL;
    set_err(srv, url, "listener options with unknown fields set");
    return NULL;
  }
  l->is_unix = u->is_unix;
  l->implicit_tls = u->scheme == TERN__SMTPS;
  l->lmtp = u->scheme == TERN__LMTP;
  if (l->implicit_tls && !srv->tls) {
    free(l->url);
    set_err(srv, url, "smtps:// needs TLS certificates");
    return NULL;
  }
  return l;
}

int tern_server_listen(struct tern_server *srv, const char *url,
                       const struct tern_listener_options *lo) {
  struct tern__url u;
  if (!srv || !url || srv->started)
    return TERN_EINVAL;
  if (tern__url_parse(url, &u) != 0 || u.scheme == TERN__SMTP_STARTTLS) {
    set_err(srv, url, "not a listener URL");
    return TERN_EINVAL;
  }
  srv->err[0] = '\0';
  struct tern__listener *l = add_listener(srv, url, &u, lo);
  if (!l)
    return srv->err[0] ? TERN_EINVAL : TERN_ENOMEM;
  int r;
  if (u.is_unix) {
    l->path = strdup(u.path);
    r = l->path ? unix_socket(srv, u.path, url, &l->lo, &l->fd) : TERN_ENOMEM;
  } else {
    if (resolve_host(&u, &l->addr) != 0) {
      set_err(srv, url, "host must be an IP address, [IPv6], * or localhost");
      r = TERN_EINVAL;
    } else {
      r = tcp_socket(srv, (struct sockaddr *)&l->addr, url, &l->fd);
    }
    if (!r) { /* port 0: learn the real one for the other workers */
      socklen_t len = sizeof l->addr;
      getsockname(l->fd, (struct sockaddr *)&l->addr, &len);
      l->port = ntohs(l->addr.ss_family == AF_INET6
                          ? ((struct sockaddr_in6 *)&l->addr)->sin6_port
                          : ((struct sockaddr_in *)&l->addr)->sin_port);
    }
  }
  if (r) {
    free(l->url);
    free(l->path);
    return r;
  }
  srv->nlisteners++;
  return 0;
}

int tern_server_listen_fd(struct tern_server *srv, int fd, const char *url,
                          const struct tern_listener_options *lo) {
  struct tern__url u;
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (!srv || fd < 0 || !url || srv->started)
    return TERN_EINVAL;
  int listening = 0;
  socklen_t ll = sizeof listening;
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) {
    set_err(srv, url, strerror(errno));
    return TERN_EINVAL;
  }
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &ll) != 0 ||
      !listening) {
    set_err(srv, url, "the handed-over socket is not a listening socket");
    return TERN_EINVAL;
  }
  if (tern__url_parse(url, &u) != 0)
    u.scheme = TERN__SMTP;
  u.is_unix = ss.ss_family == AF_UNIX;
  srv->err[0] = '\0';
  struct tern__listener *l = add_listener(srv, url, &u, lo);
  if (!l)
    return srv->err[0] ? TERN_EINVAL : TERN_ENOMEM;
  l->fd = fd;
  l->adopted = true;
  /* An adopted socket is not replicated: it stays on worker 0. */
  l->is_unix = true;
  l->addr = ss;
  if (ss.ss_family != AF_UNIX) {
    l->port = ntohs(ss.ss_family == AF_INET6
                        ? ((struct sockaddr_in6 *)&ss)->sin6_port
                        : ((struct sockaddr_in *)&ss)->sin_port);
    l->is_unix = false;
    l->adopted = true;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  srv->nlisteners++;
  return 0;
}

int tern_listener_matches_fd(const char *url, int fd) {
  struct tern__url u;
  struct sockaddr_storage ss, want;
  socklen_t len = sizeof ss;
  if (!url || fd < 0 || tern__url_parse(url, &u) != 0 ||
      u.scheme == TERN__SMTP_STARTTLS ||
      getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
    return TERN_EINVAL;
  if (u.is_unix) {
    const struct sockaddr_un *a = (const struct sockaddr_un *)&ss;
    return ss.ss_family == AF_UNIX &&
           strncmp(a->sun_path, u.path, sizeof a->sun_path) == 0;
  }
  if (ss.ss_family != AF_INET && ss.ss_family != AF_INET6)
    return 0;
  bool any = !strcmp(u.host, "*");
  if (!any && resolve_host(&u, &want) != 0)
    return TERN_EINVAL;
  if (ss.ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
    const struct sockaddr_in *b = (const struct sockaddr_in *)&want;
    if (ntohs(a->sin_port) != u.port)
      return 0;
    if (any)
      return a->sin_addr.s_addr == htonl(INADDR_ANY);
    return want.ss_family == AF_INET &&
           a->sin_addr.s_addr == b->sin_addr.s_addr;
  }
  const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
  const struct sockaddr_in6 *b = (const struct sockaddr_in6 *)&want;
  if (ntohs(a->sin6_port) != u.port)
    return 0;
  if (any) /* systemd's ListenStream=25 is [::]:25 */
    return IN6_IS_ADDR_UNSPECIFIED(&a->sin6_addr);
  return want.ss_family == AF_INET6 &&
         !memcmp(&a->sin6_addr, &b->sin6_addr, sizeof a->sin6_addr);
}

/* ---- workers ------------------------------------------------------------------- */

static void on_connection(uv_stream_t *st, int status) {
  struct tern__lhandle *lh = st->data;
  if (status == 0 && !lh->w->draining)
    tern__conn_accept(lh);
}

static void on_handle_closed(uv_handle_t *h) {
  struct tern__worker *w = h->data;
  if (--w->open_handles == 0 && w->index == 0) {
    /* worker 0 is done; the others report through done_async */
    uv_async_send(&w->srv->done_async);
  }
}

static void close_handle(struct tern__worker *w, uv_handle_t *h) {
  h->data = w;
  uv_close(h, on_handle_closed);
}

/* Every session of this worker is gone: close its handles. */
void tern__worker_maybe_done(struct tern__worker *w) {
  if (!w->draining || w->nconns || w->done)
    return;
  w->done = true;
  close_handle(w, (uv_handle_t *)&w->wake);
  close_handle(w, (uv_handle_t *)&w->deadline);
}

static void on_deadline(uv_timer_t *t) {
  struct tern__worker *w = t->data;
  for (struct tern__conn *c = w->conns, *n; c; c = n) {
    n = tern__conn_next(c);
    tern__conn_drain(c, true);
  }
}

static void worker_drain(struct tern__worker *w) {
  if (w->draining)
    return;
  w->draining = true;
  for (size_t i = 0; i < w->srv->nlisteners; i++)
    if (w->lh[i].open) {
      w->lh[i].open = false;
      close_handle(w, &w->lh[i].h.handle);
    }
  w->deadline.data = w;
  uv_timer_start(&w->deadline, on_deadline,
                 TERN__LIVE(w->srv->opt.shutdown_timeout_ms), 0);
  for (struct tern__conn *c = w->conns, *n; c; c = n) {
    n = tern__conn_next(c);
    tern__conn_drain(c, false);
  }
  tern__worker_maybe_done(w);
}

static void on_wake(uv_async_t *a) { worker_drain(a->data); }

/* Open this worker's listening handles on its own sockets. */
static int worker_listen(struct tern__worker *w, int *fds) {
  struct tern_server *srv = w->srv;
  for (size_t i = 0; i < srv->nlisteners; i++) {
    struct tern__listener *l = &srv->listeners[i];
    struct tern__lhandle *lh = &w->lh[i];
    int r;
    if (fds[i] < 0)
      continue;
    lh->w = w;
    lh->l = l;
    if (l->is_unix)
      r = uv_pipe_init(w->loop, &lh->h.pipe, 0) ||
          uv_pipe_open(&lh->h.pipe, fds[i]);
    else
      r = uv_tcp_init(w->loop, &lh->h.tcp) ||
          uv_tcp_open(&lh->h.tcp, fds[i]);
    lh->h.handle.data = lh;
    if (r || uv_listen(&lh->h.stream, 511, on_connection) != 0) {
      set_err(srv, l->url, "cannot listen");
      return TERN_EIO;
    }
    lh->open = true;
    w->open_handles++;
  }
  return 0;
}

struct worker_start {
  struct tern__worker *w;
  int *fds;
};

/* The handles other threads may poke (wake) exist before the thread runs. */
static void worker_handles(struct tern__worker *w) {
  uv_async_init(w->loop, &w->wake, on_wake);
  w->wake.data = w;
  uv_timer_init(w->loop, &w->deadline);
  w->deadline.data = w;
  w->open_handles += 2;
}

/* On the worker's own thread: its SASL context and listening handles. */
static int worker_init(struct tern__worker *w, int *fds) {
  struct tern_server *srv = w->srv;
  if (srv->opt.auth &&
      tern__sasl_new(&w->sasl, srv->opt.auth, srv->opt.auth_ud,
                     srv->opt.auth_mechanisms) != 0)
    w->sasl = NULL;
  return worker_listen(w, fds);
}

static void worker_thread(void *arg) {
  struct worker_start *ws = arg;
  struct tern__worker *w = ws->w;
  worker_init(w, ws->fds);
  free(ws->fds);
  free(ws);
  uv_run(w->loop, UV_RUN_DEFAULT);
  uv_loop_close(w->loop);
  tern__sasl_free(w->sasl);
  w->sasl = NULL;
  atomic_fetch_add(&w->srv->workers_done, 1);
  uv_async_send(&w->srv->done_async);
}

static void on_done_async_closed(uv_handle_t *h) {
  struct tern_server *srv = h->data;
  if (srv->shutdown_cb)
    srv->shutdown_cb(srv, srv->shutdown_arg);
}

/* A worker finished: when all have, join the threads and report. */
static void on_done(uv_async_t *a) {
  struct tern_server *srv = a->data;
  struct tern__worker *w0 = &srv->workers[0];
  if (w0->open_handles ||
      atomic_load(&srv->workers_done) + 1 < srv->nworkers || !srv->done_async_open)
    return;
  for (unsigned i = 1; i < srv->nworkers; i++)
    if (srv->workers[i].thread_started) {
      uv_thread_join(&srv->workers[i].thread);
      srv->workers[i].thread_started = false;
    }
  tern__sasl_free(w0->sasl);
  w0->sasl = NULL;
  srv->done_async_open = false;
  uv_close((uv_handle_t *)&srv->done_async, on_done_async_closed);
}

int tern_server_start(struct tern_server *srv) {
  if (!srv || srv->started || !srv->nlisteners)
    return TERN_EINVAL;
  unsigned n = srv->opt.workers ? srv->opt.workers : 1;
  srv->workers = calloc(n, sizeof *srv->workers);
  if (!srv->workers)
    return TERN_ENOMEM;
  srv->nworkers = n;
  srv->started = true;
  uv_async_init(srv->loop, &srv->done_async, on_done);
  srv->done_async.data = srv;
  srv->done_async_open = true;

  for (unsigned i = 0; i < n; i++) {
    struct tern__worker *w = &srv->workers[i];
    int *fds = calloc(TERN__MAX_LISTENERS, sizeof *fds);
    if (!fds)
      return TERN_ENOMEM;
    w->srv = srv;
    w->index = i;
    for (size_t k = 0; k < srv->nlisteners; k++) {
      struct tern__listener *l = &srv->listeners[k];
      fds[k] = -1;
      if (i == 0)
        fds[k] = l->fd;
      else if (!l->is_unix && !l->adopted)
        fds[k] = fcntl(l->fd, F_DUPFD_CLOEXEC, 3); /* the same socket; -1:
                                        this worker just does not accept */
    }
    if (i == 0) {
      w->loop = srv->loop;
      worker_handles(w);
      int r = worker_init(w, fds);
      free(fds);
      if (r)
        return r;
      continue;
    }
    struct worker_start *ws = malloc(sizeof *ws);
    if (!ws || uv_loop_init(&w->own_loop) != 0) {
      free(ws);
      free(fds);
      return TERN_ENOMEM;
    }
    w->loop = &w->own_loop;
    worker_handles(w);
    ws->w = w;
    ws->fds = fds;
    if (uv_thread_create(&w->thread, worker_thread, ws) != 0) {
      free(ws);
      free(fds);
      return TERN_EIO;
    }
    w->thread_started = true;
  }
  return 0;
}

void tern_server_shutdown(struct tern_server *srv,
                          void (*cb)(struct tern_server *, void *),
                          void *arg) {
  if (!srv || srv->shutting_down)
    return;
  srv->shutting_down = true;
  srv->shutdown_cb = cb;
  srv->shutdown_arg = arg;
  if (!srv->started) {
    if (cb)
      cb(srv, arg);
    return;
  }
  for (unsigned i = 1; i < srv->nworkers; i++)
    uv_async_send(&srv->workers[i].wake);
  worker_drain(&srv->workers[0]);
}
