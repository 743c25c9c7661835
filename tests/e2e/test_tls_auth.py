#!/usr/bin/env python3
"""A configuration with a submission listener (STARTTLS, AUTH required)
and an MX listener (no AUTH): smtplib STARTTLS + AUTH PLAIN and LOGIN,
swaks and curl deliver; MAIL before AUTH is 530 5.7.0; AUTH is not
offered before STARTTLS; a wrong password is 535."""

import base64
import os
import random
import smtplib
import ssl

import e2e as h

CONF = """[server]
hostname = mx.e2e.example

[listener submission]
url = smtp://127.0.0.1:{p1}
starttls = yes
auth = required

[listener mx]
url = smtp://127.0.0.1:{p2}
starttls = yes

[tls]
cert = {cert}
key = {key}

[auth]
users = {users}

[domains]
accept = example.org

[delivery]
maildir = {maildir}
"""

PASSWORD = "s3cret pass:word"


def setup():
    d = h.tmpdir(prefix="tern-e2e-auth-")
    users = os.path.join(d, "users")
    h.write(users, "# made by tern passwd\n" + h.passwd_line("alice", PASSWORD)
            + "\n" + h.passwd_line("bob", "other") + "\n")
    p1, p2 = h.free_ports(2)
    conf = h.write(os.path.join(d, "tern.ini"), CONF.format(
        p1=p1, p2=p2,
        cert=h.cert("server.pem"), key=h.cert("server.key"), users=users,
        maildir=os.path.join(d, "mail")))
    return d, conf


def tls_ctx():
    ctx = ssl.create_default_context(cafile=h.cert("ca.pem"))
    return ctx


def stored(d):
    return {p: h.split_trace(h.read(p), p)
            for p in h.maildir_files(os.path.join(d, "mail"))}


def find(d, m):
    for p, (trace, rest) in stored(d).items():
        if rest == m:
            return p, trace
    h.fail("message not stored byte-exact in %s/mail/new (have %d files)"
           % (d, len(stored(d))))


def test_submission_smtplib():
    d, conf = setup()
    rng = random.Random(3)
    with h.Serve(["-c", conf], name="auth") as srv:
        sub, mx = srv.ports
        for mech in ("PLAIN", "LOGIN"):
            with smtplib.SMTP("127.0.0.1", sub, timeout=10) as c:
                c.ehlo("client.example")
                h.check(not c.has_extn("auth"),
                        "AUTH offered before STARTTLS: %r" % c.esmtp_features)
                h.check(c.has_extn("starttls"), "no STARTTLS offered")
                code, msg = c.mail("alice@example.org")
                h.check(code == 530 and msg.startswith(b"5.7.0"),
                        "MAIL before AUTH (no TLS): %d %r" % (code, msg))
                code, msg = c.docmd("AUTH", "PLAIN " + base64.b64encode(
                    b"\0alice\0" + PASSWORD.encode()).decode())
                h.check(500 <= code < 600,
                        "AUTH before STARTTLS answered %d %r" % (code, msg))
                c.starttls(context=tls_ctx())
                c.ehlo("client.example")
                h.check(c.has_extn("auth"), "no AUTH after STARTTLS")
                offered = c.esmtp_features["auth"].upper().split()
                h.check("PLAIN" in offered and "LOGIN" in offered,
                        "AUTH offers %r" % offered)
                code, msg = c.mail("alice@example.org")
                h.check(code == 530 and msg.startswith(b"5.7.0"),
                        "MAIL before AUTH (TLS): %d %r" % (code, msg))
                c.rset()
                c.user, c.password = "alice", "wrong"
                try:
                    c.auth(mech, getattr(c, "auth_" + mech.lower()),
                           initial_response_ok=(mech == "PLAIN"))
                    h.fail("AUTH %s with a wrong password succeeded" % mech)
                except smtplib.SMTPAuthenticationError as e:
                    h.check(e.smtp_code == 535, "wrong password: %r" % (e,))
                c.user, c.password = "alice", PASSWORD
                code, msg = c.auth(mech, getattr(c, "auth_" + mech.lower()),
                                   initial_response_ok=(mech == "PLAIN"))
                h.check(code == 235, "AUTH %s: %d %r" % (mech, code, msg))
                m = h.make_message("auth-%s@e2e" % mech, 4000, rng)
                refused = c.sendmail("alice@example.org",
                                     ["someone@example.org"], m)
                h.check(refused == {}, "refused %r" % refused)
            p, trace = find(d, m)
            h.check(b"with ESMTPSA" in trace,
                    "Received does not say ESMTPSA: %r" % trace)
        closes = srv.wait_log("event=close", count=2)
        h.check(any("auth=alice" in ln and "tls=TLS" in ln for ln in closes),
                "no close line with tls and auth=alice: %r" % closes)

        # the MX listener: mail for accepted domains, no AUTH needed
        with smtplib.SMTP("127.0.0.1", mx, timeout=10) as c:
            c.ehlo("mx.client")
            c.starttls(context=tls_ctx())
            c.ehlo("mx.client")
            m = h.make_message("mx@e2e", 2000, rng)
            c.sendmail("ext@example.net", ["bob@example.org"], m)
        p, trace = find(d, m)
        h.check(b"with ESMTPS " in trace, "Received: %r" % trace)


def test_mx_listener_offers_no_auth():
    """[listener mx] has auth = no (the default): AUTH is not offered
    there, neither before nor after STARTTLS, and not accepted."""
    d, conf = setup()
    with h.Serve(["-c", conf], name="mx-noauth") as srv:
        mx = srv.ports[1]
        with smtplib.SMTP("127.0.0.1", mx, timeout=10) as c:
            c.ehlo("mx.client")
            h.check(not c.has_extn("auth"), "AUTH offered on mx (plain)")
            c.starttls(context=tls_ctx())
            c.ehlo("mx.client")
            offered = c.has_extn("auth")
            code, msg = c.docmd("AUTH", "PLAIN " + base64.b64encode(
                b"\0alice\0" + PASSWORD.encode()).decode())
            h.check(not offered and code != 235,
                    "the mx listener has auth = no, yet after STARTTLS AUTH "
                    "is offered (%r) and AUTH PLAIN with a valid password "
                    "is answered %d %r"
                    % (c.esmtp_features.get("auth"), code, msg))


def test_swaks_and_curl():
    swaks = h.require_tool("swaks")
    curl = h.require_tool("curl")
    d, conf = setup()
    rng = random.Random(4)
    with h.Serve(["-c", conf], name="auth-tools") as srv:
        sub = srv.ports[0]
        m = h.make_message("swaks@e2e", 3000, rng)
        body = os.path.join(d, "swaks.eml")
        with open(body, "wb") as f:
            f.write(m[:-2])  # swaks ends the data with CRLF . CRLF itself
        p = h.run([swaks, "--server", "127.0.0.1", "--port", str(sub),
                   "--tls", "--tls-ca-path", h.cert("ca.pem"),
                   "--auth", "LOGIN", "--auth-user", "alice",
                   "--auth-password", PASSWORD, "--from", "alice@example.org",
                   "--to", "x@example.org", "--data", "@" + body,
                   "--ehlo", "swaks.client", "--timeout", "10"], timeout=60)
        out = p.stdout.decode("utf-8", "replace")
        h.check("235 " in out and "250 2.0.0" in out,
                "swaks transcript lacks 235/250:\n%s" % out)
        find(d, m)

        m = h.make_message("curl@e2e", 6000, rng)
        body = os.path.join(d, "curl.eml")
        with open(body, "wb") as f:
            f.write(m)
        h.run([curl, "--silent", "--show-error", "--max-time", "30",
               "--url", "smtp://127.0.0.1:%d" % sub, "--ssl-reqd",
               "--cacert", h.cert("ca.pem"), "--login-options", "AUTH=PLAIN",
               "--user", "bob:other", "--mail-from", "bob@example.org",
               "--mail-rcpt", "y@example.org", "--upload-file", body],
              timeout=60)
        find(d, m)

        # curl without TLS: AUTH is not offered, so the login must fail
        p = h.run([curl, "--silent", "--max-time", "30",
                   "--url", "smtp://127.0.0.1:%d" % sub,
                   "--user", "bob:other", "--mail-from", "bob@example.org",
                   "--mail-rcpt", "y@example.org", "--upload-file", body],
                  timeout=60, check_rc=False)
        h.check(p.returncode != 0, "curl AUTH without TLS succeeded")
        h.check(len(h.maildir_files(os.path.join(d, "mail"))) == 2,
                "unexpected message stored")


if __name__ == "__main__":
    h.main([test_submission_smtplib, test_mx_listener_offers_no_auth,
            test_swaks_and_curl])
