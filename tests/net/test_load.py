#!/usr/bin/env python3
"""Runtime under load: 5,000 concurrent connections on one worker, and a
slow client (one byte every 50 ms) that must not delay a fast one."""

import random
import resource
import selectors
import socket
import threading
import time

import harness as h

NCONN = 5000

MSG = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: load\r\n\r\n"
       + b"0123456789" * 50 + b"\r\n")


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        h.fail("RLIMIT_NOFILE hard limit %d < %d needed for %d connections"
               % (hard, need, NCONN))
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def test_5000_connections():
    raise_nofile(NCONN + 1000)  # the server inherits it
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0",
                          "--workers", "1"]) as srv:
        sel = selectors.DefaultSelector()
        socks = []
        bufs = {}
        greeted = 0
        deadline = time.monotonic() + 90
        try:
            # Connect while reading greetings, with at most MAX_OUT
            # connections not greeted yet: a connection the kernel
            # completed with a SYN cookie while the accept queue (511)
            # was full is silently lost and, SMTP being server-speaks-
            # first, would wait for a greeting forever.
            MAX_OUT = 256
            pending = NCONN
            while greeted < NCONN:
                if time.monotonic() > deadline:
                    h.fail("only %d of %d connections greeted in time"
                           % (greeted, NCONN))
                outstanding = len(socks) - greeted
                batch = max(0, min(pending, MAX_OUT - outstanding))
                for _ in range(batch):
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    s.setblocking(False)
                    s.connect_ex(("127.0.0.1", srv.port))
                    sel.register(s, selectors.EVENT_READ)
                    socks.append(s)
                    bufs[s] = b""
                pending -= batch
                for key, _ in sel.select(timeout=0.5 if not batch else 0.05):
                    s = key.fileobj
                    try:
                        d = s.recv(4096)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as e:
                        h.fail("connection %d failed: %s"
                               % (socks.index(s), e))
                    if not d:
                        h.fail("connection %d closed before/after greeting:"
                               " %r" % (socks.index(s), bufs[s]))
                    bufs[s] += d
                    if b"\r\n" in bufs[s]:
                        h.check(bufs[s].startswith(b"220 "),
                                "greeting %r" % bufs[s])
                        sel.unregister(s)
                        greeted += 1
            h.check(len(socks) == NCONN, "opened %d" % len(socks))
            # a normal transaction on the first, the last and a few others
            picks = [0, NCONN - 1] + random.sample(range(1, NCONN - 1), 4)
            for n, i in enumerate(picks):
                s = socks[i]
                s.setblocking(True)
                r = h.Raw(sock=s, timeout=10)
                body = MSG + b"connection %d\r\n" % i
                code, lines = h.transaction(r, "c%d@example.org" % i,
                                            ["r%d@example.org" % i], body)
                h.check(code == 250, "connection %d: %r" % (i, lines))
                msgs = srv.wait_messages(n + 1, timeout=10)
                h.assert_bytes_equal(msgs[-1].eml, body)
                h.check(msgs[-1].env["from"] == "c%d@example.org" % i,
                        msgs[-1].env_text)
            # every other connection is still alive and served
            s = socks[NCONN // 2]
            s.setblocking(True)
            r = h.Raw(sock=s, timeout=10)
            r.cmd("NOOP", 250)
        finally:
            sel.close()
            for s in socks:
                s.close()


def test_slow_client_does_not_delay_fast_one():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0",
                          "--workers", "1"]) as srv:
        slow_state = {"done": False, "error": None, "code": None}
        slow_cmds = [b"EHLO slow.example\r\n", b"MAIL FROM:<slow@example.org>"
                     b"\r\n", b"RCPT TO:<b@example.org>\r\n", b"DATA\r\n"]
        slow_body = b"Subject: slow\r\n\r\nsent one byte at a time\r\n"
        slow = h.Raw("127.0.0.1", srv.port, timeout=20)
        started = threading.Event()

        def drip(b):
            for i in range(len(b)):
                slow.send(b[i:i + 1])
                time.sleep(0.05)  # the subject under test: a slow client

        def slow_client():
            try:
                slow.reply()
                started.set()
                for c in slow_cmds:
                    drip(c)
                    code, lines = slow.reply()
                    if code not in (250, 354):
                        raise h.TestFailure("slow client: %r" % lines)
                drip(slow_body + b".\r\n")
                slow_state["code"] = slow.reply()[0]
            except BaseException as e:  # reported by the main thread
                slow_state["error"] = e
            finally:
                started.set()
                slow_state["done"] = True

        t = threading.Thread(target=slow_client, daemon=True)
        t.start()
        try:
            h.check(started.wait(10), "slow client got no greeting")
            h.check(slow_state["error"] is None, repr(slow_state["error"]))
            fast = h.Raw("127.0.0.1", srv.port, timeout=10)
            try:
                fast.reply()
                fast.cmd("EHLO fast.example", 250)
                worst = 0.0
                for i in range(50):
                    t0 = time.monotonic()
                    code, lines = h.transaction(fast, "f%d@example.org" % i,
                                                ["b@example.org"], MSG,
                                                ehlo=None)
                    dt = time.monotonic() - t0
                    worst = max(worst, dt)
                    h.check(code == 250, "fast %d: %r" % (i, lines))
                    h.check(dt < 1.0, "fast transaction %d took %.2f s" %
                            (i, dt))
                fast.cmd("QUIT", 221)
            finally:
                fast.close()
            h.check(not slow_state["done"],
                    "the slow client finished before the fast one: the test "
                    "proved nothing (error: %r)" % slow_state["error"])
            t.join(timeout=30)
            h.check(not t.is_alive(), "slow client did not finish in time")
            h.check(slow_state["error"] is None, repr(slow_state["error"]))
            h.check(slow_state["code"] == 250, "slow client's message: %r"
                    % slow_state["code"])
            msgs = srv.wait_messages(51)
            h.check(sum(1 for m in msgs if m.env["from"].startswith("f")) == 50,
                    "fast messages missing")
            h.check(msgs[-1].env["from"] == "slow@example.org",
                    "the slow message is not the last: %r" % msgs[-1].env)
            h.assert_bytes_equal(msgs[-1].eml, slow_body)
            for m in msgs[:-1]:
                h.assert_bytes_equal(m.eml, MSG)
            print("worst fast transaction: %.3f s" % worst)
        finally:
            slow.close()
            t.join(timeout=5)


if __name__ == "__main__":
    h.main([test_5000_connections, test_slow_client_does_not_delay_fast_one])
