#!/usr/bin/env python3
"""Crash test: "250 only once durable".

20 iterations. In each, 4 smtplib connections send MESSAGES_PER_ITERATION
messages (1-8 KiB, varied content, dot lines, a unique Message-ID each)
to `tern serve --maildir` (fsync = yes, the default), recording which ones
were answered 250. At a random moment (after a random number of 250s plus
a random delay) the daemon is killed with SIGKILL. Then:

  * it is restarted on the same Maildir: tmp/ is empty once it is ready;
  * every message answered 250 is in new/, byte-exact after the trace
    lines (matched by Message-ID);
  * every file in new/ is a complete message that was sent (no partial
    file, no duplicate);
  * the rest of the iteration's messages go to the restarted daemon and
    are all stored; it stops on SIGTERM with exit 0.

20 x 1,000 = 20,000 messages in all (at least 2,000). The seed is printed;
TERN_E2E_SEED=N repeats a run.
"""

import os
import random
import smtplib
import threading
import time

import e2e as h

ITERATIONS = 20
MESSAGES_PER_ITERATION = 1000
CONNECTIONS = 4


class Sender:
    def __init__(self, port, msgs):
        self.port = port
        self.msgs = msgs          # [(mid, bytes)]
        self.acked = set()
        self.attempted = set()
        self.errors = []
        self.lock = threading.Lock()
        self.threads = []

    def run_share(self, share):
        try:
            c = smtplib.SMTP("127.0.0.1", self.port, timeout=20)
            c.ehlo("crash.client")
        except (OSError, smtplib.SMTPException) as e:
            with self.lock:
                self.errors.append(repr(e))
            return
        try:
            for mid, m in share:
                with self.lock:
                    self.attempted.add(mid)
                c.sendmail("crash@example.net", ["box@example.org"], m)
                with self.lock:
                    self.acked.add(mid)
        except (OSError, smtplib.SMTPException) as e:
            with self.lock:
                self.errors.append(repr(e))
        finally:
            try:
                c.close()
            except OSError:
                pass

    def start(self):
        for k in range(CONNECTIONS):
            share = self.msgs[k::CONNECTIONS]
            t = threading.Thread(target=self.run_share, args=(share,),
                                 daemon=True)
            t.start()
            self.threads.append(t)

    def join(self, timeout=60):
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        h.check(not any(t.is_alive() for t in self.threads),
                "client threads still running after %d s" % timeout)

    def n_acked(self):
        with self.lock:
            return len(self.acked)


def verify(md, sent, acked, what):
    """Every acked message stored byte-exact; every stored file complete."""
    by_id = {}
    for p in h.maildir_files(md):
        data = h.read(p)
        trace, rest = h.split_trace(data, p)
        mid = h.message_id(rest)
        h.check(mid is not None and mid in sent,
                "%s: %s holds no Message-ID that was sent (partial or foreign "
                "file; %d bytes)" % (what, p, len(data)))
        h.assert_bytes_equal(rest, sent[mid], "%s: %s (%s)" % (what, p, mid))
        h.check(mid not in by_id, "%s: %s stored twice (%s, %s)"
                % (what, mid, by_id.get(mid), p))
        by_id[mid] = p
    missing = sorted(acked - set(by_id))
    h.check(not missing, "%s: %d message(s) answered 250 are not in new/: %s"
            % (what, len(missing), missing[:10]))
    return by_id


def test_kill9_during_load():
    seed = int(os.environ.get("TERN_E2E_SEED", random.randrange(1 << 30)))
    print("seed %d (TERN_E2E_SEED=%d repeats this run)" % (seed, seed))
    rng = random.Random(seed)
    base = h.tmpdir(prefix="tern-e2e-crash-")
    total_sent = total_acked = total_unacked_stored = tmp_seen = 0
    t0 = time.monotonic()
    for it in range(ITERATIONS):
        md = os.path.join(base, "it%02d" % it)
        msgs = [("crash-%d-%d-%d@e2e.example" % (seed, it, i),
                 h.make_message("crash-%d-%d-%d@e2e.example" % (seed, it, i),
                                rng.randint(1024, 8192), rng))
                for i in range(MESSAGES_PER_ITERATION)]
        sent = dict(msgs)
        # leave a quarter unsent: a fast server can finish the last few
        # messages within kill_delay, and then there is no crash to test
        kill_after = rng.randint(0, MESSAGES_PER_ITERATION * 3 // 4)
        kill_delay = rng.uniform(0, 0.02)
        srv = h.Serve(["--listen", "smtp://127.0.0.1:0", "--maildir", md,
                       "--hostname", "crash.example"], name="crash-%d" % it)
        srv2 = None
        try:
            srv.start()
            s = Sender(srv.port, msgs)
            s.start()
            h.wait_for(lambda: s.n_acked() >= kill_after or
                       not any(t.is_alive() for t in s.threads), 60,
                       "%d messages answered 250" % kill_after)
            time.sleep(kill_delay)
            srv.kill9()
            s.join()
            acked = set(s.acked)
            tmp_left = len(h.maildir_files(md, "tmp"))
            tmp_seen += tmp_left > 0
            h.check(len(acked) < MESSAGES_PER_ITERATION,
                    "iteration %d: the kill came after every message" % it)

            srv2 = h.Serve(["--listen", "smtp://127.0.0.1:0", "--maildir", md,
                            "--hostname", "crash.example"],
                           name="crash-%d-restart" % it)
            srv2.start()
            h.check(h.maildir_files(md, "tmp") == [],
                    "iteration %d: tmp/ not cleaned at restart (%d files "
                    "there after the kill)" % (it, tmp_left))
            by_id = verify(md, sent, acked, "iteration %d after kill -9" % it)
            total_unacked_stored += len(set(by_id) - acked)

            # the rest of this iteration's messages to the restarted daemon
            rest = [(mid, m) for mid, m in msgs if mid not in s.attempted]
            s2 = Sender(srv2.port, rest)
            s2.start()
            s2.join(120)
            h.check(not s2.errors and len(s2.acked) == len(rest),
                    "iteration %d: the restarted daemon took %d of %d: %r"
                    % (it, len(s2.acked), len(rest), s2.errors[:3]))
            srv2.stop()
            verify(md, sent, acked | s2.acked, "iteration %d at the end" % it)
            total_sent += len(s.attempted) + len(rest)
            total_acked += len(acked)
            print("iteration %2d: kill after %3d acks + %.1f ms: %3d answered "
                  "250 before the kill, %d stored without 250, %d tmp "
                  "file(s) cleaned at restart, %d sent after restart"
                  % (it, kill_after, kill_delay * 1000, len(acked),
                     len(set(by_id) - acked), tmp_left, len(rest)))
        finally:
            srv.cleanup()
            if srv2:
                srv2.cleanup()
    print("%d messages sent in %d iterations (%d answered 250 before a "
          "kill; %d stored whose 250 was lost; %d iterations left files in "
          "tmp/); %.1f s" % (total_sent, ITERATIONS, total_acked,
                             total_unacked_stored, tmp_seen,
                             time.monotonic() - t0))
    h.check(total_sent >= 2000, "only %d messages sent" % total_sent)


if __name__ == "__main__":
    h.main([test_kill9_during_load])
