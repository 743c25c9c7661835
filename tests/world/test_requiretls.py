#!/usr/bin/env python3
"""REQUIRETLS (RFC 8689) in `tern serve` (issue 11, Must show), in the
test world. A user submits over STARTTLS with AUTH on 587 and
`MAIL FROM:<...> REQUIRETLS`; the recipient's only MX:

1. offers no STARTTLS: the message bounces with 5.7.30 ("REQUIRETLS
   support required", RFC 8689 §5 and its IANA registration); the bounce
   lands in the sender's Maildir and the MX host saw no MAIL at all.
2. offers STARTTLS with a certificate nothing vouches for (no DANE, no
   MTA-STS, a name that does not match): bounced too (5.7.x), never sent.
A control message without REQUIRETLS to the first host is delivered
(opportunistic, in plain text), so the bounce is REQUIRETLS's doing.
"""

import world as w
from world import check

W = None
S = {}
USERS = {"frank": "req-tls-pw"}


@w.once
def world():
    global W
    W = w.World()
    a_plain, a_tls = W.addr(), W.addr()
    W.zone("notls.example", {"@": "MX 10 mx", "mx": "A " + a_plain})
    W.zone("unverified.example", {"@": "MX 10 mx", "mx": "A " + a_tls})
    W.start_dns()
    S["plain"] = W.sink(a_plain)
    S["tls"] = W.sink(a_tls, tls=W.cert("not-the-mx.example"))
    sections = W.submission(USERS)
    sections["routes"] = {"notls.example": "mx", "unverified.example": "mx"}
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
    rcpt = "r1@notls.example"
    submit(rcpt, ["REQUIRETLS"])
    d = w.wait_delivery(s, rcpt, "bounced")
    check("5.7.30" in d.get("reply", ""), "bounced without 5.7.30: %s"
          % d["_line"])
    b = bounce_for(rcpt)
    check(b"5.7.30" in b, "the bounce does not say 5.7.30:\n%r" % b[:3000])
    check(S["plain"].mails == [], "the host without STARTTLS saw MAIL: %r"
          % S["plain"].mails)
    # control: the same host takes mail that does not require TLS
    rcpt2 = "r2@notls.example"
    submit(rcpt2, [])
    w.wait_delivery(s, rcpt2, "sent")
    S["plain"].wait(1, 5)


def test_unverified_tls_bounces():
    world()
    s = S["serve"]
    rcpt = "r3@unverified.example"
    submit(rcpt, ["REQUIRETLS"])
    d = w.wait_delivery(s, rcpt, "bounced")
    check(" 5.7." in " " + d.get("reply", ""), "bounced without 5.7.x: %s"
          % d["_line"])
    check(S["tls"].mails == [] and S["tls"].snapshot() == [],
          "the unverified host saw MAIL: %r" % S["tls"].mails)
    bounce_for(rcpt)


if __name__ == "__main__":
    w.main([test_no_starttls_bounces_5_7_30, test_unverified_tls_bounces])
