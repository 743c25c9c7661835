#!/usr/bin/env python3
"""Per-recipient Maildirs: maildir = DIR/%d/%u. One message to two
recipients in different domains lands byte-exact in DIR/a.example/u1/new
and DIR/b.example/u2/new; a recipient that tries to climb out of DIR
(a quoted local part with "../") stays inside DIR."""

import os
import random
import smtplib

import e2e as h

CONF = """[listener mx]
url = smtp://127.0.0.1:{port}

[domains]
accept = a.example b.example

[delivery]
maildir = {base}/%d/%u
"""


def test_two_domains():
    d = h.tmpdir(prefix="tern-e2e-tpl-")
    base = os.path.join(d, "store")
    conf = h.write(os.path.join(d, "tern.ini"),
                   CONF.format(port=h.free_ports(1)[0], base=base))
    rng = random.Random(7)
    with h.Serve(["-c", conf], name="template") as srv:
        m = h.make_message("tpl@e2e", 7000, rng)
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as c:
            refused = c.sendmail("s@example.net",
                                 ["u1@a.example", "u2@b.example"], m)
            h.check(refused == {}, "refused %r" % refused)
            # the same Maildir twice in one message: stored once
            m2 = h.make_message("tpl2@e2e", 2000, rng)
            c.sendmail("s@example.net", ["u1@a.example", "U1@A.EXAMPLE"], m2)
        for box in ("a.example/u1", "b.example/u2"):
            md = os.path.join(base, box)
            files = h.maildir_files(md)
            h.check(files, "nothing in %s/new" % md)
            bodies = [h.split_trace(h.read(p), p)[1] for p in files]
            h.check(m in bodies, "message not byte-exact in %s/new" % md)
            h.check(h.maildir_files(md, "tmp") == [], "files in %s/tmp" % md)
        u1 = [h.split_trace(h.read(p), p)[1]
              for p in h.maildir_files(os.path.join(base, "a.example/u1"))]
        h.check(sorted(u1) == sorted([m, m2]),
                "a.example/u1 holds %d messages, expected 2 (the second "
                "message once)" % len(u1))
        lines = srv.wait_log("event=message", count=2)
        h.check("to=<u1@a.example>,<u2@b.example>" in lines[0], lines[0])


def test_no_escape_from_base():
    d = h.tmpdir(prefix="tern-e2e-tpl-")
    base = os.path.join(d, "store")
    conf = h.write(os.path.join(d, "tern.ini"),
                   CONF.format(port=h.free_ports(1)[0], base=base))
    rng = random.Random(8)
    with h.Serve(["-c", conf], name="template-escape") as srv:
        r = h.Raw("127.0.0.1", srv.port, timeout=10)
        try:
            r.reply()
            m = h.make_message("escape@e2e", 500, rng)
            code, lines = h.transaction(r, "s@example.net",
                                        ['"../../../escaped"@a.example'], m)
            h.check(code == 250, "DATA: %d %r" % (code, lines))
            r.cmd("QUIT", 221)
        finally:
            r.close()
        found = []
        for root, dirs, files in os.walk(d):
            for f in files:
                p = os.path.join(root, f)
                if h.read(p).endswith(m):
                    found.append(p)
        h.check(len(found) == 1 and found[0].startswith(base + "/a.example/"),
                "message stored at %r, expected under %s/a.example/"
                % (found, base))


if __name__ == "__main__":
    h.main([test_two_domains, test_no_escape_from_base])
