#!/usr/bin/env python3
"""Message ids (issue 8, item 23): every message gets its own id, also
two messages in one session; the id is in the Received field ("with
ESMTP id ID"), in the 250 reply ("Ok: delivered as ID") and in the log
line of the message, which lists every recipient (40 of 40)."""

import os
import re

import e2e as h
from test_log import logfmt, one_each

RECEIVED_ID = re.compile(rb"\bwith (ESMTP|UTF8SMTP)S?A? id ([A-Za-z0-9-]+)")
REPLY_ID = re.compile(r"^250 2\.0\.0 Ok: delivered as ([A-Za-z0-9-]+)$")


def test_ids():
    d = h.tmpdir(prefix="tern-e2e-msgid-")
    (port,) = h.free_ports(1)
    md = os.path.join(d, "mail")
    cfg = h.write(os.path.join(d, "tern.ini"),
                  "[listener mx]\nurl = smtp://127.0.0.1:%d\n"
                  "[domains]\naccept = example.org\n"
                  "[delivery]\nmaildir = %s\nfsync = no\n" % (port, md))
    rcpts = ["user%02d@example.org" % i for i in range(40)]
    with h.Serve(["-c", cfg], name="msgid") as srv:
        r = h.Raw(port=port)
        r.reply()
        ids = []
        for n, to in enumerate([rcpts[:1], rcpts]):
            code, lines = h.transaction(
                r, "s@example.net", to,
                b"Subject: m%d\r\n\r\nbody\r\n" % n,
                ehlo="ids.example" if n == 0 else None)
            h.check(code == 250, "DATA %d: %r" % (n, lines))
            m = REPLY_ID.match(lines[-1])
            h.check(m, "the 250 reply carries no id: %r" % lines)
            ids.append(m.group(1))
        # RFC 6531 section 4.3: an SMTPUTF8 transaction is "with UTF8SMTP"
        r.cmd("MAIL FROM:<s@example.net> SMTPUTF8", 250)
        r.cmd("RCPT TO:<%s>" % rcpts[0], 250)
        r.cmd("DATA", 354)
        r.send(b"Subject: utf8\r\n\r\nbody\r\n.\r\n")
        code, lines = r.reply()
        m = REPLY_ID.match(lines[-1])
        h.check(code == 250 and m, "SMTPUTF8 DATA: %r" % lines)
        ids.append(m.group(1))
        r.cmd("QUIT")
        r.close()
        h.check(ids[0] != ids[1], "two messages of one session share the "
                "id %s" % ids[0])
        msgs = srv.wait_log("event=message", count=3)

    stored = {}
    for p in h.maildir_files(md):
        trace, rest = h.split_trace(h.read(p), p)
        m = RECEIVED_ID.search(trace)
        h.check(m, "no 'with ESMTP id' in %r" % trace)
        mid = m.group(2).decode()
        want = b"UTF8SMTP" if mid == ids[2] else b"ESMTP"
        h.check(m.group(1) == want, "message %s: 'with %s', expected %s"
                % (mid, m.group(1).decode(), want.decode()))
        stored.setdefault(mid, []).append(rest)
    h.check(set(stored) == set(ids), "ids in Received %r, in replies %r"
            % (sorted(stored), ids))
    logged = [one_each(logfmt(ln), ln) for ln in msgs]
    h.check([x.get("id") for x in logged] == ids,
            "ids in the log %r, in replies %r"
            % ([x.get("id") for x in logged], ids))
    got = logged[1]["to"].split(",")
    want = ["<%s>" % t for t in rcpts]
    h.check(got == want, "to= lists %d of %d recipients: %r"
            % (len(got), len(want), logged[1]["to"]))


if __name__ == "__main__":
    h.main([test_ids])
