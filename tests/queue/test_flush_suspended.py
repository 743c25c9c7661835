#!/usr/bin/env python3
"""`tern queue flush` (one ID, or all) while the destination is
suspended (review finding 3). A next hop that refuses connections
suspends its destination for retry_min (here 1 h); a flush made the
mail due but the suspension kept it until then, so the flush did
nothing. Now a flush ends the suspension of the destinations of what
it flushes (Postfix's `postqueue -f`):

1. next hop down: message A is tried once and deferred (the destination
   suspended); message B, accepted after, waits behind the suspension;
2. the next hop comes back; `tern queue flush A`: A arrives at once, and
   B follows (the flush's attempt got through: the destination is up);
3. the next hop goes away again; message C is deferred (suspended again);
   it comes back; `tern queue flush` (all): C arrives at once.

Every wait is bounded (15 s) and far below retry_min (1 h).
"""

import re
import smtplib

import qtest as h

QUEUED_RE = re.compile(rb"queued as ([0-9A-Z]{1,23})")


def submit(conf, tag):
    with smtplib.SMTP(h.HOST, conf.port, timeout=30) as c:
        c.ehlo("client.example")
        h.check(c.mail("sender@example.net")[0] == 250, "MAIL")
        h.check(c.rcpt("rcpt@example.org")[0] == 250, "RCPT")
        code, reply = c.data(b"Subject: " + tag.encode() +
                             b"\r\n\r\nflush me\r\n")
    h.check(code == 250, "DATA: %d %r" % (code, reply))
    return QUEUED_RE.search(reply).group(1).decode()


def wait_deferred(conf, qid):
    def deferred():
        for m in h.queue_json(conf):
            if m.get("id") == qid:
                rs = m.get("rcpts") or []
                return rs and rs[0].get("state") == "deferred"
        return False
    h.wait_for(deferred, 15, "%s deferred (the next hop is down)" % qid,
               interval=0.1)


def subjects(sink):
    out = []
    for _, _, data in sink.messages():
        m = re.search(rb"^Subject: (\S+)", data, re.M)
        out.append(m.group(1).decode() if m else "?")
    return sorted(out)


def test_flush_lifts_suspension():
    d = h.tmpdir("tern-queue-flush-susp-")
    sink = h.AioSink()  # not started: the next hop is down
    conf = h.queue_conf(d, sink.port, retry_min="1h", retry_max="2h")
    with h.Serve(["-c", conf.path], name="flush-susp") as srv:
        a = submit(conf, "A")
        wait_deferred(conf, a)
        b = submit(conf, "B")  # waits behind the suspended destination
        with sink:
            h.tern_queue(conf, "flush", a)
            h.wait_for(lambda: subjects(sink) == ["A", "B"], 15,
                       "A (flushed by ID) and B at the next hop; the "
                       "destination stayed suspended? got %r"
                       % subjects(sink), interval=0.05)
            h.wait_queue_empty(conf, 10)
        srv.wait_log("id=" + b)
        c = submit(conf, "C")
        wait_deferred(conf, c)
        with sink:
            h.tern_queue(conf, "flush")
            h.wait_for(lambda: subjects(sink) == ["A", "B", "C"], 15,
                       "C at the next hop after `tern queue flush`",
                       interval=0.05)
            h.wait_queue_empty(conf, 10)


if __name__ == "__main__":
    h.main([test_flush_lifts_suspension])
