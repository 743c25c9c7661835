#!/usr/bin/env python3
"""Submission end to end (issue 11, Must show): `tern serve` as a
complete outgoing mail server. A user made with `tern passwd` submits on
587 (STARTTLS, AUTH required) to a foreign domain; tern looks its MX up
in the test DNS and delivers it there: the message arrives at that MX
host over TLS (the host saw STARTTLS), DKIM-signed (dkimpy verifies it
with the key from the test DNS), and the delivery line names the MX and
the TLS version (configured as docs/configuration.md's worked example:
[delivery] relay = mx). A wrong password is refused (535) and queues
nothing. And relay = mx is the default in a Step 8 configuration
(one with [outbound]): without the key the same happens, with or without
`queue = yes`, and the MX is looked up as [outbound] says.
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
    # to [delivery] relay, here mx (docs/configuration.md's worked
    # example says so explicitly).
    sections["delivery"] = {"relay": "mx"}
    sections["dkim s1"] = {"domain": w.LOCAL_DOMAIN, "selector": "s1",
                           "key": key}
    S["sections"] = sections
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


def test_default_relay_is_mx():
    """Issue 11 item 1: users' mail to other domains goes mx by default.
    The same configuration without the relay key (a file with [outbound],
    so a Step 8 configuration: docs/configuration.md) sends it to the
    domain's MX too, not into a local Maildir."""
    world()
    sections = dict(S["sections"])
    sections["delivery"] = {"relay": None}
    s = W.serve(sections, name="serve-default-relay")
    frm = "dana@" + w.LOCAL_DOMAIN
    rcpt = "fred@foreign.example"
    W.submit("dana", USERS["dana"], frm, [rcpt], w.message(frm, rcpt))
    w.wait_delivery(s, rcpt, "sent")
    w.wait_for(lambda: [m for m in S["sink"].snapshot()
                        if m.rcpts == [rcpt]], 5, "%s at the MX" % rcpt)


def test_queue_without_relay_key_uses_outbound():
    """With the queue on and no relay key, users' mail to other domains
    is routed mx:DOMAIN (docs/configuration.md); its MX must then be
    looked up as [outbound] says (the test DNS, the test trust anchor),
    not through a resolver made from the system's defaults."""
    world()
    sections = dict(S["sections"])
    sections["delivery"] = {"relay": None, "queue": "yes"}
    s = W.serve(sections, name="serve-queue-no-relay")
    frm = "dana@" + w.LOCAL_DOMAIN
    rcpt = "gina@foreign.example"
    W.submit("dana", USERS["dana"], frm, [rcpt], w.message(frm, rcpt))
    w.wait_delivery(s, rcpt, "sent", timeout=8)
    w.wait_for(lambda: [m for m in S["sink"].snapshot()
                        if m.rcpts == [rcpt]], 5, "%s at the MX" % rcpt)


if __name__ == "__main__":
    w.main([test_submission_to_mx, test_wrong_password_refused,
            test_default_relay_is_mx,
            test_queue_without_relay_key_uses_outbound])
