#!/usr/bin/env python3
"""No open relay: [domains] accept = example.org. Unauthenticated RCPT to
a foreign domain is 554/550 5.7.1; to example.org accepted (any case, but
not a sub-domain); an authenticated client may relay with
relay_authenticated = yes and may not with relay_authenticated = no."""

import os
import random
import smtplib

import e2e as h

CONF = """[server]
hostname = relay.e2e.example

[listener mx]
url = smtp://127.0.0.1:{p1}

[listener submission]
url = smtp://127.0.0.1:{p2}
auth = yes
insecure_auth = yes

[auth]
users = {users}

[domains]
accept = example.org
relay_authenticated = {relay}

[delivery]
maildir = {maildir}
"""


def setup(relay):
    d = h.tmpdir(prefix="tern-e2e-relay-")
    users = h.write(os.path.join(d, "users"),
                    h.passwd_line("carol", "pw-carol") + "\n")
    p1, p2 = h.free_ports(2)
    conf = h.write(os.path.join(d, "tern.ini"), CONF.format(
        p1=p1, p2=p2, users=users, relay=relay,
        maildir=os.path.join(d, "mail")))
    return d, conf


def relay_refused(code, msg, what):
    h.check(code in (550, 554) and msg.startswith(b"5.7.1"),
            "%s: expected 554/550 5.7.1, got %d %r" % (what, code, msg))


def test_unauthenticated():
    d, conf = setup("yes")
    rng = random.Random(5)
    with h.Serve(["-c", conf], name="relay") as srv:
        for port in srv.ports:  # both listeners, not logged in
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
                c.ehlo("anon.example")
                h.check(c.mail("x@sender.example")[0] == 250, "MAIL")
                relay_refused(*c.rcpt("user@foreign.example"),
                              what="RCPT user@foreign.example (port %d)" % port)
                relay_refused(*c.rcpt("user@sub.example.org"),
                              what="RCPT user@sub.example.org")
                relay_refused(*c.rcpt("user@example.org.foreign.example"),
                              what="RCPT user@example.org.foreign.example")
                code, msg = c.rcpt("user@example.org")
                h.check(code == 250, "RCPT user@example.org: %d %r"
                        % (code, msg))
                code, msg = c.rcpt("Other@EXAMPLE.Org")
                h.check(code == 250, "RCPT Other@EXAMPLE.Org: %d %r"
                        % (code, msg))
                code, msg = c.rcpt("postmaster")
                h.check(code == 250, "RCPT <postmaster>: %d %r" % (code, msg))
                m = h.make_message("relay-%d@e2e" % port, 1500, rng)
                code, msg = c.data(m)
                h.check(code == 250, "DATA: %d %r" % (code, msg))
        files = h.maildir_files(os.path.join(d, "mail"))
        h.check(len(files) == 2, "expected 2 stored messages: %r" % files)
        # the log line is written before the 250, but read by another
        # thread: wait for it rather than race it
        srv.wait_log("event=message", count=2)
        lines = srv.grep("event=message")
        h.check(len(lines) == 2 and all("foreign" not in ln for ln in lines),
                "log: %r" % lines)


def authenticated(relay):
    d, conf = setup(relay)
    rng = random.Random(6)
    with h.Serve(["-c", conf], name="relay-auth-" + relay) as srv:
        with smtplib.SMTP("127.0.0.1", srv.ports[1], timeout=10) as c:
            c.ehlo("auth.example")
            relay_refused(*(c.mail("carol@example.org") and
                            c.rcpt("user@foreign.example")),
                          what="RCPT to foreign before AUTH")
            c.rset()
            c.login("carol", "pw-carol")
            h.check(c.mail("carol@example.org")[0] == 250, "MAIL")
            code, msg = c.rcpt("user@foreign.example")
            if relay == "yes":
                h.check(code == 250, "authenticated RCPT to a foreign domain "
                        "with relay_authenticated = yes: %d %r" % (code, msg))
            else:
                relay_refused(code, msg, "authenticated RCPT to a foreign "
                              "domain with relay_authenticated = no")
            h.check(c.rcpt("user@example.org")[0] == 250, "RCPT local")
            m = h.make_message("auth-relay-%s@e2e" % relay, 1500, rng)
            code, msg = c.data(m)
            h.check(code == 250, "DATA: %d %r" % (code, msg))
        (line,) = srv.wait_log("event=message")
        want = ("to=<user@foreign.example>,<user@example.org>"
                if relay == "yes" else "to=<user@example.org> ")
        h.check(want in line, "log line %r lacks %r" % (line, want))
        (p,) = h.maildir_files(os.path.join(d, "mail"))
        h.assert_bytes_equal(h.split_trace(h.read(p))[1], m)


def test_authenticated_relay_yes():
    authenticated("yes")


def test_authenticated_relay_no():
    authenticated("no")


if __name__ == "__main__":
    h.main([test_unauthenticated, test_authenticated_relay_yes,
            test_authenticated_relay_no])
