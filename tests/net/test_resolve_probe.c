/*
 * resolve_probe — drives one tern_resolver (tern/resolve.h) for
 * tests/net/test_resolve.py. Options make the resolver; then commands
 * come one per line on stdin, each answered by lines on stdout and a
 * final "END" line, so the test can change its DNS and HTTPS servers
 * between commands:
 *
 *   mx DOMAIN            the MX result, one "host" line per host
 *   tlsa HOST PORT       the TLSA result, one "tlsa" line per record
 *   sts DOMAIN           the MTA-STS policy (or none) and why
 *   sts2 DOMAIN          two asks at once: both answers
 *   stsall DOMAIN...     one ask per domain, all at once
 *   fetches              tern_resolver_mtasts_fetches()
 *   error                tern_resolver_last_error()
 *   cancel DOMAIN        an MX query cancelled at once: no callback
 *   cancel-sts DOMAIN    an MTA-STS query cancelled at once: no callback
 *   free-in-cb DOMAIN    two MX queries, an MTA-STS and a TLSA query;
 *                        the first callback frees the resolver: no other
 *                        answers (later commands say "resolver freed")
 *   free-in-sts DOMAIN   the same with two MTA-STS asks (one fetch)
 *   free-pending DOMAIN  an MX and an MTA-STS query, 200 ms, then free:
 *                        how long free and the loop's end took
 *   sleep MS             run the loop MS milliseconds
 *
 * Every line also gives ms=N, the time the command took.
 *
 * Options: --forward LIST --ta FILE --no-dnssec --timeout MS --no-ipv4
 * --no-ipv6 --sts-ca FILE --sts-port N --sts-timeout MS --no-sts
 * --sts-cache FILE --resolv-conf FILE --hosts FILE.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include <tern/resolve.h>

static uv_loop_t *loop;
static struct tern_resolver *res;
static int outstanding;
static int starting; /* inside a tern_resolve_*() call */
static uint64_t t0;

static const char *st_name(int s) {
  static const char *n[] = {"OK",     "NODATA",   "NXDOMAIN",
                            "NULLMX", "TEMPFAIL", "BOGUS"};
  return s >= 0 && s <= 5 ? n[s] : "?";
}

static unsigned long ms(void) { return (unsigned long)(uv_now(loop) - t0); }

static void on_mx(const struct tern_mx_result *r, void *ud) {
  size_t i, k;
  if (starting)
    printf("CALLBACK INSIDE START\n");
  printf("%smx status=%s secure=%d implicit=%d nhosts=%zu ms=%lu why=%s\n",
         ud ? (const char *)ud : "", st_name(r->status), r->secure, r->implicit,
         r->nhosts, ms(), r->why);
  for (i = 0; i < r->nhosts; i++) {
    const struct tern_mx_host *h = &r->hosts[i];
    printf("host %s pref=%u status=%s secure=%d addrs=", h->name, h->pref,
           st_name(h->status), h->secure);
    for (k = 0; k < h->naddrs; k++) {
      char a[INET6_ADDRSTRLEN];
      const struct sockaddr_storage *ss = &h->addrs[k];
      if (ss->ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, a,
                  sizeof a);
      else
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, a,
                  sizeof a);
      printf("%s%s", k ? "," : "", a);
    }
    printf("\n");
  }
  outstanding--;
}

static void on_tlsa(const struct tern_tlsa_result *r, void *ud) {
  size_t i, k;
  (void)ud;
  if (starting)
    printf("CALLBACK INSIDE START\n");
  printf("tlsa status=%s secure=%d n=%zu ms=%lu why=%s\n", st_name(r->status),
         r->secure, r->n, ms(), r->why);
  for (i = 0; i < r->n; i++) {
    printf("rec %u %u %u ", r->recs[i].usage, r->recs[i].selector,
           r->recs[i].mtype);
    for (k = 0; k < r->recs[i].len; k++)
      printf("%02x", r->recs[i].data[k]);
    printf("\n");
  }
  outstanding--;
}

static void on_sts(const struct tern_mtasts_policy *p, const char *why,
                   void *ud) {
  size_t i;
  if (starting)
    printf("CALLBACK INSIDE START\n");
  if (p == NULL) {
    printf("%ssts none ms=%lu why=%s\n", ud ? (const char *)ud : "", ms(), why);
  } else {
    printf("%ssts mode=%d max_age=%u id=%s ms=%lu why=%s mx=",
           ud ? (const char *)ud : "", (int)p->mode, p->max_age, p->id, ms(),
           why);
    for (i = 0; i < p->nmx; i++)
      printf("%s%s", i ? "," : "", p->mx[i]);
    printf("\n");
  }
  outstanding--;
}

static void on_never_mx(const struct tern_mx_result *r, void *ud) {
  (void)r, (void)ud;
  printf("CALLBACK AFTER CANCEL\n");
}

static void on_never_sts(const struct tern_mtasts_policy *p, const char *why,
                         void *ud) {
  (void)p, (void)why, (void)ud;
  printf("CALLBACK AFTER CANCEL\n");
}

/* free-in-cb: whichever answer comes first frees the resolver; no other
 * may come after. */
static void free_now(int status) {
  if (res == NULL) {
    printf("CALLBACK AFTER FREE\n");
    return;
  }
  printf("first status=%s: freeing the resolver\n", st_name(status));
  tern_resolver_free(res);
  res = NULL;
  outstanding = 0;
}

static void on_free_mx(const struct tern_mx_result *r, void *ud) {
  (void)ud;
  free_now(r->status);
}

static void on_free_sts(const struct tern_mtasts_policy *p, const char *why,
                        void *ud) {
  (void)p, (void)why, (void)ud;
  free_now(0);
}

static void on_free_tlsa(const struct tern_tlsa_result *r, void *ud) {
  (void)ud;
  free_now(r->status);
}

static void on_sleep(uv_timer_t *t) { uv_stop(t->loop); }

static void run_for(unsigned msec) {
  uv_timer_t t;
  uv_timer_init(loop, &t);
  uv_timer_start(&t, on_sleep, msec, 0);
  uv_run(loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT); /* the close; answers still due wait */
}

/* Run until the answers came (the resolver keeps the loop alive while
 * it has work), failing loudly if the loop ran dry first. */
static void wait_answers(void) {
  while (outstanding > 0) {
    if (uv_run(loop, UV_RUN_ONCE) == 0 && outstanding > 0) {
      printf("LOOP EMPTY WITH %d ANSWERS MISSING\n", outstanding);
      outstanding = 0;
    }
  }
}

/* Every start goes through here: a callback from inside it shows. */
#define START(call) (starting = 1, rc = (call), starting = 0, rc)

static void check(int rc, const char *what) {
  if (rc != 0) {
    printf("%s: error %d\n", what, rc);
    outstanding = 0;
  }
}

int main(int argc, char **argv) {
  struct tern_resolver_options o;
  char line[8192];
  int i, rc;

  tern_resolver_options_init(&o);
  for (i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--forward") && v) {
      o.forward = v;
      i++;
    } else if (!strcmp(a, "--ta") && v) {
      o.trust_anchor_file = v;
      i++;
    } else if (!strcmp(a, "--hosts") && v) {
      o.hosts_file = v;
      i++;
    } else if (!strcmp(a, "--resolv-conf") && v) {
      o.resolv_conf = v;
      i++;
    } else if (!strcmp(a, "--no-dnssec")) {
      o.dnssec = false;
    } else if (!strcmp(a, "--timeout") && v) {
      o.timeout_ms = (unsigned)strtoul(v, NULL, 10);
      i++;
    } else if (!strcmp(a, "--no-ipv4")) {
      o.ipv4 = false;
    } else if (!strcmp(a, "--no-ipv6")) {
      o.ipv6 = false;
    } else if (!strcmp(a, "--no-sts")) {
      o.mta_sts = false;
    } else if (!strcmp(a, "--sts-ca") && v) {
      o.mta_sts_ca_file = v;
      i++;
    } else if (!strcmp(a, "--sts-port") && v) {
      o.mta_sts_port = (unsigned)strtoul(v, NULL, 10);
      i++;
    } else if (!strcmp(a, "--sts-cache") && v) {
      o.mta_sts_cache_file = v;
      i++;
    } else if (!strcmp(a, "--sts-timeout") && v) {
      o.mta_sts_timeout_ms = (unsigned)strtoul(v, NULL, 10);
      i++;
    } else {
      fprintf(stderr, "resolve_probe: bad option %s\n", a);
      return 2;
    }
  }
  loop = uv_default_loop();
  rc = tern_resolver_new(&res, loop, &o);
  if (rc != 0) {
    printf("new: error %d: %s\nEND\n", rc, tern_resolver_last_error(NULL));
    return 1;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  printf("ready\n");
  while (fgets(line, sizeof line, stdin) != NULL) {
    char cmd[64] = "", arg[512] = "", arg2[64] = "";
    if (sscanf(line, "%63s %511s %63s", cmd, arg, arg2) < 1)
      continue;
    uv_update_time(loop);
    t0 = uv_now(loop);
    if (res == NULL) {
      printf("resolver freed\n");
    } else if (!strcmp(cmd, "mx")) {
      outstanding = 1;
      check(START(tern_resolve_mx(res, arg, on_mx, NULL, NULL)), "mx");
      wait_answers();
    } else if (!strcmp(cmd, "tlsa")) {
      outstanding = 1;
      check(START(tern_resolve_tlsa(res, arg, (unsigned)strtoul(arg2, NULL, 10),
                                    on_tlsa, NULL, NULL)),
            "tlsa");
      wait_answers();
    } else if (!strcmp(cmd, "sts")) {
      outstanding = 1;
      check(START(tern_resolve_mtasts(res, arg, on_sts, NULL, NULL)), "sts");
      wait_answers();
    } else if (!strcmp(cmd, "sts2")) {
      outstanding = 2;
      check(START(tern_resolve_mtasts(res, arg, on_sts, "1:", NULL)), "sts");
      check(START(tern_resolve_mtasts(res, arg, on_sts, "2:", NULL)), "sts");
      wait_answers();
    } else if (!strcmp(cmd, "stsall")) {
      /* every domain on the line at once (more than the pool slots) */
      static char tags[128][80];
      char *save = NULL, *tok;
      int n = 0;
      strtok_r(line, " \t\r\n", &save);
      while ((tok = strtok_r(NULL, " \t\r\n", &save)) != NULL && n < 128) {
        snprintf(tags[n], sizeof tags[n], "%s:", tok);
        outstanding++;
        check(START(tern_resolve_mtasts(res, tok, on_sts, tags[n], NULL)),
              "sts");
        n++;
      }
      wait_answers();
    } else if (!strcmp(cmd, "error")) {
      printf("error=%s\n", tern_resolver_last_error(res));
    } else if (!strcmp(cmd, "fetches")) {
      printf("fetches=%llu\n",
             (unsigned long long)tern_resolver_mtasts_fetches(res));
    } else if (!strcmp(cmd, "cancel")) {
      struct tern_dns_query *q = NULL;
      check(START(tern_resolve_mx(res, arg, on_never_mx, NULL, &q)), "mx");
      tern_dns_cancel(q);
      run_for(500);
      printf("cancelled\n");
    } else if (!strcmp(cmd, "cancel-sts")) {
      struct tern_dns_query *q = NULL;
      check(START(tern_resolve_mtasts(res, arg, on_never_sts, NULL, &q)),
            "sts");
      tern_dns_cancel(q);
      run_for(500);
      printf("cancelled\n");
    } else if (!strcmp(cmd, "free-in-cb")) {
      outstanding = 1;
      check(START(tern_resolve_mx(res, arg, on_free_mx, NULL, NULL)), "mx");
      check(START(tern_resolve_mx(res, arg, on_free_mx, NULL, NULL)), "mx");
      check(START(tern_resolve_mtasts(res, arg, on_free_sts, NULL, NULL)),
            "sts");
      check(START(tern_resolve_tlsa(res, arg, 25, on_free_tlsa, NULL, NULL)),
            "tlsa");
      wait_answers();
      /* everything the resolver had must close: the loop runs dry */
      uv_run(loop, UV_RUN_DEFAULT);
      printf("loop empty\n");
    } else if (!strcmp(cmd, "free-in-sts")) {
      outstanding = 1;
      check(START(tern_resolve_mtasts(res, arg, on_free_sts, NULL, NULL)),
            "sts");
      check(START(tern_resolve_mtasts(res, arg, on_free_sts, NULL, NULL)),
            "sts");
      wait_answers();
      uv_run(loop, UV_RUN_DEFAULT);
      printf("loop empty\n");
    } else if (!strcmp(cmd, "free-pending")) {
      /* queries still running (a silent server): free must not wait */
      uint64_t t1;
      check(START(tern_resolve_mx(res, arg, on_never_mx, NULL, NULL)), "mx");
      check(START(tern_resolve_mtasts(res, arg, on_never_sts, NULL, NULL)),
            "sts");
      run_for(200);
      t1 = uv_hrtime();
      tern_resolver_free(res);
      res = NULL;
      uv_run(loop, UV_RUN_DEFAULT);
      printf("freed free_ms=%llu\n",
             (unsigned long long)((uv_hrtime() - t1) / 1000000));
    } else if (!strcmp(cmd, "sleep")) {
      run_for((unsigned)strtoul(arg, NULL, 10));
    } else {
      printf("unknown command %s\n", cmd);
    }
    printf("END\n");
  }
  tern_resolver_free(res);
  uv_run(loop, UV_RUN_DEFAULT);
  rc = uv_loop_close(loop);
  if (rc != 0)
    printf("loop close: %s\n", uv_strerror(rc));
  return rc != 0;
}
