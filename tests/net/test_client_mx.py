#!/usr/bin/env python3
"""The client runtime's "mx:DOMAIN" URLs (tests/net/client_probe): MX order
and fallback, implicit and null MX, the TLS policies (may with a broken
TLS server, encrypt, verify), REQUIRETLS, conn_info, failure replies and
bind_addr. A python3-dnslib server on 127.0.0.1 answers the tern
resolver (its forwarder); SMTP sinks listen on 127.0.0.x at one port
(the client's mx_port). Loopback only; the machine's resolver is never
asked. DANE is in test_client_mx_dane.py (it needs a signed zone)."""

import os
import sys

try:
    import dnslib  # noqa: F401  (Debian's python3-dnslib)
except ImportError:
    if sys.executable != "/usr/bin/python3" and os.path.exists("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    raise

import harness as h
import mxworld as w
from test_client_runtime import connect_line, probe

ADDRS = ["127.0.0.%d" % i for i in range(2, 8)]


class World:
    def __init__(self, records):
        self.dns = w.shared_dns(records)
        self.port = w.shared_port(ADDRS)
        self.sinks = []

    def sink(self, addr, **kw):
        s = w.Sink(addr, self.port, **kw)
        self.sinks.append(s)
        return s

    def probe(self, url="mx:dest.example", args=(), expect_rc=0, dnssec=False):
        a = ["--resolver", self.dns.addr, "--mx-port", str(self.port)]
        if not dnssec:
            a.append("--no-dnssec")
        return probe(url, rcpts=("bob@dest.example",), args=a + list(args),
                     expect_rc=expect_rc)

    def close(self):
        for s in self.sinks:
            s.stop()
        self.dns.stop()


def line(out, prefix):
    for l in out.splitlines():
        if l.startswith(prefix):
            return l
    h.fail("no line starting %r in:\n%s" % (prefix, out))


def info(out):
    """The probe's "info" line as a dict."""
    d = {}
    l = line(out, "info ")
    rest = l[len("info "):]
    pf = rest.find(" policy_failure=")
    if pf >= 0:
        d["policy_failure"] = rest[pf + len(" policy_failure="):]
        rest = rest[:pf]
    for kv in rest.split(" "):
        k, _, v = kv.partition("=")
        d[k] = v
    return d


def failure(out):
    parts = line(out, "failure ").split(" ", 4)
    return parts[1], parts[2], parts[3], parts[4] if len(parts) > 4 else ""


def with_world(records, fn):
    wd = World(records)
    try:
        fn(wd)
    finally:
        wd.close()


BASE = {
    "dest.example": [w.mx(10, "mx1.dest.example"), w.mx(20, "mx2.dest.example")],
    "mx1.dest.example": [w.a("127.0.0.2")],
    "mx2.dest.example": [w.a("127.0.0.3")],
}


# ---- MX resolution and fallback ---------------------------------------------------

def test_mx_order_first_refuses():
    """mx1 (preference 10) refuses the connection: mx2 takes the message."""
    def run(wd):
        s2 = wd.sink("127.0.0.3")
        out = wd.probe()
        h.check(connect_line(out) == "connect ok tls=none", out)
        i = info(out)
        h.check(i["host"] == "mx2.dest.example" and i["addr"] == "127.0.0.3",
                out)
        h.check(i["tried"] == "2" and i["policy"] == "may", out)
        h.check(len(s2.messages) == 1, "mx2 got %d messages" % len(s2.messages))
    with_world(BASE, run)


def test_mx_order_preference():
    """Both answer: the lower preference gets the message."""
    def run(wd):
        s1 = wd.sink("127.0.0.2")
        s2 = wd.sink("127.0.0.3")
        out = wd.probe()
        h.check(info(out)["host"] == "mx1.dest.example", out)
        h.check(len(s1.messages) == 1 and not s2.conns,
                "s1 %d msgs, s2 %d conns" % (len(s1.messages), len(s2.conns)))
    with_world(BASE, run)


def test_greeting_4xx_next_host():
    """A 421 greeting sends the client on to the next MX."""
    def run(wd):
        s1 = wd.sink("127.0.0.2", greeting=421)
        s2 = wd.sink("127.0.0.3")
        out = wd.probe()
        h.check(info(out)["host"] == "mx2.dest.example", out)
        h.check(len(s1.conns) == 1 and not s1.messages, "s1: %r" % s1.conns)
        h.check(len(s2.messages) == 1, out)
    with_world(BASE, run)


def test_host_addresses_in_turn():
    """A host's addresses one after another, IPv6 first: ::1 refuses,
    its IPv4 address takes the message (same host, tried=2)."""
    recs = {"dest.example": [w.mx(10, "mx1.dest.example")],
            "mx1.dest.example": [w.aaaa("::1"), w.a("127.0.0.3")]}

    def run(wd):
        s = wd.sink("127.0.0.3")
        out = wd.probe()
        i = info(out)
        h.check(i["host"] == "mx1.dest.example" and i["addr"] == "127.0.0.3",
                out)
        h.check(i["tried"] == "2", out)
        h.check(len(s.messages) == 1, out)
    with_world(recs, run)


def test_implicit_mx():
    """No MX records: the domain's own address (RFC 5321 §5.1)."""
    recs = {"dest.example": [w.a("127.0.0.4")]}

    def run(wd):
        s = wd.sink("127.0.0.4")
        out = wd.probe()
        i = info(out)
        h.check(i["host"] == "dest.example" and i["addr"] == "127.0.0.4", out)
        h.check(len(s.messages) == 1, out)
    with_world(recs, run)


def test_null_mx():
    """MX 0 "." (RFC 7505): a permanent 550 5.1.10, no connection."""
    recs = {"dest.example": [w.mx(0, ".")]}

    def run(wd):
        out = wd.probe(expect_rc=1)
        code, enh, perm, text = failure(out)
        h.check((code, enh, perm) == ("550", "5.1.10", "perm=1"), out)
        h.check("dest.example" in text, out)
    with_world(recs, run)


def test_no_such_domain():
    def run(wd):
        out = wd.probe(url="mx:nowhere.example", expect_rc=1)
        code, enh, perm, _ = failure(out)
        h.check((code, enh, perm) == ("550", "5.1.2", "perm=1"), out)
    with_world(BASE, run)


def test_every_host_refuses():
    """Nobody listens: 451 4.4.1, temporary, both hosts tried."""
    def run(wd):
        out = wd.probe(expect_rc=1)
        code, enh, perm, text = failure(out)
        h.check((code, enh, perm) == ("451", "4.4.1", "perm=0"), out)
        h.check("2 of at most 10" in text, out)
    with_world(BASE, run)


def test_at_most_ten_addresses():
    """Twelve addresses, none answering: ten are tried, no more."""
    recs = {"dest.example": [w.mx(10, "a.dest.example"),
                             w.mx(20, "b.dest.example"),
                             w.mx(30, "c.dest.example")]}
    n = 10
    for host in "abc":
        recs[host + ".dest.example"] = [w.a("127.0.1.%d" % (n + k))
                                        for k in range(4)]
        n += 4

    def run(wd):
        out = wd.probe(expect_rc=1)
        _, _, _, text = failure(out)
        h.check("10 of at most 10" in text, out)
        h.check(info(out)["tried"] == "10", out)
    with_world(recs, run)


# ---- TLS policies -------------------------------------------------------------------

def test_may_broken_tls_goes_clear():
    """MAY: a handshake that fails is retried once in the clear."""
    def run(wd):
        s1 = wd.sink("127.0.0.2", cert=CERTS["mx1"], broken_tls=True)
        out = wd.probe()
        h.check(connect_line(out) == "connect ok tls=none", out)
        h.check(info(out)["host"] == "mx1.dest.example", out)
        h.check(len(s1.conns) == 2, "connections: %r" % s1.conns)
        h.check(len(s1.messages) == 1 and not s1.messages[0]["tls"], out)
    with_world(BASE, run)


def test_may_tls_unverified():
    """MAY over TLS: encrypted, never reported as verified."""
    def run(wd):
        s1 = wd.sink("127.0.0.2", cert=CERTS["other"])
        out = wd.probe()
        i = info(out)
        h.check(i["tls"].startswith("TLSv1.") and i["verified"] == "-", out)
        h.check(i["cipher"] != "-", out)
        h.check(s1.messages and s1.messages[0]["tls"], out)
    with_world(BASE, run)


def test_encrypt_without_starttls_fails():
    """ENCRYPT: a server without STARTTLS gets nothing; 451 4.7.5."""
    def run(wd):
        s1 = wd.sink("127.0.0.2")
        s2 = wd.sink("127.0.0.3")
        out = wd.probe(args=["--tls-policy", "encrypt"], expect_rc=1)
        code, enh, perm, _ = failure(out)
        h.check((code, enh, perm) == ("451", "4.7.5", "perm=0"), out)
        h.check(not s1.messages and not s2.messages, "a message went clear")
        h.check(len(s1.conns) == 1 and len(s2.conns) == 1, out)
    with_world(BASE, run)


def test_verify_wrong_name_fails():
    """VERIFY: a certificate for another name is refused (both hosts)."""
    def run(wd):
        s1 = wd.sink("127.0.0.2", cert=CERTS["other"])
        out = wd.probe(args=["--tls-policy", "verify", "--ca-file", CA.cert],
                       expect_rc=1)
        code, enh, _, text = failure(out)
        h.check((code, enh) == ("451", "4.7.5"), out)
        h.check("verify" in text, out)
        h.check(not s1.messages, "message sent over an unverified channel")
    with_world(BASE, run)


def test_verify_right_name():
    def run(wd):
        s1 = wd.sink("127.0.0.2", cert=CERTS["mx1"])
        out = wd.probe(args=["--tls-policy", "verify", "--ca-file", CA.cert])
        i = info(out)
        h.check(i["verified"] == "ca" and i["policy"] == "verify", out)
        h.check(s1.messages and s1.messages[0]["tls"], out)
    with_world(BASE, run)


def test_none_policy_never_starttls():
    def run(wd):
        s1 = wd.sink("127.0.0.2", cert=CERTS["mx1"])
        out = wd.probe(args=["--tls-policy", "none"])
        h.check(info(out)["tls"] == "-" and info(out)["policy"] == "none", out)
        h.check(s1.messages and not s1.messages[0]["tls"], out)
    with_world(BASE, run)


def test_requiretls_without_starttls_bounces():
    """REQUIRETLS to hosts without STARTTLS (and no DNSSEC, DANE or
    MTA-STS): permanent 550 5.7.30, nothing sent."""
    def run(wd):
        s1 = wd.sink("127.0.0.2")
        s2 = wd.sink("127.0.0.3")
        out = wd.probe(args=["--requiretls"], expect_rc=1)
        code, enh, perm, _ = failure(out)
        h.check((code, enh, perm) == ("550", "5.7.30", "perm=1"), out)
        h.check(not s1.messages and not s2.messages, out)
    with_world(BASE, run)


def test_unsigned_tlsa_ignored():
    """TLSA records in an unvalidated zone do not make DANE: MAY."""
    recs = dict(BASE)
    recs["_%d._tcp.mx1.dest.example"] = None  # filled in run()

    def run(wd):
        wd.dns.zone.records["_%d._tcp.mx1.dest.example." % wd.port] = [
            w.tlsa(3, 1, 1, "ab" * 32)]
        s1 = wd.sink("127.0.0.2", cert=CERTS["mx1"])
        out = wd.probe()
        i = info(out)
        h.check(i["policy"] == "may" and i["verified"] == "-", out)
        h.check(s1.messages and s1.messages[0]["tls"], out)
    del recs["_%d._tcp.mx1.dest.example"]
    with_world(recs, run)


# ---- MTA-STS (RFC 8461) --------------------------------------------------------------

STS_ADDR = "127.0.0.7"


def sts_world(mode, *patterns):
    recs = dict(BASE)
    recs["_mta-sts.dest.example"] = [w.txt("v=STSv1; id=20261203;")]
    recs["mta-sts.dest.example"] = [w.a(STS_ADDR)]
    wd = World(recs)
    wd.policy = w.PolicyServer(STS_ADDR, wd.port, CERTS["sts"],
                               w.sts_policy(mode, *patterns))
    return wd


def sts_probe(wd, expect_rc=0, extra=()):
    return wd.probe(args=["--ca-file", CA.cert, "--mta-sts-ca", CA.cert,
                          "--mta-sts-port", str(wd.port)] + list(extra),
                    expect_rc=expect_rc)


def run_sts(wd, fn):
    try:
        fn(wd)
    finally:
        wd.policy.stop()
        wd.close()


def test_mtasts_enforce_verified():
    def run(wd):
        s1 = wd.sink("127.0.0.2", cert=CERTS["mx1"])
        out = sts_probe(wd)
        i = info(out)
        h.check(i["policy"] == "mta-sts" and i["verified"] == "mta-sts", out)
        h.check(s1.messages and s1.messages[0]["tls"], out)
        h.check(wd.policy.fetches == 1, "fetches %d" % wd.policy.fetches)
    run_sts(sts_world("enforce", "*.dest.example"), run)


def test_mtasts_enforce_wrong_name_defers():
    """enforce: a certificate whose name is not the MX host's: deferred
    (451 4.7.5), nothing sent in the clear."""
    def run(wd):
        s1 = wd.sink("127.0.0.2", cert=CERTS["other"])
        s2 = wd.sink("127.0.0.3", cert=CERTS["other"])
        out = sts_probe(wd, expect_rc=1)
        code, enh, perm, _ = failure(out)
        h.check((code, enh, perm) == ("451", "4.7.5", "perm=0"), out)
        h.check(not s1.messages and not s2.messages, "a message was sent")
    run_sts(sts_world("enforce", "*.dest.example"), run)


def test_mtasts_enforce_skips_unlisted_mx():
    """enforce: mx1 is not in the policy's mx list: never connected to."""
    def run(wd):
        s1 = wd.sink("127.0.0.2", cert=CERTS["mx1"])
        s2 = wd.sink("127.0.0.3", cert=CERTS["mx2"])
        out = sts_probe(wd)
        h.check(info(out)["host"] == "mx2.dest.example", out)
        h.check(not s1.conns and len(s2.messages) == 1, out)
    run_sts(sts_world("enforce", "mx2.dest.example"), run)


def test_mtasts_testing_delivers_and_reports():
    """testing: the wrong name is reported (policy_failure), mail goes."""
    def run(wd):
        s1 = wd.sink("127.0.0.2", cert=CERTS["other"])
        out = sts_probe(wd)
        i = info(out)
        h.check(i["policy"] == "mta-sts-testing" and i["verified"] == "-", out)
        h.check("verify" in i.get("policy_failure", ""), out)
        h.check(s1.messages and s1.messages[0]["tls"], out)
    run_sts(sts_world("testing", "*.dest.example"), run)


def test_mtasts_testing_unlisted_not_verified_by_policy():
    """testing: a good certificate on a host the policy does not list is
    verified by its CA, not by MTA-STS (the policy did not hold)."""
    def run(wd):
        s1 = wd.sink("127.0.0.2", cert=CERTS["mx1"])
        out = sts_probe(wd)
        i = info(out)
        h.check(i["host"] == "mx1.dest.example", out)
        h.check(i["policy"] == "mta-sts-testing" and i["verified"] == "ca", out)
        h.check("not listed" in i.get("policy_failure", ""), out)
        h.check(s1.messages and s1.messages[0]["tls"], out)
    run_sts(sts_world("testing", "mx2.dest.example"), run)


# ---- conn_info, failure replies and bind_addr for every URL ------------------------

def test_smtp_url_info_and_failure():
    def run(wd):
        wd.sink("127.0.0.3")
        out = probe("smtp://127.0.0.3:%d" % wd.port)
        i = info(out)
        h.check(i["host"] == "127.0.0.3" and i["port"] == str(wd.port), out)
        h.check(i["policy"] == "-" and i["tried"] == "1", out)
        out = probe("smtp://127.0.0.2:%d" % wd.port, expect_rc=1)
        code, enh, perm, _ = failure(out)
        h.check((code, enh, perm) == ("451", "4.4.1", "perm=0"), out)
    with_world(BASE, run)


def test_bind_addr():
    """The sink sees the bind address as the peer, for smtp:// and mx:."""
    def run(wd):
        s = wd.sink("127.0.0.3")
        probe("smtp://127.0.0.3:%d" % wd.port, args=["--bind", "127.0.0.5"])
        wd.probe(args=["--bind", "127.0.0.6"])
        h.check(s.conns == ["127.0.0.5", "127.0.0.6"], "peers: %r" % s.conns)
        out = probe("smtp://127.0.0.3:%d" % wd.port,
                    args=["--bind", "not-an-address"], expect_rc=1)
        h.check("connect error TERN_EINVAL" in out, out)
    with_world(BASE, run)


# ---- mail loops (self_addrs) and MX names that are addresses ----------------------

def test_self_backup_mx_only_better():
    """We are mx2 (preference 20): only better MX hosts are tried (mx1);
    mx1 refusing is a temporary failure, and mx2 (ourselves) never gets
    a connection."""
    def run(wd):
        s2 = wd.sink("127.0.0.3")
        out = wd.probe(args=["--self-addr", "127.0.0.3"], expect_rc=1)
        code, enh, perm, _ = failure(out)
        h.check((code, enh, perm) == ("451", "4.4.1", "perm=0"), out)
        h.check(not s2.conns, "connected to ourselves: %r" % s2.conns)
    with_world(BASE, run)


def test_self_best_mx_loops():
    """We are the best MX (mx1): mx1 and every worse host (mx2) are
    dropped, none is left: 554 5.4.6, permanent, no connection."""
    def run(wd):
        s1 = wd.sink("127.0.0.2")
        s2 = wd.sink("127.0.0.3")
        out = wd.probe(args=["--self-addr", "::1", "--self-addr",
                             "127.0.0.2"], expect_rc=1)
        code, enh, perm, text = failure(out)
        h.check((code, enh, perm) == ("554", "5.4.6", "perm=1"), out)
        h.check("mail for dest.example loops back to myself" in text, out)
        h.check(not s1.conns and not s2.conns, out)
    with_world(BASE, run)


def test_self_implicit_mx_loops():
    """No MX, the domain's address is ours: 554 5.4.6."""
    recs = {"dest.example": [w.a("127.0.0.4")]}

    def run(wd):
        s = wd.sink("127.0.0.4")
        out = wd.probe(args=["--self-addr", "127.0.0.4"], expect_rc=1)
        code, enh, perm, _ = failure(out)
        h.check((code, enh, perm) == ("554", "5.4.6", "perm=1"), out)
        h.check(not s.conns, out)
    with_world(recs, run)


def test_self_mapped_address_loops():
    """Our address given as IPv4-mapped IPv6 (a dual-stack listener's
    view) is the same address: the best MX is us, 554 5.4.6."""
    def run(wd):
        s1 = wd.sink("127.0.0.2")
        out = wd.probe(args=["--self-addr", "::ffff:127.0.0.2"], expect_rc=1)
        code, enh, perm, _ = failure(out)
        h.check((code, enh, perm) == ("554", "5.4.6", "perm=1"), out)
        h.check(not s1.conns, out)
    with_world(BASE, run)


def test_self_other_address_delivers():
    """An address of ours that no MX host has changes nothing."""
    def run(wd):
        s1 = wd.sink("127.0.0.2")
        out = wd.probe(args=["--self-addr", "127.0.0.9"])
        h.check(info(out)["host"] == "mx1.dest.example", out)
        h.check(len(s1.messages) == 1, out)
    with_world(BASE, run)


def test_self_loopback_net_loops():
    """127.0.0.1 is ours (what a wildcard listener gets from lo's
    127.0.0.1/8): Linux delivers all of 127.0.0.0/8 to that listener, so
    MX hosts at 127.0.0.2 and .3 are ourselves too: 554 5.4.6."""
    def run(wd):
        s1 = wd.sink("127.0.0.2")
        s2 = wd.sink("127.0.0.3")
        out = wd.probe(args=["--self-addr", "127.0.0.1"], expect_rc=1)
        code, enh, perm, _ = failure(out)
        h.check((code, enh, perm) == ("554", "5.4.6", "perm=1"), out)
        h.check(not s1.conns and not s2.conns, out)
    with_world(BASE, run)


def test_self_unspecified_loops():
    """An MX host at 0.0.0.0 (or ::) is this machine whatever our
    addresses: 554 5.4.6 (not a connection to ourselves)."""
    for addr in ("0.0.0.0", "::"):
        recs = {"dest.example": [w.mx(10, "mx1.dest.example")],
                "mx1.dest.example": [w.aaaa(addr) if ":" in addr
                                     else w.a(addr)]}

        def run(wd):
            out = wd.probe(args=["--self-addr", "127.0.0.9"], expect_rc=1)
            code, enh, perm, _ = failure(out)
            h.check((code, enh, perm) == ("554", "5.4.6", "perm=1"),
                    addr + ": " + out)
        with_world(recs, run)


def test_mx_address_literal_ignored():
    """An MX name that is an address in text ("127.0.0.2"; RFC 5321 §5.1
    wants a name) is not used, even when the name resolves: the next
    host takes the message."""
    recs = {"dest.example": [w.mx(10, "127.0.0.2"),
                             w.mx(20, "mx2.dest.example")],
            "127.0.0.2": [w.a("127.0.0.2")],
            "mx2.dest.example": [w.a("127.0.0.3")]}

    def run(wd):
        s1 = wd.sink("127.0.0.2")
        s2 = wd.sink("127.0.0.3")
        out = wd.probe()
        h.check(info(out)["host"] == "mx2.dest.example", out)
        h.check(not s1.conns and len(s2.messages) == 1, out)
    with_world(recs, run)


def test_mx_only_address_literals_defers():
    """Every MX name is an address literal: 451 4.4.3, no connection."""
    recs = {"dest.example": [w.mx(10, "127.0.0.2")],
            "127.0.0.2": [w.a("127.0.0.2")]}

    def run(wd):
        s1 = wd.sink("127.0.0.2")
        out = wd.probe(expect_rc=1)
        code, enh, perm, text = failure(out)
        h.check((code, enh, perm) == ("451", "4.4.3", "perm=0"), out)
        h.check("MX points at an address literal" in text, out)
        h.check(not s1.conns, out)
    with_world(recs, run)


CA = None
CERTS = {}


def setup():
    global CA
    CA = w.CA()
    CERTS["mx1"] = CA.leaf("mx1.dest.example")
    CERTS["other"] = CA.leaf("other.dest.example")
    CERTS["mx2"] = CA.leaf("mx2.dest.example")
    CERTS["sts"] = CA.leaf("mta-sts.dest.example")


if __name__ == "__main__":
    setup()
    h.main([
        test_mx_order_first_refuses,
        test_mx_order_preference,
        test_greeting_4xx_next_host,
        test_host_addresses_in_turn,
        test_implicit_mx,
        test_null_mx,
        test_no_such_domain,
        test_every_host_refuses,
        test_at_most_ten_addresses,
        test_may_broken_tls_goes_clear,
        test_may_tls_unverified,
        test_encrypt_without_starttls_fails,
        test_verify_wrong_name_fails,
        test_verify_right_name,
        test_none_policy_never_starttls,
        test_unsigned_tlsa_ignored,
        test_requiretls_without_starttls_bounces,
        test_mtasts_enforce_verified,
        test_mtasts_enforce_wrong_name_defers,
        test_mtasts_enforce_skips_unlisted_mx,
        test_mtasts_testing_delivers_and_reports,
        test_mtasts_testing_unlisted_not_verified_by_policy,
        test_smtp_url_info_and_failure,
        test_bind_addr,
        test_self_backup_mx_only_better,
        test_self_best_mx_loops,
        test_self_implicit_mx_loops,
        test_self_mapped_address_loops,
        test_self_other_address_delivers,
        test_self_loopback_net_loops,
        test_self_unspecified_loops,
        test_mx_address_literal_ignored,
        test_mx_only_address_literals_defers,
    ])
