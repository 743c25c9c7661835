#!/usr/bin/env python3
"""DANE for SMTP (RFC 7672) in `tern serve` (issue 11, Must show), in
the test world: zones signed with ldns-signzone, the trust anchor given
to tern ([outbound] trust_anchor), MX hosts with STARTTLS on 127.0.0.x.

1. correct TLSA (3 1 1, the SHA-256 of the MX certificate's public key)
   in a signed zone: delivered over TLS, the log line says
   verified=dane-ee. The certificate's name is not the MX name and its
   CA is not one tern was told about: DANE-EE needs neither.
2. wrong TLSA in a signed zone: deferred, and the MX host saw no MAIL at
   all (no plaintext fallback, nothing sent after a failed check).
3. a TLSA record (wrong, even) in an unsigned zone: ignored; delivered
   opportunistically, verified is not dane.
Before tern is asked, libunbound itself confirms that the signed zones'
TLSA answers are secure and the unsigned one's insecure.
"""

import world as w
from world import check

W = None
S = {}


@w.once
def world():
    global W
    W = w.World()
    # Certificates from a CA tern does not know, with names that are not
    # the MX names: only DANE-EE can make them acceptable.
    good = W.cert("someone-else.example", tag="good")
    bad = W.cert("someone-else.example", tag="bad")
    plain = W.cert("someone-else.example", tag="unsigned")
    other = W.cert("unrelated.example", tag="other")
    a = {k: W.addr() for k in ("good", "bad", "unsigned")}
    W.zone("dane-ok.example", {"@": "MX 10 mx", "mx": "A " + a["good"],
                               "_25._tcp.mx": "TLSA " + W.tlsa(good[0])},
           signed=True)
    W.zone("dane-bad.example", {"@": "MX 10 mx", "mx": "A " + a["bad"],
                                "_25._tcp.mx": "TLSA " + W.tlsa(other[0])},
           signed=True)
    W.zone("dane-unsigned.example",
           {"@": "MX 10 mx", "mx": "A " + a["unsigned"],
            "_25._tcp.mx": "TLSA " + W.tlsa(other[0])})
    W.start_dns()
    W.check_dnssec(secure=[("_25._tcp.mx.dane-ok.example", "TLSA"),
                           ("_25._tcp.mx.dane-bad.example", "TLSA"),
                           ("dane-ok.example", "MX")],
                   insecure=[("_25._tcp.mx.dane-unsigned.example", "TLSA"),
                             ("dane-unsigned.example", "MX")])
    S["good"] = W.sink(a["good"], tls=good)
    S["bad"] = W.sink(a["bad"], tls=bad)
    S["unsigned"] = W.sink(a["unsigned"], tls=plain)
    # tern's CA file is the world's CA, but these certificates do not name
    # the MX hosts: a "verify by name" could not pass either.
    S["serve"] = W.serve({"routes": {d: "mx" for d in (
        "dane-ok.example", "dane-bad.example", "dane-unsigned.example")}})
    return W


def send(rcpt):
    frm = "sender@" + w.LOCAL_DOMAIN
    return W.send(frm, [rcpt], w.message(frm, rcpt))


def test_dane_correct_tlsa():
    world()
    s = S["serve"]
    send("rcpt@dane-ok.example")
    d = w.wait_delivery(s, "rcpt@dane-ok.example", "sent")
    m = S["good"].wait(1, 5)[0]
    check(m.tls, "delivered without TLS: %r" % m)
    check(d.get("verified") == "dane-ee",
          "verified=%r, expected dane-ee: %s" % (d.get("verified"),
                                                 d["_line"]))
    check(d.get("tls", "").startswith("TLS"), "no tls= version: %s"
          % d["_line"])


def test_dane_wrong_tlsa():
    world()
    s = S["serve"]
    send("rcpt@dane-bad.example")
    d = w.wait_delivery(s, "rcpt@dane-bad.example", "deferred")
    check(not w.deliveries(s, "rcpt@dane-bad.example", "sent"),
          "delivered despite a TLSA mismatch")
    sink = S["bad"]
    check(sink.mails == [] and sink.snapshot() == [],
          "the MX with the mismatching certificate saw MAIL or a message: "
          "mails=%r messages=%r" % (sink.mails, sink.snapshot()))
    check(sink.connections >= 1, "tern never connected to the MX (%s)"
          % d["_line"])
    check(d.get("reply", "").startswith("4") or d.get("why"),
          "deferral without a reason: %s" % d["_line"])


def test_tlsa_in_unsigned_zone_ignored():
    world()
    s = S["serve"]
    send("rcpt@dane-unsigned.example")
    d = w.wait_delivery(s, "rcpt@dane-unsigned.example", "sent")
    m = S["unsigned"].wait(1, 5)[0]
    check(m.rcpts == ["rcpt@dane-unsigned.example"], "%r" % m)
    check(not d.get("verified", "").startswith("dane"),
          "an insecure TLSA record was used: %s" % d["_line"])
    check(m.tls, "opportunistic TLS not used although offered: %r" % m)


if __name__ == "__main__":
    w.main([test_dane_correct_tlsa, test_dane_wrong_tlsa,
            test_tlsa_in_unsigned_zone_ignored])
