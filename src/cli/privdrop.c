/*
 * tern serve: dropping privileges after binding, and the sockets systemd
 * hands over (socket activation).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "serve.h"

/* Bind first, then drop to user/group, checking each step (OpenSMTPD's
 * order: setgroups, setresgid, setresuid), and that root cannot return. */
int drop_privileges(const struct cfg *c, char *err, size_t cap) {
  if (!c->user)
    return 0;
  struct passwd *pw = getpwnam(c->user);
  if (!pw) {
    snprintf(err, cap, "user '%s' does not exist", c->user);
    return -1;
  }
  gid_t gid = pw->pw_gid;
  if (c->group) {
    struct group *gr = getgrnam(c->group);
    if (!gr) {
      snprintf(err, cap, "group '%s' does not exist", c->group);
      return -1;
    }
    gid = gr->gr_gid;
  }
  /* Started as that user already (systemd User=, packaging/systemd):
   * nothing to drop, and setgroups() would fail without privileges. */
  if (getuid() == pw->pw_uid && geteuid() == pw->pw_uid &&
      getgid() == gid && getegid() == gid && pw->pw_uid != 0)
    return 0;
  if (setgroups(1, &gid) != 0 || setresgid(gid, gid, gid) != 0 ||
      setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid) != 0) {
    snprintf(err, cap, "cannot drop privileges to %s: %s", c->user,
             strerror(errno));
    return -1;
  }
  if (pw->pw_uid != 0 && (setuid(0) == 0 || geteuid() == 0)) {
    snprintf(err, cap, "privileges could be regained after dropping them");
    return -1;
  }
  return 0;
}

/* SIGHUP re-reads the configuration file, the users file and the
 * certificates as the user the daemon now is (issue 8, item 21): no
 * descriptor is kept open across the drop, because a kept descriptor
 * would not see a file replaced by a new one (certbot, tern passwd >
 * new && mv). Say at start-up which of them that user cannot read, so
 * the operator learns it now rather than from a failed reload. access()
 * checks with the real uid, which is the dropped one. */
void check_reloadable(const char *path, const struct cfg *c) {
  const char *files[2 + 2 * CFG_MAX_CERTS];
  size_t n = 0;
  files[n++] = path;
  files[n++] = c->users_file;
  for (size_t i = 0; i < c->ncerts; i++) {
    files[n++] = c->certs[i].cert_file;
    files[n++] = c->certs[i].key_file;
  }
  for (size_t i = 0; i < n; i++)
    if (files[i] && access(files[i], R_OK) != 0)
      log_kv("event", "warning", "what", "reload-unreadable", "file",
             files[i], "user", c->user, "error", strerror(errno), "effect",
             "SIGHUP will fail until this user can read the file", NULL);
}

/* systemd socket activation: fds 3.. when LISTEN_PID is us, and their
 * names (LISTEN_FDNAMES, colon-separated; FileDescriptorName=). Returns
 * the number of fds (0 when not activated), -1 when there are more than
 * listeners can take. names[k] point into *names_buf (free it). */
static int listen_fds(char **names_buf, const char *names[]) {
  const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
  const char *fdnames = getenv("LISTEN_FDNAMES");
  *names_buf = NULL;
  if (!pid || !fds || strtol(pid, NULL, 10) != getpid())
    return 0;
  long n = strtol(fds, NULL, 10);
  if (n > CFG_MAX_LISTENERS)
    return -1;
  for (long k = 0; k < n; k++)
    names[k] = NULL;
  if (fdnames && (*names_buf = strdup(fdnames)) != NULL) {
    char *p = *names_buf;
    for (long k = 0; k < n && p; k++) {
      names[k] = p;
      if ((p = strchr(p, ':')) != NULL)
        *p++ = '\0';
    }
  }
  unsetenv("LISTEN_PID");
  unsetenv("LISTEN_FDS");
  unsetenv("LISTEN_FDNAMES");
  return n > 0 ? (int)n : 0;
}

/* "127.0.0.1:25", "[::]:25" or the unix path of socket fd. */
static const char *sock_text(int fd, char *buf, size_t cap) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  char a[INET6_ADDRSTRLEN];
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) {
    snprintf(buf, cap, "not a socket");
  } else if (ss.ss_family == AF_INET) {
    const struct sockaddr_in *x = (const struct sockaddr_in *)&ss;
    inet_ntop(AF_INET, &x->sin_addr, a, sizeof a);
    snprintf(buf, cap, "%s:%u", a, ntohs(x->sin_port));
  } else if (ss.ss_family == AF_INET6) {
    const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)&ss;
    inet_ntop(AF_INET6, &x->sin6_addr, a, sizeof a);
    snprintf(buf, cap, "[%s]:%u", a, ntohs(x->sin6_port));
  } else if (ss.ss_family == AF_UNIX) {
    snprintf(buf, cap, "%.100s", ((const struct sockaddr_un *)&ss)->sun_path);
  } else {
    snprintf(buf, cap, "an unknown socket family");
  }
  return buf;
}

/*
 * Socket activation: give each handed-over socket to its listener, never
 * by position. A socket whose name (FileDescriptorName=) is a listener's
 * goes to that listener; any other to the listener whose url it listens
 * on (tern_listener_matches_fd()). Either way its address must be the
 * listener's: a socket that matches none, or two for one listener, stops
 * the start with a message naming both. fd_of[i] is the listener's fd or
 * -1 (it binds its own). Returns 0 or -1 with err set.
 */
static int match_fds(const struct cfg *c, int nfds, const char *names[],
                     int fd_of[], char *err, size_t cap) {
  char at[160];
  for (size_t i = 0; i < c->nlisteners; i++)
    fd_of[i] = -1;
  for (int k = 0; k < nfds; k++) {
    int fd = 3 + k;
    size_t li = c->nlisteners;
    for (size_t i = 0; names[k] && i < c->nlisteners; i++)
      if (!strcmp(c->listeners[i].name, names[k]))
        li = i;
    if (li < c->nlisteners) {
      if (tern_listener_matches_fd(c->listeners[li].url, fd) != 1) {
        snprintf(err, cap,
                 "socket activation: the socket named '%s' (fd %d) listens "
                 "on %s, but [listener %s] has url = %s",
                 names[k], fd, sock_text(fd, at, sizeof at),
                 c->listeners[li].name, c->listeners[li].url);
        return -1;
      }
    } else {
      for (size_t i = 0; i < c->nlisteners && li == c->nlisteners; i++)
        if (fd_of[i] < 0 &&
            tern_listener_matches_fd(c->listeners[i].url, fd) == 1)
          li = i;
      if (li == c->nlisteners) {
        snprintf(err, cap,
                 "socket activation: the socket %s%s%s(fd %d) on %s matches "
                 "no listener: give it FileDescriptorName= of a [listener "
                 "NAME], or make a listener's url its address",
                 names[k] ? "'" : "", names[k] ? names[k] : "",
                 names[k] ? "' " : "", fd, sock_text(fd, at, sizeof at));
        return -1;
      }
    }
    if (fd_of[li] >= 0) {
      snprintf(err, cap,
               "socket activation: [listener %s] is given two sockets "
               "(fd %d and fd %d)",
               c->listeners[li].name, fd_of[li], fd);
      return -1;
    }
    fd_of[li] = fd;
  }
  return 0;
}

int activation_fds(const struct cfg *c, int fd_of[], char *err, size_t cap) {
  const char *names[CFG_MAX_LISTENERS];
  char *names_buf;
  int nfds = listen_fds(&names_buf, names);
  int r = 0;
  if (nfds < 0) {
    snprintf(err, cap, "socket activation: more than %d sockets",
             CFG_MAX_LISTENERS);
    r = -1;
  } else {
    r = match_fds(c, nfds, names, fd_of, err, cap);
  }
  free(names_buf);
  return r;
}
