#!/usr/bin/env python3
"""Mail loops (docs/configuration.md "Mail loops").

1. The hop count (Postfix's hopcount_limit; docs/configuration.md
"Mail loops"). A message whose header has more than 50 Received: fields is
refused at the end of data with 554 5.4.6, whatever the target, and nothing
of it is delivered or queued:

- maildir target without the queue: 51 fields refused, 50 delivered;
- the queue: 51 fields refused, the queue stays empty;
- the fields are counted across chunks of any size (BDAT chunks cut inside
  a field name), without case, at the start of a line only, and only in
  the header (Received: lines in the body do not count).

2. The bare <postmaster> (RFC 5321 §4.5.1) with target = mx, where there
   is no local mailbox: queued for [queue] postmaster (its route), with
   ORCPT rfc822;postmaster; without [queue] postmaster, for the MX of
   [server] hostname (never this server itself: self_addrs).
Nothing is delivered in part 2: every next hop is a closed loopback port.

(Never to itself, through self_addrs: tests/queue/test_mx_self.py.)
"""

import json
import os
import subprocess

import e2e as h

CONF = """[server]
hostname = hops.e2e.example

[listener in]
url = smtp://127.0.0.1:{port}

[domains]
accept = example.org

[delivery]
target = maildir
maildir = {md}
queue = {queue}
{qsec}
"""


def start(d, queue):
    (p,) = h.free_ports(1)
    md = os.path.join(d, "mail")
    qd = os.path.join(d, "queue")
    qsec = ("[queue]\ndirectory = %s\nretry_min = 1h\nfsync = no\n" % qd
            if queue else "")
    conf = h.write(os.path.join(d, "t.ini"), CONF.format(
        port=p, md=md, queue="yes" if queue else "no", qsec=qsec))
    return h.Serve(["-c", conf], name="hops"), md, qd, conf


def header(n, case="Received"):
    return "".join("%s: from h%d.example by h%d.example; "
                   "Thu, 3 Dec 2026 00:00:00 +0000\r\n" % (case, i, i + 1)
                   for i in range(n))


def message(n, body="hello\r\n", case="Received"):
    return (header(n, case) + "From: a@example.net\r\nTo: b@example.org\r\n"
            "Subject: hops\r\n\r\n" + body).encode()


def data(port, msg):
    with h.session(port) as r:
        r.cmd("MAIL FROM:<a@example.net>", 250)
        r.cmd("RCPT TO:<b@example.org>", 250)
        r.cmd("DATA", 354)
        r.send(h.dot_stuff(msg) + b".\r\n")
        return r.reply()


def bdat(port, msg, cut):
    """BDAT in chunks of `cut` octets."""
    with h.session(port) as r:
        r.cmd("MAIL FROM:<a@example.net>", 250)
        r.cmd("RCPT TO:<b@example.org>", 250)
        chunks = [msg[i:i + cut] for i in range(0, len(msg), cut)]
        for i, c in enumerate(chunks):
            last = i == len(chunks) - 1
            r.send(b"BDAT %d%s\r\n" % (len(c), b" LAST" if last else b"")
                   + c)
            code, lines = r.reply()
            if not last:
                h.check(code == 250, "BDAT chunk: %r" % lines)
        return code, lines


def stored(md):
    return h.maildir_files(md) if os.path.isdir(os.path.join(md, "new")) \
        else []


def test_maildir_limit():
    d = h.tmpdir()
    s, md, _, _ = start(d, False)
    with s:
        code, lines = data(s.port, message(51))
        h.check(code == 554 and "5.4.6" in lines[-1],
                "51 Received fields: 554 5.4.6, got %r" % lines)
        h.check(stored(md) == [], "nothing delivered: %r" % stored(md))
        s.wait_log("what=hops received=51")
        code, lines = data(s.port, message(50))
        h.check(code == 250, "50 Received fields delivered, got %r" % lines)
        h.check(len(stored(md)) == 1, "one delivered: %r" % stored(md))


def test_queue_limit():
    d = h.tmpdir()
    s, md, qd, conf = start(d, True)
    with s:
        code, lines = data(s.port, message(60, case="RECEIVED"))
        h.check(code == 554 and "5.4.6" in lines[-1],
                "queue: 554 5.4.6, got %r" % lines)
        p = subprocess.run([h.tern_bin(), "queue", "list", "--json",
                            "-c", conf], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=20)
        out = p.stdout.decode()
        h.check(p.returncode == 0, "queue list: %r" % p.stderr)
        rows = [json.loads(ln) for ln in out.splitlines() if ln.strip()]
        h.check(rows == [], "queue empty: %r" % out)
        h.check(stored(md) == [], "nothing delivered: %r" % stored(md))


def test_chunks_and_body():
    d = h.tmpdir()
    s, md, _, _ = start(d, False)
    with s:
        msg = message(51, case="rEcEiVeD")
        for cut in (1, 3, 7, 64):
            code, lines = bdat(s.port, msg, cut)
            h.check(code == 554 and "5.4.6" in lines[-1],
                    "BDAT chunks of %d: 554 5.4.6, got %r" % (cut, lines))
        # the obsolete form with white space before the colon counts too
        for name in ("Received ", "Received\t", "received \t "):
            code, lines = data(s.port, message(51, case=name))
            h.check(code == 554 and "5.4.6" in lines[-1],
                    "%r fields: 554 5.4.6, got %r" % (name, lines))
        # In the body, or not at the start of a line: not counted
        body = header(60) + "x" + header(1)
        code, lines = bdat(s.port, message(50, body=body), 5)
        h.check(code == 250, "Received in the body: 250, got %r" % lines)
        code, lines = data(s.port, message(0, body="") .replace(
            b"From:", ("X-Note: " + "Received: " * 60 + "\r\nFrom:")
            .encode(), 1))
        h.check(code == 250, "Received: inside a field: 250, got %r" % lines)
        h.check(len(stored(md)) == 2, "two delivered: %r" % stored(md))


MX_CONF = """[server]
hostname = mail.hops.example
shutdown_timeout = 1s

[listener in]
url = smtp://127.0.0.1:{port}

[domains]
accept = hops.example

[delivery]
target = mx

[routes]
partner.example = smtp://127.0.0.1:{dead}

[outbound]
resolver = 127.0.0.1:{dead}
connect_timeout = 1s

[queue]
directory = {qd}
retry_min = 1h
retry_max = 2h
fsync = no
{pm}
"""


def postmaster_dest(pm):
    d = h.tmpdir()
    port, dead = h.free_ports(2)
    conf = h.write(os.path.join(d, "t.ini"), MX_CONF.format(
        port=port, dead=dead, qd=os.path.join(d, "queue"),
        pm="postmaster = %s" % pm if pm else ""))
    with h.Serve(["-c", conf], name="pm"):
        with h.session(port) as r:
            r.cmd("MAIL FROM:<a@example.net>", 250)
            r.cmd("RCPT TO:<postmaster>", 250)
            r.cmd("DATA", 354)
            r.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n")
            code, lines = r.reply()
            h.check(code == 250, "queued: %r" % lines)
        p = subprocess.run([h.tern_bin(), "queue", "list", "--json", "-c",
                            conf], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=20)
        rows = [json.loads(ln) for ln in p.stdout.decode().splitlines()
                if ln.strip()]
        h.check(len(rows) == 1, "one message queued: %r" % rows)
        return [(x["addr"], x["dest"]) for x in rows[0]["rcpts"]], dead


def test_postmaster_alias():
    got, dead = postmaster_dest("pm@partner.example")
    h.check(got == [("pm@partner.example",
                     "url:smtp://127.0.0.1:%d" % dead)],
            "postmaster to [queue] postmaster: %r" % got)


def test_postmaster_no_alias():
    got, _ = postmaster_dest(None)
    h.check(got == [("postmaster", "mx:mail.hops.example")],
            "postmaster to the hostname's MX: %r" % got)


if __name__ == "__main__":
    h.main([test_maildir_limit, test_queue_limit, test_chunks_and_body,
            test_postmaster_alias, test_postmaster_no_alias])
