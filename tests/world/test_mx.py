#!/usr/bin/env python3
"""MX resolution by `tern serve` (issue 11, Must show; RFC 5321 §5.1,
RFC 7505), in the test world (tests/world/world.py):

1. preference order: MX 10 and MX 20 both up: the message goes to the
   MX 10 host only.
2. fallback on a refused connection: MX 10 at an address where nothing
   listens, MX 20 a sink: the MX 20 host takes the message.
3. fallback on a 421 greeting: MX 10 greets 421, MX 20 takes it.
4. implicit MX: a domain with an A record and no MX gets its mail at
   that address.
4a. MX hosts of equal preference are taken in random order: 20 domains
   (routed by the suffix route ".eq.example = mx") share two such hosts,
   and both get mail.
4b. every address of a host is tried: an MX host with two A records, one
   refusing: the other takes the message; an MX host with only an AAAA
   record (::1) gets its mail over IPv6.
5. null MX ("MX 0 ."): the recipient bounces at once with 5.1.10 (no
   deferral first), and the bounce lands in the sender's Maildir
   (sender@local.example, an accepted domain).
5a. without [outbound] resolver, the namespace's /etc/resolv.conf is
   used (it names the test DNS).
6. a domain that cannot be resolved (the DNS answers SERVFAIL for it):
   deferred, then (lifetime 4s) status=expired and a bounce to the
   sender.
"""

import world as w
from world import check

W = None
HOSTS = {}


@w.once
def world():
    global W
    W = w.World()
    a = {k: W.addr() for k in ("order10", "order20", "dead", "pref20",
                               "g421", "g20", "implicit", "dead2",
                               "multi", "eqa", "eqb")}
    HOSTS.update(a)
    W.zone("order.example", {"@": ["MX 20 mx20", "MX 10 mx10"],
                             "mx10": "A " + a["order10"],
                             "mx20": "A " + a["order20"]})
    W.zone("pref.example", {"@": ["MX 10 mx10", "MX 20 mx20"],
                            "mx10": "A " + a["dead"],
                            "mx20": "A " + a["pref20"]})
    W.zone("greet.example", {"@": ["MX 10 mx10", "MX 20 mx20"],
                             "mx10": "A " + a["g421"],
                             "mx20": "A " + a["g20"]})
    W.zone("implicit.example", {"@": "A " + a["implicit"]})
    W.zone("nullmx.example", {"@": "MX 0 ."}, signed=True)
    # one MX host, two addresses: one refuses, one takes the mail
    W.zone("multi.example", {"@": "MX 10 mx",
                             "mx": ["A " + a["dead2"], "A " + a["multi"]]})
    # 20 domains, each with two MX hosts of equal preference (the same
    # two): RFC 5321 §5.1 wants them in random order
    eq = {"mxa": "A " + a["eqa"], "mxb": "A " + a["eqb"]}
    for i in range(EQUAL):
        eq["d%d" % i] = ["MX 10 mxa.eq.example.", "MX 10 mxb.eq.example."]
    W.zone("eq.example", eq)
    # an MX host with only an IPv6 address (::1 in the namespace)
    W.zone("six.example", {"@": "MX 10 mx", "mx": "AAAA ::1"})
    W.start_dns()
    # What the world says, before tern is asked anything.
    W.check_dnssec(secure=[("nullmx.example", "MX")],
                   insecure=[("order.example", "MX"),
                             ("implicit.example", "A")])
    HOSTS["sinks"] = {
        "order10": W.sink(a["order10"]), "order20": W.sink(a["order20"]),
        "pref20": W.sink(a["pref20"]), "g20": W.sink(a["g20"]),
        "implicit": W.sink(a["implicit"]), "multi": W.sink(a["multi"]),
        "six": W.sink("::1"), "eqa": W.sink(a["eqa"]),
        "eqb": W.sink(a["eqb"])}
    HOSTS["g421_srv"] = W.greet421(a["g421"])
    return W


ROUTES = {"routes": {d: "mx" for d in (
    "order.example", "pref.example", "greet.example", "implicit.example",
    "nullmx.example", "gone.example", "multi.example", "six.example",
    ".eq.example")}}
EQUAL = 20
# [routes] accepts nothing: the domains sent to without AUTH are listed
# in [domains] accept too (exact names: the suffix route's subdomains)
ROUTES["domains"] = {"accept": " ".join(
    [w.LOCAL_DOMAIN] + [d for d in ROUTES["routes"] if d[0] != "."] +
    ["d%d.eq.example" % i for i in range(EQUAL)])}

@w.once
def serve():
    return world().serve(dict(ROUTES, accept_extra=[
        "d%d.eq.example" % i for i in range(EQUAL)]))


def send_one(rcpt, frm="sender@local.example"):
    return W.send(frm, [rcpt], w.message(frm, rcpt))


def test_preference_order():
    s = serve()
    sinks = HOSTS["sinks"]
    send_one("rcpt@order.example")
    d = w.wait_delivery(s, "rcpt@order.example", "sent")
    m = sinks["order10"].wait(1, 5)[0]
    check(m.rcpts == ["rcpt@order.example"], "at MX 10: %r" % m)
    check(sinks["order20"].connections == 0,
          "the MX 20 host was contacted (%d connections) though MX 10 was "
          "up" % sinks["order20"].connections)
    check(HOSTS["order10"] in d["_line"],
          "delivery line does not name MX 10's address %s: %s"
          % (HOSTS["order10"], d["_line"]))


def test_fallback_refused():
    s = serve()
    send_one("rcpt@pref.example")
    d = w.wait_delivery(s, "rcpt@pref.example", "sent")
    m = HOSTS["sinks"]["pref20"].wait(1, 5)[0]
    check(m.rcpts == ["rcpt@pref.example"], "at MX 20: %r" % m)
    check(not w.deliveries(s, "rcpt@pref.example", "deferred"),
          "deferred before going to MX 20: %s"
          % w.deliveries(s, "rcpt@pref.example", "deferred"))
    check(HOSTS["pref20"] in d["_line"], "not MX 20's address: %s"
          % d["_line"])


def test_fallback_421():
    s = serve()
    send_one("rcpt@greet.example")
    w.wait_delivery(s, "rcpt@greet.example", "sent")
    m = HOSTS["sinks"]["g20"].wait(1, 5)[0]
    check(m.rcpts == ["rcpt@greet.example"], "at MX 20: %r" % m)
    check(HOSTS["g421_srv"].connections >= 1,
          "the 421 host (MX 10) was never tried")


def test_implicit_mx():
    s = serve()
    send_one("rcpt@implicit.example")
    w.wait_delivery(s, "rcpt@implicit.example", "sent")
    m = HOSTS["sinks"]["implicit"].wait(1, 5)[0]
    check(m.rcpts == ["rcpt@implicit.example"], "implicit MX: %r" % m)


def test_equal_preference_random():
    s = serve()
    rcpts = ["r@d%d.eq.example" % i for i in range(EQUAL)]
    for r in rcpts:
        send_one(r)
    for r in rcpts:
        w.wait_delivery(s, r, "sent")
    na = len(HOSTS["sinks"]["eqa"].snapshot())
    nb = len(HOSTS["sinks"]["eqb"].snapshot())
    check(na + nb == EQUAL, "%d + %d messages at the two hosts" % (na, nb))
    # all 20 domains on one host by chance: probability 2^-19
    check(na > 0 and nb > 0, "MX hosts of equal preference not in random "
          "order: %d domains went to mxa, %d to mxb" % (na, nb))


def test_every_address_tried():
    s = serve()
    send_one("rcpt@multi.example")
    d = w.wait_delivery(s, "rcpt@multi.example", "sent")
    HOSTS["sinks"]["multi"].wait(1, 5)
    check(HOSTS["multi"] in d["_line"], "not the live address: %s"
          % d["_line"])


def test_ipv6_mx():
    s = serve()
    send_one("rcpt@six.example")
    d = w.wait_delivery(s, "rcpt@six.example", "sent")
    m = HOSTS["sinks"]["six"].wait(1, 5)[0]
    check(m.peer[0] == "::1", "not over IPv6: peer %r" % (m.peer,))
    check("::1" in d["_line"], "the delivery line does not name ::1: %s"
          % d["_line"])


def test_null_mx():
    s = serve()
    send_one("rcpt@nullmx.example", frm="nullsender@local.example")
    d = w.wait_delivery(s, "rcpt@nullmx.example", "bounced", timeout=10)
    check("5.1.10" in d["_line"], "null MX bounce without 5.1.10: %s"
          % d["_line"])
    check(not w.deliveries(s, "rcpt@nullmx.example", "deferred"),
          "null MX deferred first (must bounce at once): %s"
          % w.deliveries(s, "rcpt@nullmx.example", "deferred"))
    msgs = W.wait_maildir(w.LOCAL_DOMAIN, "nullsender", 1, timeout=10)
    check(b"5.1.10" in msgs[0] and b"rcpt@nullmx.example" in msgs[0],
          "the bounce in the sender's Maildir lacks 5.1.10 or the "
          "recipient:\n%r" % msgs[0][:3000])


def test_system_resolver():
    """No [outbound] resolver: the system's /etc/resolv.conf (in the
    namespace: the test DNS) is used."""
    sections = dict(ROUTES, outbound={"resolver": None})
    s = world().serve(sections, name="serve-resolv-conf")
    n = len(HOSTS["sinks"]["implicit"].snapshot())
    send_one("again@implicit.example")
    w.wait_delivery(s, "again@implicit.example", "sent")
    HOSTS["sinks"]["implicit"].wait(n + 1, 5)
    s.stop()


def test_unresolvable_expires():
    # its own tern serve: a short lifetime
    s = world().serve(dict(ROUTES, queue={"lifetime": "4s",
                                          "retry_min": "1s",
                                          "retry_max": "1s"}),
                      name="serve-expiry")
    W.send("gonesender@local.example", ["rcpt@gone.example"],
           w.message("gonesender@local.example", "rcpt@gone.example"))
    d = w.wait_delivery(s, "rcpt@gone.example", "deferred", timeout=15)
    check(d.get("reply", "").startswith("4") or d.get("why"),
          "deferral without a 4xx reason: %s" % d["_line"])
    e = w.wait_delivery(s, "rcpt@gone.example", "expired", timeout=20)
    msgs = W.wait_maildir(w.LOCAL_DOMAIN, "gonesender", 1, timeout=10)
    check(b"rcpt@gone.example" in msgs[0] and b"Action: failed" in msgs[0],
          "the expiry bounce in the sender's Maildir:\n%r" % msgs[0][:3000])
    s.stop()
    del e


if __name__ == "__main__":
    w.main([test_preference_order, test_fallback_refused, test_fallback_421,
            test_implicit_mx, test_equal_preference_random,
            test_every_address_tried, test_ipv6_mx,
            test_null_mx, test_system_resolver,
            test_unresolvable_expires])
