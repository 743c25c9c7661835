#!/usr/bin/env python3
"""Next hop down (issue 10, "Must show" 1): [delivery] target = smtp to a
port where nothing listens, [queue] retry_min = 1s, retry_max = 2s.

1. The client gets `250 2.0.0 Ok: queued as ID` at once (< 2 s), the
   next hop being down; the daemon's log lines about it carry id=ID.
2. `tern queue list --json` shows the recipient deferred, its last reply
   naming the failed connection; the text list shows the message too.
3. An aiosmtpd next hop starts on that port: the message arrives on the
   next retry, once, byte-exact (our Received field in front, then the
   message as sent), with the envelope as sent.
4. The queue is empty: no JSON lines, "Queue is empty".
"""

import random
import re
import smtplib
import time

import qtest as h

QUEUED_RE = re.compile(rb"^2\.0\.0 Ok: queued as ([0-9A-Z]{1,23})$")


def test_next_hop_down():
    rng = random.Random(701)
    d = h.tmpdir("tern-queue-down-")
    sink = h.AioSink()  # not started: nothing listens on sink.port yet
    conf = h.queue_conf(d, sink.port)
    msg = h.make_message("down-1@queue.e2e", 20000, rng,
                         frm="sender@example.net", to="rcpt@example.org")
    with h.Serve(["-c", conf.path], name="down") as srv:
        with smtplib.SMTP(h.HOST, conf.port, timeout=30) as c:
            c.ehlo("client.example")
            h.check(c.mail("sender@example.net")[0] == 250, "MAIL")
            h.check(c.rcpt("rcpt@example.org")[0] == 250, "RCPT")
            t0 = time.monotonic()
            code, reply = c.data(msg)
            took = time.monotonic() - t0
        print("  end of data: %d %r after %.3f s" % (code, reply, took))
        h.check(code == 250, "expected 250, got %d %r" % (code, reply))
        m = QUEUED_RE.match(reply)
        h.check(m, "250 without 'Ok: queued as ID': %r" % reply)
        qid = m.group(1).decode()
        h.check(took < 2.0, "the 250 took %.2f s with the next hop down "
                "(delivery inside the transaction?)" % took)

        # deferred, with the reason
        def deferred():
            for mm in h.queue_json(conf):
                if mm.get("id") != qid:
                    continue
                rs = mm.get("rcpts") or []
                if (len(rs) == 1 and rs[0].get("state") == "deferred"
                        and rs[0].get("last_reply")):
                    return mm
            return None
        entry = h.wait_for(deferred, 15, "tern queue list --json to show "
                           "%s's recipient deferred" % qid, interval=0.2)
        r = entry["rcpts"][0]
        print("  queue list: %s" % entry)
        h.check(r.get("addr") == "rcpt@example.org", "rcpt: %r" % r)
        h.check(entry.get("from") == "sender@example.net",
                "from: %r" % entry.get("from"))
        h.check(entry.get("size", 0) >= len(msg), "size %r < %d"
                % (entry.get("size"), len(msg)))
        # Step 8: the [delivery] target is "local" whatever it is (a stored
        # "relay" of Step 7 still means the same)
        h.check(r.get("dest") == "local", "dest: %r" % r.get("dest"))
        h.check(re.search(r"connect|refused", r["last_reply"], re.I),
                "the deferral's reason does not mention the connection: %r"
                % r["last_reply"])
        h.check(r.get("last_code", 0) // 100 == 4 or r.get("last_code") == 0,
                "last_code %r" % r.get("last_code"))
        text = h.queue_text(conf)
        print("  text list:\n    " + text.replace("\n", "\n    "))
        h.check(qid in text and "rcpt@example.org" in text,
                "the text list does not show %s: %r" % (qid, text))
        h.check(srv.grep("id=" + qid), "no log line carries id=%s:\n%s"
                % (qid, srv.log()))

        # the next hop comes back: delivered on the next retry
        t1 = time.monotonic()
        with sink:
            h.wait_for(sink.messages, 15, "the message at the next hop "
                       "(retry_max 2 s)", interval=0.05)
            print("  arrived %.2f s after the next hop started"
                  % (time.monotonic() - t1))
            h.wait_queue_empty(conf, 10)
            got = sink.messages()
            h.check(len(got), "nothing")
            h.check(len(got) == 1, "delivered %d times" % len(got))
            frm, rcpts, data = got[0]
            h.check(frm == "sender@example.net" and
                    rcpts == ["rcpt@example.org"],
                    "envelope at the next hop: %r %r" % (frm, rcpts))
            trace, rest = h.strip_received(data)
            h.check(b"queue.e2e.example" in trace,
                    "our Received field does not name us: %r" % trace)
            print("  our trace: %r" % trace)
            h.assert_bytes_equal(rest, msg, "message at the next hop")
            text = h.queue_text(conf)
            h.check("Queue is empty" in text,
                    "text list of an empty queue: %r" % text)
            h.check(len(sink.messages()) == 1, "delivered twice")
        srv.wait_log("id=" + qid)


if __name__ == "__main__":
    h.main([test_next_hop_down])
