#!/usr/bin/env python3
"""Disk full: the Maildir on a 1 MiB tmpfs (mounted by this test, so it
runs as root). Messages are sent until the disk fills: the client gets
452 4.3.1, nothing partial appears in new/ (every file there is a
complete message), tmp/ holds nothing; after files are deleted the same
daemon takes the next message (250). Both small messages (one write) and
large ones (many 64 KiB writes) are tried."""

import os
import random
import smtplib
import subprocess

import e2e as h


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


def fill_and_recover(msg_size, label):
    d = h.tmpdir(prefix="tern-e2e-full-")
    mnt = os.path.join(d, "mnt")
    os.mkdir(mnt)
    mount_tmpfs(mnt, "1m")
    srv = None
    try:
        md = os.path.join(mnt, "md")
        srv = h.Serve(["--listen", "smtp://127.0.0.1:0", "--maildir", md],
                      name="disk-full-" + label).start()
        rng = random.Random(msg_size)
        sent = {}
        refusals = []
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as c:
            c.ehlo("full.client")
            for i in range(400):
                mid = "full-%s-%d@e2e" % (label, i)
                m = h.make_message(mid, msg_size, rng)
                sent[mid] = m
                c.mail("s@example.net")
                c.rcpt("r@example.org")
                code, msg = c.data(m)
                if code != 250:
                    refusals.append((code, msg))
                    if len(refusals) >= 3:
                        break
            h.check(refusals, "%s: 400 messages of %d bytes fit in 1 MiB?"
                    % (label, msg_size))
            for code, msg in refusals:
                h.check(code == 452 and msg.startswith(b"4.3.1"),
                        "%s: disk full answered %d %r, expected 452 4.3.1"
                        % (label, code, msg))
            stored = h.maildir_files(md)
            h.check(stored, "%s: nothing stored before the disk filled"
                    % label)
            for p in stored:
                trace, rest = h.split_trace(h.read(p), p)
                mid = h.message_id(rest)
                h.check(mid in sent, "%s: %s is not a message sent" % (label, p))
                h.assert_bytes_equal(rest, sent[mid], p)
            h.check(h.maildir_files(md, "tmp") == [],
                    "%s: files left in tmp/ after 452: %r"
                    % (label, h.maildir_files(md, "tmp")))
            # free space: the same session, then a new one, are served
            for p in stored:
                os.unlink(p)
            m = h.make_message("after-%s@e2e" % label, msg_size, rng)
            c.mail("s@example.net")
            c.rcpt("r@example.org")
            code, msg = c.data(m)
            h.check(code == 250, "%s: after freeing space: %d %r"
                    % (label, code, msg))
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as c:
            m2 = h.make_message("after2-%s@e2e" % label, 1000, rng)
            c.sendmail("s@example.net", ["r@example.org"], m2)
        bodies = sorted(h.split_trace(h.read(p), p)[1]
                        for p in h.maildir_files(md))
        h.check(bodies == sorted([m, m2]), "%s: after recovery new/ holds "
                "%d files, expected the 2 messages" % (label, len(bodies)))
        srv.wait_log("status=452")
        lines = srv.grep("status=452")
        h.check(lines, "%s: no log line with status=452" % label)
        srv.stop()
    finally:
        if srv:
            srv.cleanup()
        umount(mnt)


def test_small_messages():
    fill_and_recover(20 * 1024, "20k")


def test_large_messages():
    fill_and_recover(300 * 1024, "300k")


if __name__ == "__main__":
    h.main([test_small_messages, test_large_messages])
