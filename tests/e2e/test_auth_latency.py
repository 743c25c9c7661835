#!/usr/bin/env python3
"""Issue 8 item 13: password checks run off the event loop.

Eight clients send AUTH PLAIN with a wrong password as fast as they can
(connect, EHLO and AUTH pipelined, drop the connection without waiting
for any answer), for a bounded time, against `tern serve` with a users file
made by `tern passwd` (yescrypt). Meanwhile a ninth client sends NOOP and
measures each round trip. Before the fix every yescrypt ran on the event
loop, so each NOOP waited behind the hashes of eight clients (a median
of about 1 s seen; several hundred ms on this machine); now the hashes
run on libuv's pool, at most 2 at once, and the loop answers at once.
(The probe reconnects every 50 NOOPs: NOOP is a junk command.)
Bound: median NOOP under 100 ms (generous: it is well under 10 ms
normally). Then a right password still gets 235 and a wrong one 535,
through the same asynchronous path.
"""

import base64
import os
import socket
import statistics
import threading
import time

import e2e as h

HAMMERS = 8
DURATION = 4.0  # seconds of hammering
PASSWORD = "right horse battery"

CONF = """[listener sub]
url = smtp://127.0.0.1:{port}
auth = yes
insecure_auth = yes

[auth]
users = {users}

[delivery]
maildir = {maildir}
fsync = no
"""


def plain(user, password):
    return base64.b64encode(("\0%s\0%s" % (user, password)).encode()).decode()


def hammer(port, stop, counts, i):
    bad = ("EHLO hammer.example\r\nAUTH PLAIN %s\r\n"
           % plain("alice", "wrong%d" % i)).encode()
    while not stop.is_set():
        try:
            r = h.Raw(port=port, timeout=10)
            r.send(bad)
            r.s.shutdown(socket.SHUT_WR)    # EHLO, AUTH, then FIN
            r.s.close()                     # not waiting for answers
            counts[i] += 1
        except (OSError, h.TestFailure):
            time.sleep(0.01)


def test_noop_latency_while_auth_fails():
    d = h.tmpdir(prefix="tern-e2e-authlat-")
    users = os.path.join(d, "users")
    h.write(users, h.passwd_line("alice", PASSWORD) + "\n")
    (port,) = h.free_ports(1)
    cfg = os.path.join(d, "tern.ini")
    h.write(cfg, CONF.format(port=port, users=users,
                             maildir=os.path.join(d, "mail")))
    with h.Serve(["-c", cfg], name="authlat"):
        probe = h.Raw(port=port, timeout=30)
        probe.reply()
        probe.cmd("EHLO probe.example", 250)
        stop = threading.Event()
        counts = [0] * HAMMERS
        threads = [threading.Thread(target=hammer, args=(port, stop, counts, i),
                                    daemon=True) for i in range(HAMMERS)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # let the hammering build up
        rtts = []
        end = time.monotonic() + DURATION
        while time.monotonic() < end:
            if len(rtts) % 50 == 49:  # NOOP is junk: stay under 100
                probe.cmd("QUIT", 221)
                probe = h.Raw(port=port, timeout=30)
                probe.reply()
                probe.cmd("EHLO probe.example", 250)
            t0 = time.monotonic()
            probe.cmd("NOOP", 250)
            rtts.append(time.monotonic() - t0)
            time.sleep(0.02)
        stop.set()
        for t in threads:
            t.join(timeout=20)
        h.check(not any(t.is_alive() for t in threads), "a hammer hung")
        med = statistics.median(rtts) * 1000
        print("AUTH attempts: %d; NOOPs: %d; NOOP median %.1f ms, max %.1f ms"
              % (sum(counts), len(rtts), med, max(rtts) * 1000))
        h.check(sum(counts) >= 4 * HAMMERS,
                "the hammers made only %d AUTH attempts" % sum(counts))
        h.check(med < 100.0, "NOOP median %.0f ms while wrong passwords are "
                "checked (want < 100 ms): hashing blocks the loop" % med)
        probe.cmd("QUIT", 221)

        # The asynchronous path still decides right. Checks queued for
        # the hammers' dropped connections may still fill the bounded
        # queue for a moment: that is a 454 (try again), never a wrong
        # answer.
        r = h.Raw(port=port, timeout=30)
        r.reply()
        r.cmd("EHLO c.example", 250)
        busy = 0
        for pw, want in (("nope", 535), (PASSWORD, 235)):
            deadline = time.monotonic() + 30
            while True:
                code, lines = r.cmd("AUTH PLAIN " + plain("alice", pw))
                if code != 454 or time.monotonic() > deadline:
                    break
                busy += 1
                time.sleep(0.2)
            h.check(code == want, "AUTH with %s password: expected %d, got %s"
                    % ("the right" if want == 235 else "a wrong", want, lines))
        print("454 (queue full) answers after the hammering: %d" % busy)
        r.cmd("QUIT", 221)


if __name__ == "__main__":
    h.main([test_noop_latency_while_auth_fails])
