#!/usr/bin/env python3
"""[dkim NAME] users (docs/configuration.md "[dkim NAME]"): a key with
`users` signs only for the authenticated users it names; one without
signs for every authenticated user.

Keys: s1 (RSA, example.org, every user), b1 (RSA, bank.example,
users = alice). alice's From: ceo@bank.example is signed d=bank.example
and verifies; bob's is queued unsigned (dkim=none); bob's From:
bob@example.org is still signed with s1. A `users` value with a ':' is
refused by `tern serve --check`, naming the line.
"""

import os
import subprocess

import qtest as h
import test_serve_dkim as t
from test_serve_dkim_bodies import Client

CONF_DKIM = """[dkim s1]
domain = example.org
selector = s1
key = {s1}

[dkim b1]
domain = bank.example
selector = b1
key = {b1}
users = alice  carol
"""


def msg(frm):
    return ("From: <%s>\r\nTo: rcpt@example.net\r\nSubject: who\r\n\r\n"
            "may sign?\r\n" % frm).encode()


def test_users_restrict_keys():
    dd = h.tmpdir("tern-dkim-users-")
    users = h.write(os.path.join(dd, "users"),
                    h.passwd_line("alice", "alice pass") + "\n"
                    + h.passwd_line("bob", "bob pass") + "\n")
    s1 = t.keypair(dd, "rsa", "s1")
    b1 = t.keypair(dd, "rsa", "b1")
    port, = h.free_ports(1)
    sink = h.AioSink().start()
    conf = h.write(os.path.join(dd, "tern.ini"), t.CONF.format(
        port=port, users=users, hop=sink.port,
        qdir=os.path.join(dd, "queue"),
        dkim=CONF_DKIM.format(s1=s1, b1=b1)))
    try:
        with h.Serve(["-c", conf], name="dkim-users") as srv:
            a = Client(port)
            qid = a.bdat(msg("ceo@bank.example"), frm=b"ceo@bank.example")
            (ln,) = srv.wait_log("id=%s event=queued" % qid)
            h.check('dkim="d=bank.example,s=b1"' in ln
                    or "dkim=d=bank.example,s=b1" in ln, "alice: %r" % ln)
            t.verify_all(t.arrived(sink, 1), ["b1"])
            a.close()
            b = Client(port, b"bob", b"bob pass")
            qid = b.bdat(msg("ceo@bank.example"), frm=b"ceo@bank.example")
            (ln,) = srv.wait_log("id=%s event=queued" % qid)
            h.check("dkim=none" in ln, "bob as bank.example: %r" % ln)
            h.check(b"DKIM-Signature" not in t.arrived(sink, 2),
                    "bob's bank.example mail signed")
            qid = b.bdat(msg("bob@example.org"), frm=b"bob@example.org")
            (ln,) = srv.wait_log("id=%s event=queued" % qid)
            h.check('s=s1' in ln, "bob as example.org: %r" % ln)
            t.verify_all(t.arrived(sink, 3), ["s1"])
            b.close()
    finally:
        sink.stop()
    bad = h.write(os.path.join(dd, "bad.ini"), open(conf).read().replace(
        "users = alice  carol", "users = alice:bob"))
    p = subprocess.run([h.tern_bin(), "serve", "--check", "-c", bad],
                       stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=30)
    err = p.stderr.decode()
    h.check(p.returncode != 0 and "bad.ini:" in err and "users" in err,
            "--check: %d %r" % (p.returncode, err))


if __name__ == "__main__":
    h.main([test_users_restrict_keys])
