#!/usr/bin/env python3
"""Disk full while queueing (issue 10, "Must show": 452 4.3.1, nothing
partial, serving resumes). The spool directory is on a 32 MiB tmpfs
(mounted by this test, so it runs as root; the store keeps an 8 MiB
reserve for the state changes of a full disk and accepts again with
twice that free) and the next hop is down, so every message stays
queued.

1. Messages of 256 KiB on one connection until one is refused: the
   refusal is 452 4.3.1 (not a 250, not a dropped connection, not 451).
2. Nothing partial: `tern queue list --json` holds exactly the messages
   answered 250 (by the ids in the replies), sqlite3 finds queue.db
   intact (integrity_check: ok) and no chunk without its message.
3. The same session goes on (RSET, NOOP answered).
4. The next hop comes up (an aiosmtpd sink on its port) and the queue
   drains, every message delivered once: a new message gets 250 again,
   on the same connection and on a new one.
"""

import os
import random
import re
import smtplib
import subprocess
import time

import qtest as h

QUEUED_RE = re.compile(rb"^2\.0\.0 Ok: queued as ([0-9A-Z]{1,23})$")
SIZE = 256 * 1024


def mount_tmpfs(path, size):
    h.check(os.geteuid() == 0, "the disk-full test mounts a tmpfs and "
            "must run as root (euid %d)" % os.geteuid())
    h.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % size,
           "tmpfs", path], timeout=20)


def umount(path):
    subprocess.run(["umount", path], timeout=20, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    if os.path.ismount(path):
        subprocess.run(["umount", "-l", path], timeout=20)


def send_on(c, mid, rng):
    """One message on an open smtplib session: (code, reply)."""
    m = h.make_message(mid, SIZE, rng)
    try:
        c.rset()
        code, r = c.mail("s@example.net")
        h.check(code == 250, "MAIL: %d %r" % (code, r))
        code, r = c.rcpt("r@example.org")
        h.check(code == 250, "RCPT: %d %r" % (code, r))
        return c.data(m)
    except smtplib.SMTPServerDisconnected as e:
        h.fail("%s: the connection was dropped (%s) instead of a reply"
               % (mid, e))


def test_disk_full():
    rng = random.Random(703)
    d = h.tmpdir("tern-queue-full-")
    mnt = os.path.join(d, "mnt")
    os.mkdir(mnt)
    mount_tmpfs(mnt, "32m")
    srv = None
    sink = None
    try:
        (down,) = h.free_ports(1)  # nothing listens: every message stays
        sink = h.AioSink(port=down)
        conf = h.queue_conf(d, down, qdir=os.path.join(mnt, "queue"),
                            retry_min="1s", retry_max="1s")
        srv = h.Serve(["-c", conf.path], name="disk-full").start()
        ids, refusal = [], None
        with smtplib.SMTP(h.HOST, conf.port, timeout=60) as c:
            c.ehlo("full.client")
            for i in range(400):
                code, r = send_on(c, "full-%d@queue.e2e" % i, rng)
                if code == 250:
                    m = QUEUED_RE.match(r)
                    h.check(m, "250 without a queue id: %r" % r)
                    ids.append(m.group(1).decode())
                    continue
                refusal = (code, r)
                break
            print("  %d messages of %d KiB queued, then %r"
                  % (len(ids), SIZE // 1024, refusal))
            h.check(refusal, "400 x 256 KiB fit in a 32 MiB tmpfs?")
            h.check(ids, "nothing was queued before the disk filled")
            h.check(refusal[0] == 452 and refusal[1].startswith(b"4.3.1"),
                    "disk full answered %d %r, expected 452 4.3.1"
                    % refusal)
            # a second try while still full: the same answer
            code, r = send_on(c, "full-again@queue.e2e", rng)
            h.check(code == 452, "second message on a full disk: %d %r"
                    % (code, r))
            h.check(c.noop()[0] == 250, "NOOP after 452")
            # the operator reads it in the log: one line, no queue id
            ln = srv.wait_log("event=queue-full")[0]
            h.check("id=" not in ln and "disk full" in ln,
                    "disk-full line: %s" % ln)

            # nothing partial
            q = h.queue_json(conf)
            got = sorted(m["id"] for m in q)
            h.check(got == sorted(ids), "queue holds %d messages %r; the "
                    "client got 250 for %d: %r"
                    % (len(got), got, len(ids), sorted(ids)))
            ok = h.sqlite_integrity(conf.qdir)
            h.check(ok == "ok", "sqlite3 integrity_check: %r" % ok)

            def no_orphans():
                return h.sqlite_query(
                    conf.qdir, "SELECT count(*) FROM chunk WHERE msg NOT IN "
                    "(SELECT id FROM msg);") == "0"
            h.wait_for(no_orphans, 10, "no chunk without its message in "
                       "queue.db (the refused message's chunks removed)",
                       interval=0.2)
            df = os.statvfs(mnt)
            print("  tmpfs: %d KiB free" % (df.f_bavail * df.f_frsize // 1024))

            # the next hop comes back, the queue drains: serving resumes
            sink.start()
            h.wait_queue_empty(conf, 60, "the full queue to drain")
            got = sorted(h.msgid_of(m) for _, _, m in sink.messages())
            h.check(len(got) == len(ids) and len(set(got)) == len(ids),
                    "the next hop got %d messages (%d distinct) for %d "
                    "queued" % (len(got), len(set(got)), len(ids)))
            tries = 0
            t0 = time.monotonic()
            while True:
                tries += 1
                code, r = send_on(c, "after-%d@queue.e2e" % tries, rng)
                if code == 250 or time.monotonic() - t0 > 5:
                    break
                time.sleep(0.5)
            print("  after the queue drained: %d %r (try %d)"
                  % (code, r, tries))
            h.check(code == 250, "after the queue drained: %d %r"
                    % (code, r))
            srv.wait_log("event=queue-resumed")
        with smtplib.SMTP(h.HOST, conf.port, timeout=60) as c:
            c.ehlo("full.client")
            code, r = send_on(c, "after-new@queue.e2e", rng)
            h.check(code == 250, "new session after freeing: %d %r"
                    % (code, r))
        h.wait_queue_empty(conf, 30, "the 2 new messages to be delivered")
        h.check(len(sink.messages()) == len(ids) + 2, "next hop: %d messages"
                % len(sink.messages()))
        h.check(h.sqlite_integrity(conf.qdir) == "ok", "integrity at the end")
        srv.stop()
        sink.stop()
    except BaseException:
        if srv is not None:
            print("disk-full log (last lines):\n%s" % srv.log())
        raise
    finally:
        if srv is not None:
            srv.cleanup()
        if sink is not None:
            sink.stop()
        umount(mnt)


if __name__ == "__main__":
    h.main([test_disk_full])
