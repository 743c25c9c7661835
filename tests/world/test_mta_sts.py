#!/usr/bin/env python3
"""MTA-STS (RFC 8461) in `tern serve` (issue 11, Must show), in the test
world: `_mta-sts` TXT records in the test DNS, the policy served over
HTTPS by mta-sts.DOMAIN on 127.0.0.x:443 (certificate from the test CA,
given to tern as [outbound] mta_sts_ca_file), MX hosts with STARTTLS.

1. mode enforce, the MX certificate (from the trusted test CA) does not
   name the MX host: deferred, and the MX host saw no MAIL at all.
2. mode testing, same mismatch: delivered, and the delivery line says
   what failed (tls_failure=...).
3. the policy is cached: one message, then 20 more to the same domain
   (enforce, a matching certificate): all delivered verified=mta-sts,
   and the policy host served exactly one fetch.
4. the same for a burst: 20 messages queued before any policy is
   known: still one fetch.
"""

import world as w
from world import check

W = None
S = {}


def policy(mode, mx):
    return ("version: STSv1\r\nmode: %s\r\nmx: %s\r\nmax_age: 86400\r\n"
            % (mode, mx))


@w.once
def world():
    global W
    W = w.World()
    wrong = W.cert("wrong-name.example", tag="wrong")
    right = W.cert("mx.sts-cache.example")
    specs = {"sts-enforce.example": ("enforce", wrong),
             "sts-testing.example": ("testing", wrong),
             "sts-cache.example": ("enforce", right),
             "sts-burst.example": ("enforce", W.cert("mx.sts-burst.example"))}
    addrs = {}
    for dom, (mode, cert) in specs.items():
        mx, web = W.addr(), W.addr()
        addrs[dom] = (mx, web)
        W.zone(dom, {"@": "MX 10 mx", "mx": "A " + mx,
                     "_mta-sts": w.txt_rdata("v=STSv1; id=20261203T1800;"),
                     "mta-sts": "A " + web})
    W.start_dns()
    for dom, (mode, cert) in specs.items():
        mx, web = addrs[dom]
        S[dom] = W.sink(mx, tls=cert)
        S["web " + dom] = W.mta_sts(dom, policy(mode, "mx." + dom), web)
    S["serve"] = W.serve({"routes": {d: "mx" for d in specs}})
    return W


def send(rcpt):
    frm = "sender@" + w.LOCAL_DOMAIN
    return W.send(frm, [rcpt], w.message(frm, rcpt))


def test_enforce_name_mismatch_defers():
    world()
    s = S["serve"]
    send("rcpt@sts-enforce.example")
    d = w.wait_delivery(s, "rcpt@sts-enforce.example", "deferred")
    sink = S["sts-enforce.example"]
    check(sink.mails == [] and sink.snapshot() == [],
          "the MX whose certificate does not match the policy saw MAIL: "
          "%r %r" % (sink.mails, sink.snapshot()))
    check(S["web sts-enforce.example"].fetches >= 1,
          "the policy was never fetched (%s)" % d["_line"])
    check(not w.deliveries(s, "rcpt@sts-enforce.example", "sent"),
          "delivered under an enforce policy with a wrong certificate")


def test_testing_delivers_and_logs():
    world()
    s = S["serve"]
    send("rcpt@sts-testing.example")
    d = w.wait_delivery(s, "rcpt@sts-testing.example", "sent")
    m = S["sts-testing.example"].wait(1, 5)[0]
    check(m.rcpts == ["rcpt@sts-testing.example"], "%r" % m)
    check(d.get("tls_failure"), "mode testing: no tls_failure= on the "
          "delivery line: %s" % d["_line"])
    check(d.get("verified") != "mta-sts", "verified=mta-sts although the "
          "name did not match: %s" % d["_line"])
    check(S["web sts-testing.example"].fetches == 1,
          "policy fetches: %d" % S["web sts-testing.example"].fetches)


def test_policy_cached():
    world()
    s = S["serve"]
    dom = "sts-cache.example"
    sink = S[dom]
    send("first@" + dom)
    d = w.wait_delivery(s, "first@" + dom, "sent")
    sink.wait(1, 5)
    check(d.get("verified") == "mta-sts", "verified=%r, expected mta-sts: "
          "%s" % (d.get("verified"), d["_line"]))
    frm = "sender@" + w.LOCAL_DOMAIN
    for i in range(20):
        W.send(frm, ["r%d@%s" % (i, dom)], w.message(frm, "r%d@%s" % (i, dom)))
    for i in range(20):
        d = w.wait_delivery(s, "r%d@%s" % (i, dom), "sent", timeout=30)
        check(d.get("verified") == "mta-sts", "message %d: %s"
              % (i, d["_line"]))
    sink.wait(21, 5)
    web = S["web " + dom]
    check(web.fetches == 1, "the policy was fetched %d times for 21 "
          "messages (cached per max_age: once)" % web.fetches)
    check(all(m.tls for m in sink.snapshot()), "a message without TLS")


def test_policy_fetched_once_for_a_burst():
    world()
    s = S["serve"]
    dom = "sts-burst.example"
    frm = "sender@" + w.LOCAL_DOMAIN
    rcpts = ["b%d@%s" % (i, dom) for i in range(20)]
    for r in rcpts:         # 20 messages before any policy is cached
        W.send(frm, [r], w.message(frm, r))
    for r in rcpts:
        d = w.wait_delivery(s, r, "sent", timeout=30)
        check(d.get("verified") == "mta-sts", "%s" % d["_line"])
    web = S["web " + dom]
    check(web.fetches == 1, "the policy was fetched %d times for a burst "
          "of 20 messages (one fetch, the others wait for it)" % web.fetches)


if __name__ == "__main__":
    w.main([test_enforce_name_mismatch_defers, test_testing_delivers_and_logs,
            test_policy_cached, test_policy_fetched_once_for_a_burst])
