#!/usr/bin/env python3
"""`tern send --user` sends credentials only over a verified channel
(issue 8, item 10).

Without explicit consent, a password never goes over plaintext or over
TLS whose certificate did not verify, and the server never sees an AUTH
command. --insecure-auth
(any channel) and --no-verify (TLS without verification) are the explicit
consent; --ca-file with the test CA verifies and sends.

Exit codes: 69 (EX_UNAVAILABLE, as msmtp's for the same refusal) when
the credentials are withheld on a channel tern send would otherwise use
(opportunistic smtp://); 78 (EX_CONFIG) where verified TLS was required
anyway (--starttls, smtps://) and the certificate failed."""

import os

import harness as h
from sendpeer import Peer, cert_pair
from test_send import send, expect_rc

MSG = b"Subject: auth\n\nx\n"
PASSWORD = "pw-s3cret-7781"


def pwfile():
    d = h.tmpdir()
    p = os.path.join(d, "pw")
    with open(p, "w") as f:
        f.write(PASSWORD + "\n")
    return p


def run(peer, extra):
    return send(["--server", peer.url, "--timeout", "10", "--user",
                 "alice", "--password-file", pwfile()] + extra +
                ["bob@example.org"], stdin=MSG)


def no_auth_seen(peer, what):
    cmds = peer.commands()
    h.check(not any(c.split(" ")[-1].upper().startswith("AUTH") or
                    c.upper().startswith("AUTH") for c in cmds),
            "%s: an AUTH command reached the server: %r" % (what, cmds))
    h.check(not any(c.upper().startswith(("MAIL", "TLS MAIL"))
                    for c in cmds),
            "%s: a message was sent: %r" % (what, cmds))


def auth_seen(peer, what, tls):
    cmds = peer.commands()
    want = "TLS AUTH PLAIN" if tls else "AUTH PLAIN"
    h.check(any(c.startswith(want) for c in cmds),
            "%s: no %r in %r" % (what, want, cmds))
    h.check(any(c.startswith("TLS MAIL" if tls else "MAIL") for c in cmds),
            "%s: no message: %r" % (what, cmds))


def test_starttls_unverified_refused():
    """The reproducer: smtp:// (opportunistic) to a self-signed server."""
    with Peer(tls=cert_pair("self"), auth=True) as p:
        rc, _, err = run(p, [])
        expect_rc(rc, err, 69, "unverified STARTTLS with --user")
        h.check(err == "tern send: not sending credentials to 127.0.0.1:%d: "
                "its TLS certificate is not verified (self-signed "
                "certificate); trust its CA with --ca-file, or allow it "
                "with --no-verify or --insecure-auth\n" % p.port,
                "stderr: %r" % err)
        h.check("STARTTLS" in p.commands(), "no STARTTLS: %r" % p.commands())
        no_auth_seen(p, "default")
    # also with --starttls (STARTTLS required)
    with Peer(tls=cert_pair("self"), auth=True) as p:
        rc, _, err = run(p, ["--starttls"])
        expect_rc(rc, err, 78, "--starttls, unverified, --user")
        h.check(err == "tern send: TLS certificate verification failed: "
                "self-signed certificate\n", "stderr: %r" % err)
        no_auth_seen(p, "--starttls")


def test_starttls_unverified_with_consent():
    for flag in ("--insecure-auth", "--no-verify"):
        with Peer(tls=cert_pair("self"), auth=True) as p:
            rc, _, err = run(p, [flag])
            expect_rc(rc, err, 0, "unverified STARTTLS with " + flag)
            auth_seen(p, flag, tls=True)


def test_starttls_verified_with_ca_file():
    with Peer(tls=cert_pair("server"), auth=True) as p:
        rc, _, err = run(p, ["--ca-file", h.cert("ca.pem")])
        expect_rc(rc, err, 0, "verified STARTTLS")
        h.check(err == "", "stderr: %r" % err)
        auth_seen(p, "--ca-file", tls=True)


def test_plaintext_refused():
    """No STARTTLS offered, AUTH offered in the clear."""
    with Peer(auth=True) as p:
        rc, _, err = run(p, [])
        expect_rc(rc, err, 69, "plaintext AUTH")
        h.check(err == "tern send: not sending credentials to 127.0.0.1:%d "
                "without TLS: the server does not offer STARTTLS "
                "(--insecure-auth allows it)\n" % p.port, "stderr: %r" % err)
        no_auth_seen(p, "plaintext")
    # --no-verify is about certificates: it does not allow plaintext
    with Peer(auth=True) as p:
        rc, _, err = run(p, ["--no-verify"])
        expect_rc(rc, err, 69, "plaintext AUTH with --no-verify")
        no_auth_seen(p, "plaintext --no-verify")
    with Peer(auth=True) as p:
        rc, _, err = run(p, ["--insecure-auth"])
        expect_rc(rc, err, 0, "plaintext AUTH with --insecure-auth")
        auth_seen(p, "plaintext --insecure-auth", tls=False)


def test_smtps():
    with Peer(tls=cert_pair("self"), auth=True, implicit=True) as p:
        rc, _, err = run(p, [])
        expect_rc(rc, err, 78, "smtps unverified")
        h.check(err == "tern send: TLS certificate verification failed: "
                "self-signed certificate\n", "stderr: %r" % err)
        h.check(p.commands() == [], "commands reached the server: %r"
                % p.commands())
    with Peer(tls=cert_pair("self"), auth=True, implicit=True) as p:
        rc, _, err = run(p, ["--no-verify"])
        expect_rc(rc, err, 0, "smtps --no-verify")
        auth_seen(p, "smtps --no-verify", tls=True)
    with Peer(tls=cert_pair("server"), auth=True, implicit=True) as p:
        rc, _, err = run(p, ["--ca-file", h.cert("ca.pem")])
        expect_rc(rc, err, 0, "smtps verified")
        auth_seen(p, "smtps --ca-file", tls=True)


def test_without_user_unchanged():
    """Without --user opportunistic TLS still goes on unverified."""
    with Peer(tls=cert_pair("self")) as p:
        rc, _, err = send(["--server", p.url, "--timeout", "10",
                           "bob@example.org"], stdin=MSG)
        expect_rc(rc, err, 0, "opportunistic without --user")
        h.check(any(c.startswith("TLS MAIL") for c in p.commands()),
                repr(p.commands()))


if __name__ == "__main__":
    h.main([test_starttls_unverified_refused,
            test_starttls_unverified_with_consent,
            test_starttls_verified_with_ca_file, test_plaintext_refused,
            test_smtps, test_without_user_unchanged])
