#!/usr/bin/env python3
"""`tern send --mx DOMAIN` (issue 11 item 6: the client library and
`tern send` target a domain with the same resolution and TLS policy), in
the test world. No --resolver: tern send asks the namespace's
/etc/resolv.conf (the test DNS), with the world's trust anchor.

1. DANE (signed zone, correct TLSA): exit 0, the MX host got the message
   over TLS.
2. DANE with a wrong TLSA record: a failure exit (not 0), and the MX
   host saw no MAIL.
3. an unsigned domain whose MX offers no STARTTLS: delivered in plain
   text (opportunistic), exit 0.
4. --requiretls to that host: a failure exit naming 5.7.30, nothing sent.
"""

import subprocess

import e2e as h
import world as w
from world import check

W = None
S = {}


@w.once
def world():
    global W
    W = w.World()
    good = W.cert("mx.sd-ok.example")
    other = W.cert("other.example")
    a = {k: W.addr() for k in ("ok", "bad", "plain")}
    W.zone("sd-ok.example", {"@": "MX 10 mx", "mx": "A " + a["ok"],
                             "_25._tcp.mx": "TLSA " + W.tlsa(good[0])},
           signed=True)
    W.zone("sd-bad.example", {"@": "MX 10 mx", "mx": "A " + a["bad"],
                              "_25._tcp.mx": "TLSA " + W.tlsa(other[0])},
           signed=True)
    W.zone("sd-plain.example", {"@": "MX 10 mx", "mx": "A " + a["plain"]})
    W.start_dns()
    S["ok"] = W.sink(a["ok"], tls=good)
    S["bad"] = W.sink(a["bad"], tls=W.cert("mx.sd-bad.example"))
    S["plain"] = W.sink(a["plain"])
    return W


def tern_send(domain, rcpt, extra=()):
    frm = "sender@" + w.LOCAL_DOMAIN
    cmd = [h.tern_bin(), "send", "--mx", domain, "--trust-anchor",
           W.trust_anchor, "--timeout", "10", "-f", frm] + list(extra) + \
        [rcpt]
    p = subprocess.run(cmd, input=w.message(frm, rcpt),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=60)
    return p.returncode, (p.stdout + p.stderr).decode(errors="replace")


def test_dane():
    world()
    rc, out = tern_send("sd-ok.example", "rcpt@sd-ok.example")
    check(rc == 0, "tern send --mx (DANE) exited %d: %s" % (rc, out))
    m = S["ok"].wait(1, 5)[0]
    check(m.tls and m.rcpts == ["rcpt@sd-ok.example"], "%r" % m)


def test_dane_mismatch():
    world()
    rc, out = tern_send("sd-bad.example", "rcpt@sd-bad.example")
    check(rc != 0, "tern send --mx delivered despite a TLSA mismatch: %s"
          % out)
    check(S["bad"].mails == [] and S["bad"].snapshot() == [],
          "the MX saw MAIL: %r" % S["bad"].mails)
    check(S["bad"].connections >= 1, "never connected (rc %d): %s"
          % (rc, out))


def test_opportunistic_plain():
    world()
    rc, out = tern_send("sd-plain.example", "rcpt@sd-plain.example")
    check(rc == 0, "tern send --mx exited %d: %s" % (rc, out))
    m = S["plain"].wait(1, 5)[0]
    check(not m.tls, "%r" % m)


def test_requiretls_refused():
    world()
    n = len(S["plain"].mails)
    rc, out = tern_send("sd-plain.example", "r2@sd-plain.example",
                        ["--requiretls"])
    check(rc != 0, "--requiretls to a host without TLS exited 0: %s" % out)
    check("5.7.30" in out, "no 5.7.30 in tern send's output: %s" % out)
    check(len(S["plain"].mails) == n, "MAIL sent: %r" % S["plain"].mails)


if __name__ == "__main__":
    w.main([test_dane, test_dane_mismatch, test_opportunistic_plain,
            test_requiretls_refused])
