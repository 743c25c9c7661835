#!/usr/bin/env python3
"""Graceful life (issue 10, Deliver 7): SIGTERM while messages are queued
and some are being delivered to a slow next hop (aiosmtpd answering each
end of data after 1 s): the daemon exits (status 0) within its
shutdown_timeout (5 s); the messages it had not delivered are still in
the spool (`tern queue list` reads it with the daemon stopped); after a
restart every message reaches the next hop exactly once (counted by
Message-ID) and the queue is empty. Deliveries that outlast the
shutdown_timeout are cut short and deferred: the exit is still in time
and each such message is delivered once after the restart.
"""

import random
import re
import signal
import smtplib
import time
from collections import Counter

import qtest as h

N = 60
QUEUED_RE = re.compile(rb"^2\.0\.0 Ok: queued as ([0-9A-Z]{1,23})$")


def test_graceful_restart():
    rng = random.Random(704)
    d = h.tmpdir("tern-queue-restart-")
    sink = h.AioSink(delay=1.0)
    conf = h.queue_conf(d, sink.port, shutdown="5s",
                        queue="concurrency = 5\n")
    mids = ["restart-%d@queue.e2e" % i for i in range(N)]
    with sink:
        srv = h.Serve(["-c", conf.path], name="restart-1")
        with srv:
            with smtplib.SMTP(h.HOST, conf.port, timeout=30) as c:
                c.ehlo("client.example")
                for mid in mids:
                    m = h.make_message(mid, 3000, rng)
                    c.mail("sender@example.net")
                    c.rcpt("rcpt@example.org")
                    code, r = c.data(m)
                    h.check(code == 250 and QUEUED_RE.match(r),
                            "%s: %d %r" % (mid, code, r))
            # some delivered, some in flight at the slow next hop
            h.wait_for(lambda: len(sink.messages()) >= 5 and sink.inflight,
                       30, "5 deliveries done and one in flight",
                       interval=0.01)
            done_before = len(sink.messages())
            inflight = sink.inflight
            t0 = time.monotonic()
            srv.signal(signal.SIGTERM)
            rc = srv.wait_exit(timeout=15)
            took = time.monotonic() - t0
            print("  SIGTERM with %d delivered, %d in flight: exit %d after "
                  "%.2f s" % (done_before, inflight, rc, took))
            h.check(rc == 0, "exit status %d after SIGTERM" % rc)
            h.check(took <= 5.0 + 1.0, "exited after %.2f s, "
                    "shutdown_timeout is 5 s" % took)
            h.check(not h.listening(conf.port), "still listening")
        left = h.queue_json(conf)  # the spool, read with the daemon down
        at_stop = len(sink.messages())
        print("  at exit: %d at the next hop, %d messages in the spool"
              % (at_stop, len(left)))
        h.check(left, "nothing left in the spool: the test proved nothing "
                "(too fast a next hop?)")
        h.check(at_stop + len(left) >= N, "%d delivered + %d queued < %d: "
                "messages lost" % (at_stop, len(left), N))
        with h.Serve(["-c", conf.path], name="restart-2"):
            h.wait_for(lambda: len(sink.messages()) >= N, 60,
                       "all %d messages at the next hop" % N, interval=0.05)
            h.wait_queue_empty(conf, 30)
            got = Counter(h.msgid_of(data) for _, _, data in sink.messages())
            dups = {k: v for k, v in got.items() if v > 1}
            missing = [m for m in mids if m not in got]
            print("  next hop: %d messages, %d distinct, %d duplicated, %d "
                  "missing" % (sum(got.values()), len(got), len(dups),
                               len(missing)))
            h.check(not missing, "never delivered: %r" % missing[:10])
            h.check(not dups, "delivered more than once: %r" % dups)
            h.check(set(got) == set(mids), "unknown messages: %r"
                    % (set(got) - set(mids)))
        # leaving the block: SIGTERM again, exit status 0 expected


def test_shutdown_timeout_defers():
    """Deliveries in flight that outlast shutdown_timeout (a next hop
    taking 6 s to answer, shutdown_timeout 2 s): the daemon exits (0)
    within the timeout all the same, the messages stay queued, and after
    a restart each reaches the next hop once."""
    rng = random.Random(705)
    d = h.tmpdir("tern-queue-restart2-")
    sink = h.AioSink(delay=6.0)
    conf = h.queue_conf(d, sink.port, shutdown="2s")
    mids = ["slow-%d@queue.e2e" % i for i in range(5)]
    with sink:
        with h.Serve(["-c", conf.path], name="slow-1") as srv:
            with smtplib.SMTP(h.HOST, conf.port, timeout=30) as c:
                c.ehlo("client.example")
                for mid in mids:
                    c.sendmail("sender@example.net", ["rcpt@example.org"],
                               h.make_message(mid, 2000, rng))
            h.wait_for(lambda: sink.inflight == len(mids), 10,
                       "the %d deliveries in flight" % len(mids))
            t0 = time.monotonic()
            srv.signal(signal.SIGTERM)
            rc = srv.wait_exit(timeout=15)
            took = time.monotonic() - t0
            print("  SIGTERM with %d in flight for 6 s: exit %d after %.2f s"
                  % (len(mids), rc, took))
            h.check(rc == 0, "exit status %d after SIGTERM" % rc)
            h.check(took <= 2.0 + 1.0, "exited after %.2f s, "
                    "shutdown_timeout is 2 s" % took)
        left = h.queue_json(conf)
        h.check(sorted(len(m["rcpts"]) for m in left) == [1] * len(mids),
                "expected the %d messages still queued: %r"
                % (len(mids), left))
        h.wait_for(lambda: sink.inflight == 0, 10, "the sink to finish")
        h.check(not sink.messages(), "the next hop kept a message whose "
                "client had gone")
        sink.delay = 0.0
        with h.Serve(["-c", conf.path], name="slow-2"):
            h.wait_queue_empty(conf, 30)
            got = Counter(h.msgid_of(data) for _, _, data in sink.messages())
            print("  after the restart: %r" % dict(got))
            h.check(sorted(got) == sorted(mids) and
                    set(got.values()) == {1},
                    "each message once: %r" % dict(got))


if __name__ == "__main__":
    h.main([test_graceful_restart, test_shutdown_timeout_defers])
