#!/usr/bin/env python3
"""Connection manners of `tern serve` towards MX hosts (issue 11, Must
show), both in one run, in the test world:

* 1,000 messages to one domain use at most `[queue] concurrency` (3)
  connections: counted at the MX host (connections made in all, and at
  most open at once), and every message arrives exactly once;
* a dead domain does not delay mail to a live one: 30 messages to a
  domain whose MX accepts TCP connections but never greets (a tarpit:
  each attempt hangs until tern's own timeout) are queued first; the
  1,000 to the live domain are all delivered meanwhile, long before the
  dead domain's first attempt can even time out.
"""

import threading
import time

import world as w
from world import check

CONCURRENCY = 3
N = 1000
DEAD = 30
HANG = 60      # [outbound] timeout: how long a dead attempt hangs


def test_concurrency_and_dead_domain():
    W = w.World()
    live, dead = W.addr(), W.addr()
    W.zone("bulk.example", {"@": "MX 10 mx", "mx": "A " + live})
    W.zone("dead.example", {"@": "MX 10 mx", "mx": "A " + dead})
    W.start_dns()
    sink = W.sink(live, tls=W.cert("mx.bulk.example"))
    pit = W.tarpit(dead)
    s = W.serve({"server": {"shutdown_timeout": "2s"},
                 "routes": {"bulk.example": "mx", "dead.example": "mx"},
                 "queue": {"concurrency": str(CONCURRENCY),
                           "retry_min": "30s", "retry_max": "60s"},
                 "outbound": {"timeout": "%ds" % HANG}})
    frm = "sender@" + w.LOCAL_DOMAIN
    for i in range(DEAD):
        W.send(frm, ["d%d@dead.example" % i],
               w.message(frm, "d%d@dead.example" % i))
    # tern is trying the dead domain (its connections hang) before the
    # live domain's mail comes in
    w.wait_for(lambda: pit.open() >= 1, 15,
               "tern to connect to the dead domain's MX")
    t0 = time.monotonic()
    errors = []

    def inject(k):
        try:
            import smtplib
            with smtplib.SMTP(w.TERN_ADDR, 25, timeout=30) as c:
                for i in range(k, N, 4):
                    r = "b%d@bulk.example" % i
                    c.sendmail(frm, [r], w.message(frm, r))
        except Exception as e:        # reported below
            errors.append(repr(e))
    ts = [threading.Thread(target=inject, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    check(not errors, "injecting: %s" % errors)
    t_in = time.monotonic() - t0
    sink.wait(N, timeout=HANG - 10 - t_in)
    t_all = time.monotonic() - t0
    msgs = sink.snapshot()
    got = sorted(r for m in msgs for r in m.rcpts)
    check(len(got) == N and len(set(got)) == N,
          "%d deliveries, %d distinct recipients (want %d once each)"
          % (len(got), len(set(got)), N))
    print("1,000 messages: injected in %.1f s, all delivered after %.1f s; "
          "%d connections, at most %d at once; dead domain: %d connections "
          "hanging" % (t_in, t_all, sink.connections, sink.max_open,
                       pit.open()))
    check(sink.max_open <= CONCURRENCY,
          "%d connections open at once to one domain (concurrency %d)"
          % (sink.max_open, CONCURRENCY))
    check(sink.connections <= CONCURRENCY,
          "%d connections in all for %d messages to one domain "
          "(concurrency %d; kept connections should carry them)"
          % (sink.connections, N, CONCURRENCY))
    check(pit.open() >= 1, "the dead domain's connections ended before "
          "the live domain's mail was through (%d made)" % pit.connections)
    check(pit.connections <= CONCURRENCY, "%d connections to the dead "
          "domain's MX (concurrency %d)" % (pit.connections, CONCURRENCY))
    # The dead domain's attempts are still hanging (HANG s), none ended:
    check(not [d for d in w.deliveries(s) if "dead.example" in d["rcpt"]
               and d["status"] != "deferred"],
          "a dead-domain recipient was sent or bounced?")


if __name__ == "__main__":
    w.main([test_concurrency_and_dead_domain])
