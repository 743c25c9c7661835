#!/usr/bin/env python3
"""50 messages of 6 MiB over STARTTLS, forwarded (`target = lmtp`) into a
real Dovecot LMTP: all delivered, byte-exact (sha256 of what Dovecot
stored, after its trace fields, against what was sent).

Issue 8, item 4: on 5df0288 this stalled on 3 to 7 of 12 such messages.
The next hop is slower than the client, so the session pauses (on_data
answers TERN_PENDING) and the runtime stops reading; on resume it fed
the plaintext it had held back but left the TLS records still buffered
in the engine, which never raise a read event of their own. The client
had sent everything and waited: no 250, then `event=abort
why=disconnect` and Dovecot's `unfinished DATA command`.

Ten connections (STARTTLS each) carry five messages each; each message
is sent in one go by smtplib and must be answered within REPLY_TIMEOUT.
Stored copies are checked and removed as they arrive, so the disk holds
at most one connection's worth. Bounded: the whole run must finish in
TOTAL_BUDGET seconds.
"""

import os
import random
import smtplib
import socket
import ssl
import time

import e2e as h
from dovecot import Dovecot, strip_trace

HOST = "127.0.0.1"
SIZE = 6 * 1024 * 1024
CONNECTIONS = 10
PER_CONNECTION = 5
REPLY_TIMEOUT = 30.0   # one 6 MiB message takes well under a second
TOTAL_BUDGET = 150.0   # seconds for all 50, on a loaded 2-core machine

CONF = """[server]
hostname = mx.e2e.example
max_message_size = 0

[listener mx]
url = smtp://127.0.0.1:{port}
starttls = yes

[tls]
cert = {cert}
key = {key}

[delivery]
target = lmtp
url = {url}
queue = no
"""


def tls_ctx():
    return ssl.create_default_context(cafile=h.cert("ca.pem"))


def messages(rng):
    """50 distinct 6 MiB messages sharing one generated body (cheap to
    make): each has its own Message-ID and its own last line."""
    base = h.make_message("big@e2e", SIZE - 40, rng)
    for i in range(CONNECTIONS * PER_CONNECTION):
        m = base.replace(b"<big@e2e>", b"<big-%03d@e2e>" % i, 1)
        yield i, m + b"end of message %03d\r\n" % i


def check_stored(dc, sent):
    """Every message sent on the last connection is in alice's Maildir,
    byte-exact; the files are removed afterwards."""
    files = dc.wait_files("alice", len(sent), timeout=30)
    seen = set()
    for f in files:
        data = h.read(f)
        trace, rest = strip_trace(data, f)
        h.check(b"(tern) with ESMTP" in trace,
                "%s: no Received line by tern in %r" % (f, trace))
        mid = h.message_id(rest)
        h.check(mid in sent and mid not in seen,
                "%s: unexpected Message-ID %r" % (f, mid))
        seen.add(mid)
        want = sent[mid]
        h.check(h.sha256(rest) == h.sha256(want),
                "%s: sha256 of what Dovecot stored differs from what was "
                "sent" % mid)
        h.assert_bytes_equal(rest, want, "Dovecot's copy of %s" % mid)
        os.remove(f)


def test_50_times_6mib_starttls_into_dovecot():
    rng = random.Random(84)
    t0 = time.monotonic()
    with Dovecot(users=["alice"]) as dc:
        d = h.tmpdir("tern-e2e-bigtls-")
        (port,) = h.free_ports(1)
        conf = h.write(os.path.join(d, "tern.ini"), CONF.format(
            port=port, cert=h.cert("server.pem"), key=h.cert("server.key"),
            url=dc.url))
        with h.Serve(["-c", conf], name="starttls-lmtp") as srv:
            gen = messages(rng)
            done = 0
            for conn in range(CONNECTIONS):
                sent = {}
                with smtplib.SMTP(HOST, srv.port, timeout=REPLY_TIMEOUT) as c:
                    c.ehlo("client.example")
                    code, msg = c.starttls(context=tls_ctx())
                    h.check(code == 220, "STARTTLS: %d %r" % (code, msg))
                    c.ehlo("client.example")
                    for _ in range(PER_CONNECTION):
                        i, m = next(gen)
                        mid = "big-%03d@e2e" % i
                        h.check(c.mail("sender@example.net")[0] == 250,
                                "MAIL %d" % i)
                        code, msg = c.rcpt("alice@example.org")
                        h.check(code == 250, "RCPT %d: %d %r" % (i, code, msg))
                        try:
                            code, msg = c.data(m)
                        except (socket.timeout, TimeoutError,
                                smtplib.SMTPServerDisconnected) as e:
                            h.fail("message %d (connection %d): no reply "
                                   "within %.0f s after the final dot (%r): "
                                   "the session stalled\ntern log:\n%s\n"
                                   "Dovecot log:\n%s"
                                   % (i, conn, REPLY_TIMEOUT, e, srv.log(20),
                                      dc.log()))
                        h.check(code == 250, "message %d: %d %r\n%s"
                                % (i, code, msg, dc.log()))
                        sent[mid] = m
                        done += 1
                check_stored(dc, sent)
                elapsed = time.monotonic() - t0
                h.check(elapsed < TOTAL_BUDGET,
                        "%d of 50 messages took %.0f s (budget %.0f s)"
                        % (done, elapsed, TOTAL_BUDGET))
            srv.wait_log("event=message", count=done)
            h.check(len(srv.grep("status=250")) == done,
                    "log: %s" % srv.log(10))
            h.check(not srv.grep("event=abort"),
                    "aborted messages: %r" % srv.grep("event=abort"))
            h.check("unfinished DATA" not in dc.log(100000),
                    "Dovecot saw an unfinished DATA: %s" % dc.log())
    print("  %d messages of %d bytes over STARTTLS into Dovecot in %.1f s"
          % (done, SIZE, time.monotonic() - t0))
    h.check(done == CONNECTIONS * PER_CONNECTION, "sent %d" % done)


if __name__ == "__main__":
    h.main([test_50_times_6mib_starttls_into_dovecot])
