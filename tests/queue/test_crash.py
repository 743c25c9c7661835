#!/usr/bin/env python3
"""Crash test (issue 10, "Must show" 3): 20 x kill -9 of `tern serve` at
random moments while 2,000 messages are received and relayed through the
queue to a flaky next hop.

The next hop (qtest.Hop) answers each RCPT and each end of data at
random: accept, 4xx, 5xx, or a stall of 0.3-2.5 s before its answer. It
records every recipient of every message it answered 250, and counts the
recipients of the transactions open (data in, not answered) at any time.
Messages from <> (bounces) are never refused with a 5xx there, so they
end delivered. Senders are sN@senders.example: tern relays their bounces
to the same next hop, which records them (mail from <>).

Four client threads send 2,000 messages (1-3 recipients, unique
Message-IDs, ENVID = the Message-ID, RET=HDRS); a message not answered
250 (refused, connection lost, daemon down) is sent again as a new
message (a new id) and the old one never counts. Meanwhile a driver
kills the daemon with SIGKILL 20 times at random moments and restarts
it, noting at each kill which (message, recipient) pairs are in flight
at the next hop: its open transactions (MAIL seen, not yet ended), and
those ended in the last 0.2 s (TERN_CRASH_WINDOW), whose outcome tern
may not have committed yet.

Then the next hop accepts everything and the queue empties (retry_max is
2 s). Checked: every message answered 250 is, for each recipient,
delivered at the next hop or bounced (a DSN from <> naming it, Action:
failed, its Original-Envelope-Id the message's); duplicates (a recipient
of a message delivered more than once, or bounced more than once) are
at most the sum of the pairs in flight at the kills, and every one of
them was in flight at some kill. The figures are printed.

TERN_CRASH_MESSAGES (default 2000) and TERN_CRASH_KILLS (20) scale it.
"""

import email
import email.policy
import os
import random
import re
import signal
import smtplib
import threading
import time
from collections import Counter

import qtest as h

MESSAGES = int(os.environ.get("TERN_CRASH_MESSAGES", "2000"))
KILLS = int(os.environ.get("TERN_CRASH_KILLS", "20"))
CLIENTS = 4
# seconds after its end that a transaction still counts as in flight at
# a kill (an outcome the daemon may not have committed yet)
WINDOW = float(os.environ.get("TERN_CRASH_WINDOW", "0.2"))
SPREAD = 20.0  # seconds over which the clients spread their messages
QUEUED_RE = re.compile(rb"^2\.0\.0 Ok: queued as ([0-9A-Z]{1,23})$")


class Flaky:
    """The next hop's decisions: random while self.flaky, else accept."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.flaky = True

    def r(self):
        with self.lock:
            return self.rng.random()

    def __call__(self, stage, ctx):
        if not self.flaky:
            return "250 2.0.0 Ok"
        x = self.r()
        bounce = ctx["mail_from"] == ""
        if stage == "rcpt":
            if x < 0.80:
                return "250 2.1.5 Ok"
            if x < 0.90 or bounce:
                return "451 4.7.1 Try again later (flaky)"
            return "550 5.1.1 No such user here (flaky)"
        if x < 0.65:
            return "250 2.0.0 Ok: accepted"
        if x < 0.75:
            return "451 4.3.0 Temporary failure (flaky)"
        if x < 0.83 and not bounce:
            return "554 5.6.0 Message refused (flaky)"
        secs = 0.3 + 2.2 * self.r()
        reply = ("250 2.0.0 Ok: accepted after a stall" if self.r() < 0.7
                 else "451 4.4.2 Stalled, try again (flaky)")
        return ("stall", secs, reply)


class Clients:
    """CLIENTS threads sending MESSAGES messages; ok[attempt id] =
    (sender, [rcpts]) for each answered 250."""

    def __init__(self, port, seed):
        self.port = port
        self.seed = seed
        self.lock = threading.Lock()
        self.ok = {}
        self.attempts = 0
        self.failures = Counter()
        self.done = threading.Event()
        self.errors = []

    def run(self):
        ts = [threading.Thread(target=self._thread, args=(i,), daemon=True)
              for i in range(CLIENTS)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.done.set()

    def _thread(self, i):
        try:
            self._send_all(i)
        except Exception as e:  # noqa: surfaced by the test
            self.errors.append("client %d: %r" % (i, e))

    def _send_all(self, i):
        rng = random.Random(self.seed * 100 + i)
        sender = "s%d@senders.example" % i
        c = None
        start = time.monotonic()
        deadline = start + 240
        for j, n in enumerate(range(i, MESSAGES, CLIENTS)):
            # spread over SPREAD seconds, so that the kills fall while
            # messages are received as well as delivered
            wait = start + j * SPREAD * CLIENTS / MESSAGES - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            k = 0
            while True:
                h.check(time.monotonic() < deadline, "client %d: stuck" % i)
                k += 1
                aid = "m%d.a%d@crash.e2e" % (n, k)
                rcpts = ["u%d@dest%d.example" % (rng.randrange(1000), j)
                         for j in range(rng.randint(1, 3))]
                body = ("From: <%s>\r\nTo: <%s>\r\nSubject: crash %s\r\n"
                        "Message-ID: <%s>\r\n\r\n%s\r\n"
                        % (sender, rcpts[0], aid, aid, "x" * rng.randrange(
                            50, 800))).encode()
                with self.lock:
                    self.attempts += 1
                try:
                    if c is None:
                        c = smtplib.SMTP(h.HOST, self.port, timeout=30)
                        c.ehlo("crash.client")
                    code, r = c.mail(sender, ["RET=HDRS", "ENVID=" + aid])
                    good = code == 250
                    for t in rcpts:
                        if good:
                            good = c.rcpt(t)[0] == 250
                    if good:
                        code, r = c.data(body)
                        good = code == 250
                        if good:
                            h.check(QUEUED_RE.match(r), "250 %r" % r)
                    if good:
                        with self.lock:
                            self.ok[aid] = (sender, rcpts)
                        break
                    with self.lock:
                        self.failures["reply %d" % code] += 1
                    c.rset()
                except (OSError, smtplib.SMTPException) as e:
                    with self.lock:
                        self.failures[type(e).__name__] += 1
                    try:
                        if c is not None:
                            c.close()
                    except OSError:
                        pass
                    c = None
                    time.sleep(0.05)
        if c is not None:
            try:
                c.quit()
            except (OSError, smtplib.SMTPException):
                pass


def parse_bounce(data):
    """(envid, message-id, [failed recipients]) of a DSN."""
    b = email.message_from_bytes(data, policy=email.policy.compat32)
    h.check(b.get_content_type() == "multipart/report",
            "a message from <> that is not a report: %r" % data[:300])
    envid, mid, failed = None, None, []
    for part in b.walk():
        ct = part.get_content_type()
        if ct == "message/delivery-status":
            blocks = part.get_payload()
            envid = (blocks[0]["Original-Envelope-Id"] or "").strip()
            for blk in blocks[1:]:
                if (blk["Action"] or "").strip().lower() == "failed":
                    fr = (blk["Final-Recipient"] or "").split(";", 1)[-1]
                    failed.append(fr.strip().lower())
        elif ct == "text/rfc822-headers":
            m = h.MSGID_RE.search(h.crlf(part.get_payload(decode=True)))
            if m:
                mid = m.group(1).decode()
    return envid, mid, failed


def txn_keys(t):
    """(message, recipient) pairs a next-hop transaction is about: the
    client's ENVID (the message's id) or Message-ID with each recipient
    named; for a DSN, the original's id with each failed recipient."""
    if t["mail_from"] == "":
        if t.get("data") is None:
            return set()
        envid, omid, failed = parse_bounce(t["data"])
        key = envid or omid
        h.check(key, "a bounce names no message: %r" % t["data"][:500])
        return {(key, f) for f in failed}
    key = t.get("envid") or (t.get("data") and h.msgid_of(t["data"]))
    return {(key, r.lower()) for r in t.get("rcpts", [])} if key else set()


def test_crash():
    seed = int(os.environ.get("TERN_TEST_SEED", str(int(time.time()))))
    print("  seed %d (TERN_TEST_SEED=%d replays the choices)" % (seed, seed))
    rng = random.Random(seed)
    d = h.tmpdir("tern-queue-crash-")
    flaky = Flaky(seed)
    hop = h.Hop(decide=flaky)
    conf = h.queue_conf(d, hop.port, retry_min="1s", retry_max="2s",
                        shutdown="2s", queue="lifetime = 1h\n")
    t0 = time.monotonic()
    srv = None
    servers = []
    kills = []
    try:
        hop.start()
        srv = h.Serve(["-c", conf.path], name="crash-0").start()
        servers.append(srv)
        clients = Clients(conf.port, seed)
        ct = threading.Thread(target=clients.run, daemon=True)
        ct.start()
        for k in range(KILLS):
            time.sleep(rng.uniform(0.3, 2.5))
            inflight = hop.in_flight(window=WINDOW)
            srv.kill9()
            kills.append(inflight)
            srv = h.Serve(["-c", conf.path], name="crash-%d" % (k + 1))
            servers.append(srv)
            srv.start()
        t_kills = time.monotonic() - t0
        ct.join(timeout=max(1.0, 240 - (time.monotonic() - t0)))
        h.check(clients.done.is_set(), "the clients did not finish")
        h.check(not clients.errors, "client errors: %r" % clients.errors)
        t_sent = time.monotonic() - t0
        print("  %d kills in %.1f s; %d messages answered 250 after %d "
              "attempts in %.1f s; other outcomes: %r"
              % (len(kills), t_kills, len(clients.ok), clients.attempts,
                 t_sent, dict(clients.failures)))

        # the next hop heals: everything drains
        flaky.flaky = False  # retry_max is 2 s: no flush needed
        h.wait_queue_empty(conf, 120, "the queue to drain after the kills")
        t_drained = time.monotonic() - t0

        accepted = hop.snapshot()
        deliveries = Counter()
        bounces = Counter()
        bounce_msgs = 0
        for frm, rcpt, mid, data in accepted:
            if frm != "":
                deliveries[(mid, rcpt.lower())] += 1
        for frm, rcpt, mid, data in accepted:
            # a DSN goes to one recipient (the sender): one entry each
            if frm == "":
                bounce_msgs += 1
                for key in txn_keys({"mail_from": "", "data": data}):
                    bounces[key] += 1
        missing = []
        n_delivered = n_bounced = 0
        for aid, (sender, rcpts) in clients.ok.items():
            for t in rcpts:
                if deliveries[(aid, t)]:
                    n_delivered += 1
                elif bounces[(aid, t)]:
                    n_bounced += 1
                else:
                    missing.append((aid, t))
        dup_d = sum(v - 1 for v in deliveries.values() if v > 1)
        dup_b = sum(v - 1 for v in bounces.values() if v > 1)
        unconfirmed = len({mid for (mid, _) in deliveries} - set(clients.ok))
        # what was in flight at each kill, as (message, recipient) keys
        at_kill = [set().union(*[txn_keys(t) for t in ks]) if ks else set()
                   for ks in kills]
        bound = sum(len(x) for x in at_kill)
        every = set().union(*at_kill) if at_kill else set()
        unexplained = sorted(
            [("delivery",) + k for k, v in deliveries.items()
             if v > 1 and k not in every] +
            [("bounce",) + k for k, v in bounces.items()
             if v > 1 and k not in every])
        print("  drained %.1f s after the start (%.1f s after sending)"
              % (t_drained, t_drained - t_sent))
        print("  recipients answered 250: %d; delivered %d, bounced %d, "
              "missing %d" % (n_delivered + n_bounced + len(missing),
                              n_delivered, n_bounced, len(missing)))
        print("  bounces received: %d; messages delivered that the client "
              "never saw answered 250: %d" % (bounce_msgs, unconfirmed))
        print("  in flight at each kill (message-recipient pairs in the "
              "next hop's open transactions or ended in the last %.1f s): "
              "%r" % (WINDOW, [len(x) for x in at_kill]))
        print("  duplicates: %d deliveries + %d bounces = %d; in flight at "
              "the kills: %d; duplicates not in flight at any kill: %d"
              % (dup_d, dup_b, dup_d + dup_b, bound, len(unexplained)))
        h.check(len(clients.ok) >= MESSAGES, "only %d messages answered 250"
                % len(clients.ok))
        h.check(not missing, "%d recipients answered 250 were neither "
                "delivered nor bounced, e.g. %r" % (len(missing),
                                                    missing[:10]))
        h.check(dup_d + dup_b <= bound, "%d duplicates exceed the %d "
                "deliveries in flight at the kills" % (dup_d + dup_b, bound))
        h.check(not unexplained, "%d duplicates were not in flight at any "
                "kill, e.g. %r" % (len(unexplained), unexplained[:10]))
        srv.stop()  # and a clean exit after all that
    except BaseException:
        if srv is not None:
            print("last daemon's log (last lines):\n%s" % srv.log(40))
        raise
    finally:
        for s in servers:
            s.cleanup()
        hop.stop()


if __name__ == "__main__":
    h.main([test_crash])
