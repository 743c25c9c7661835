#!/usr/bin/env python3
"""DKIM signing by `tern serve` (issue 11, Must show; RFC 6376, RFC 8463),
in the test world: two [dkim NAME] keys for local.example, RSA (selector
s1) and Ed25519 (selector s2), their public keys published as
sN._domainkey.local.example TXT records in the test DNS.

1. a message submitted with AUTH (587, STARTTLS) from alice@local.example
   to a foreign domain arrives at its MX with an rsa-sha256 AND an
   ed25519-sha256 signature, d=local.example, and dkimpy (python3-dkim)
   verifies both, fetching the keys from the test DNS.
2. mail that only passes through (relayed in on port 25 without AUTH,
   From: local.example) is not signed.
"""

import world as w
from world import check

W = None
S = {}
USERS = {"alice": "w0rld-secret-a"}


@w.once
def world():
    global W
    W = w.World()
    rsa_key, rsa_txt = w.dkim_keys(W.dir, "s1", "rsa")
    ed_key, ed_txt = w.dkim_keys(W.dir, "s2", "ed25519")
    mx = W.addr()
    W.zone(w.LOCAL_DOMAIN, {"s1._domainkey": w.txt_rdata(rsa_txt),
                            "s2._domainkey": w.txt_rdata(ed_txt)})
    W.zone("dkim-dest.example", {"@": "MX 10 mx", "mx": "A " + mx})
    W.start_dns()
    check(w.dns_txt("s2._domainkey." + w.LOCAL_DOMAIN) == ed_txt.encode(),
          "test DNS: s2._domainkey TXT")
    S["sink"] = W.sink(mx, tls=W.cert("mx.dkim-dest.example"))
    sections = W.submission(USERS)
    sections["routes"] = {"dkim-dest.example": "mx"}
    sections["dkim rsa"] = {"domain": w.LOCAL_DOMAIN, "selector": "s1",
                            "key": rsa_key}
    sections["dkim ed25519"] = {"domain": w.LOCAL_DOMAIN, "selector": "s2",
                                "key": ed_key}
    S["serve"] = W.serve(sections)
    return W


def test_signed_rsa_and_ed25519():
    world()
    frm = "alice@" + w.LOCAL_DOMAIN
    rcpt = "bob@dkim-dest.example"
    W.submit("alice", USERS["alice"], frm, [rcpt],
             w.message(frm, rcpt, subject="signed twice"))
    w.wait_delivery(S["serve"], rcpt, "sent")
    m = [x for x in S["sink"].wait(1, 5) if x.rcpts == [rcpt]][0]
    sigs = w.dkim_verify(m.data)
    algs = sorted(a for d, s, a in sigs)
    check(algs == ["ed25519-sha256", "rsa-sha256"],
          "signatures (d, s, a): %r; expected one rsa-sha256 and one "
          "ed25519-sha256" % sigs)
    check(all(d == w.LOCAL_DOMAIN for d, s, a in sigs),
          "d= is not %s: %r" % (w.LOCAL_DOMAIN, sigs))
    check(sorted(s for d, s, a in sigs) == ["s1", "s2"], "selectors %r" % sigs)


def test_relayed_mail_not_signed():
    world()
    frm = "someone@" + w.LOCAL_DOMAIN
    rcpt = "carol@dkim-dest.example"
    W.send(frm, [rcpt], w.message(frm, rcpt, subject="passing through"))
    w.wait_delivery(S["serve"], rcpt, "sent")
    m = [x for x in S["sink"].snapshot() if x.rcpts == [rcpt]][0]
    hdr = m.data.split(b"\r\n\r\n", 1)[0].lower()
    check(b"\ndkim-signature:" not in b"\n" + hdr,
          "mail from an unauthenticated session was signed:\n%r" % hdr)


if __name__ == "__main__":
    w.main([test_signed_rsa_and_ed25519, test_relayed_mail_not_signed])
