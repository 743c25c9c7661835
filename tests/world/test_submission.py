#!/usr/bin/env python3
"""Submission end to end (issue 11, Must show): `tern serve` as a
complete outgoing mail server. A user made with `tern passwd` submits on
587 (STARTTLS, AUTH required) to a foreign domain; tern looks its MX up
in the test DNS and delivers it there: the message arrives at that MX
host over TLS (the host saw STARTTLS), DKIM-signed (dkimpy verifies it
with the key from the test DNS), and the delivery line names the MX and
the TLS version. A wrong password is refused (535) and queues nothing.
"""

import smtplib
import ssl

import world as w
from world import check

W = None
S = {}
USERS = {"dana": "subm1ssion-pw"}


@w.once
def world():
    global W
    W = w.World()
    key, txt = w.dkim_keys(W.dir, "s1", "rsa")
    mx = W.addr()
    W.zone(w.LOCAL_DOMAIN, {"s1._domainkey": w.txt_rdata(txt)})
    W.zone("foreign.example", {"@": "MX 10 mail", "mail": "A " + mx})
    W.start_dns()
    S["sink"] = W.sink(mx, tls=W.cert("mail.foreign.example"))
    sections = W.submission(USERS)
    # No [routes]: an authenticated user's mail to another domain goes
    # to its MX by default ([delivery] relay = mx).
    sections["dkim s1"] = {"domain": w.LOCAL_DOMAIN, "selector": "s1",
                           "key": key}
    S["serve"] = W.serve(sections)
    return W


def test_submission_to_mx():
    world()
    frm = "dana@" + w.LOCAL_DOMAIN
    rcpt = "erin@foreign.example"
    msg = w.message(frm, rcpt, subject="from submission to the world")
    W.submit("dana", USERS["dana"], frm, [rcpt], msg)
    d = w.wait_delivery(S["serve"], rcpt, "sent")
    m = S["sink"].wait(1, 5)[0]
    check(m.rcpts == [rcpt] and m.mail_from == frm, "envelope: %r" % m)
    check(m.tls and m.tls_version.startswith("TLS"),
          "not delivered over TLS: %r" % m)
    check(msg.split(b"\r\n\r\n", 1)[1] in m.data, "body changed")
    sigs = w.dkim_verify(m.data)
    check(sigs and sigs[0][0] == w.LOCAL_DOMAIN, "signatures %r" % sigs)
    check(d.get("tls", "").startswith("TLS"), "no tls= on %s" % d["_line"])
    check("mail.foreign.example" in d["_line"],
          "the delivery line does not name the MX host: %s" % d["_line"])


def test_wrong_password_refused():
    world()
    ctx = ssl.create_default_context(cafile=W.ca)
    ctx.check_hostname = False
    with smtplib.SMTP(w.TERN_ADDR, 587, timeout=20) as c:
        c.starttls(context=ctx)
        try:
            c.login("dana", "not-the-password")
            w.fail("AUTH with a wrong password succeeded")
        except smtplib.SMTPAuthenticationError as e:
            check(e.smtp_code == 535, "wrong password: %r" % (e,))
        code, text = c.mail("dana@" + w.LOCAL_DOMAIN)
        check(code == 530, "MAIL without AUTH on submission: %d %s"
              % (code, text))


if __name__ == "__main__":
    w.main([test_submission_to_mx, test_wrong_password_refused])
