#!/usr/bin/env python3
"""REQUIRETLS (RFC 8689) in `tern serve` (issue 11, Must show), in the
test world. A user submits over STARTTLS with AUTH on 587 and
`MAIL FROM:<...> REQUIRETLS`. The recipient domains' zones are signed
(a DNSSEC-validated MX, so tern gets as far as connecting) unless said:

1. the only MX offers no STARTTLS: tern connects, sees no STARTTLS and
   the message bounces with 5.7.30 ("REQUIRETLS support required",
   RFC 8689 §5 and its IANA registration); the bounce lands in the
   sender's Maildir; the MX host saw no MAIL. A control message without
   REQUIRETLS to the same host is delivered (in plain text).
2. the MX offers STARTTLS with a certificate whose name is not the MX
   host's: bounced with 5.7.x (as Postfix does) or deferred with 4.7.x
   (tried again later), and no MAIL seen.
3. an unsigned zone and no MTA-STS (nothing vouches for the MX): bounced
   with 5.7.30 without a message ever reaching the MX.
4. the positive case: signed zone, the MX's certificate names it (test
   CA, [outbound] ca_file) and it offers REQUIRETLS: delivered over TLS,
   and tern's MAIL carried REQUIRETLS on to it.
"""

import world as w
from world import check

W = None
S = {}
USERS = {"frank": "req-tls-pw"}
DOMAINS = ("notls.example", "unverified.example", "unsigned.example",
           "good.example")


@w.once
def world():
    global W
    W = w.World()
    a = {d: W.addr() for d in DOMAINS}
    for d in DOMAINS:
        W.zone(d, {"@": "MX 10 mx", "mx": "A " + a[d]},
               signed=(d != "unsigned.example"))
    W.start_dns()
    W.check_dnssec(secure=[("notls.example", "MX"),
                           ("mx.good.example", "A")],
                   insecure=[("unsigned.example", "MX")])
    S["notls.example"] = W.sink(a["notls.example"])
    S["unverified.example"] = W.sink(a["unverified.example"],
                                     tls=W.cert("not-the-mx.example"),
                                     requiretls=True)
    S["unsigned.example"] = W.sink(a["unsigned.example"],
                                   tls=W.cert("mx.unsigned.example"),
                                   requiretls=True)
    S["good.example"] = W.sink(a["good.example"],
                               tls=W.cert("mx.good.example"),
                               requiretls=True)
    sections = W.submission(USERS)
    sections["routes"] = {d: "mx" for d in DOMAINS}
    S["serve"] = W.serve(sections)
    return W


FRM = "frank@" + w.LOCAL_DOMAIN


def submit(rcpt, opts):
    W.submit("frank", USERS["frank"], FRM, [rcpt],
             w.message(FRM, rcpt, subject="REQUIRETLS %r" % (opts,)),
             mail_options=opts)


def bounce_for(rcpt, timeout=15):
    def find():
        for m in W.maildir_messages(w.LOCAL_DOMAIN, "frank"):
            if ("Final-Recipient: rfc822;" + rcpt).encode() in \
                    m.replace(b"; ", b";"):
                return m
        return None
    return w.wait_for(find, timeout, "a bounce about %s in %s's Maildir"
                      % (rcpt, FRM))


def test_no_starttls_bounces_5_7_30():
    world()
    s = S["serve"]
    sink = S["notls.example"]
    rcpt = "r1@notls.example"
    submit(rcpt, ["REQUIRETLS"])
    d = w.wait_delivery(s, rcpt, "bounced")
    check("5.7.30" in d.get("reply", ""), "bounced without 5.7.30: %s"
          % d["_line"])
    b = bounce_for(rcpt)
    check(b"5.7.30" in b, "the bounce does not say 5.7.30:\n%r" % b[:3000])
    check(sink.mails == [], "the host without STARTTLS saw MAIL: %r"
          % sink.mails)
    check(sink.connections >= 1, "tern never tried the MX (a DNSSEC-"
          "validated MX without STARTTLS): %s" % d["_line"])
    # control: the same host takes mail that does not require TLS
    rcpt2 = "r2@notls.example"
    submit(rcpt2, [])
    w.wait_delivery(s, rcpt2, "sent")
    sink.wait(1, 5)


def test_unverified_tls_never_sent():
    world()
    s = S["serve"]
    sink = S["unverified.example"]
    rcpt = "r3@unverified.example"
    submit(rcpt, ["REQUIRETLS"])
    # Postfix returns such a message at once; tern may also keep it and
    # retry (the certificate may be fixed): either way a 5.7/4.7 status
    # and never sent
    d = w.wait_for(lambda: w.deliveries(s, rcpt, "bounced") or
                   w.deliveries(s, rcpt, "deferred"), 15,
                   "a bounced or deferred line for %s" % rcpt)[0]
    check(d["reply"][:6] in ("550 5.", "554 5.", "451 4.", "450 4.") and
          d["reply"].split()[1][2:4] == "7.", "not a 5.7.x/4.7.x status: %s"
          % d["_line"])
    check(sink.mails == [] and sink.snapshot() == [],
          "the unverified host saw MAIL: %r" % sink.mails)
    check(not w.deliveries(s, rcpt, "sent"), "sent over unverified TLS")
    if d["status"] == "bounced":
        bounce_for(rcpt)


def test_unsigned_mx_bounces():
    world()
    s = S["serve"]
    sink = S["unsigned.example"]
    rcpt = "r4@unsigned.example"
    submit(rcpt, ["REQUIRETLS"])
    d = w.wait_delivery(s, rcpt, "bounced")
    check("5.7.30" in d.get("reply", ""), "bounced without 5.7.30: %s"
          % d["_line"])
    check(sink.mails == [] and sink.snapshot() == [],
          "the MX of an unsigned zone saw MAIL: %r" % sink.mails)
    bounce_for(rcpt)


def test_verified_delivers_with_requiretls():
    world()
    s = S["serve"]
    sink = S["good.example"]
    rcpt = "r5@good.example"
    submit(rcpt, ["REQUIRETLS"])
    d = w.wait_delivery(s, rcpt, "sent")
    m = sink.wait(1, 5)[0]
    check(m.tls, "delivered without TLS: %r" % m)
    check(sink.mails and sink.mails[0][0] and
          "REQUIRETLS" in sink.mails[0][2],
          "MAIL at the next hop did not carry REQUIRETLS over TLS: %r"
          % sink.mails)
    check(d.get("verified") not in (None, "", "no"),
          "delivered but verified=%r: %s" % (d.get("verified"), d["_line"]))


if __name__ == "__main__":
    w.main([test_no_starttls_bounces_5_7_30, test_unverified_tls_never_sent,
            test_unsigned_mx_bounces, test_verified_delivers_with_requiretls])
