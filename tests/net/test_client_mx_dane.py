#!/usr/bin/env python3
"""DANE (RFC 7672) and REQUIRETLS with DNSSEC for the client's "mx:" URLs:
NSD serves a zone signed by ldns-signzone on 127.0.0.1 (a random port),
the tern resolver forwards to it with the zone's KSK as trust anchor;
SMTP sinks with STARTTLS listen on 127.0.0.x at one port (mx_port).
DANE-EE 3 1 1 that matches -> verified by DANE; a wrong TLSA record ->
deferred, nothing sent; DANE-TA 2 0 1 -> verified; REQUIRETLS with a
DNSSEC-validated MX and a verified certificate -> sent, without
REQUIRETLS offered -> 550 5.7.30. Loopback only."""

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
from test_client_mx import ADDRS, failure, info
from test_client_runtime import probe

CA = None
CERTS = {}


class DaneWorld:
    def __init__(self, extra, tamper=(), fails=None, base=None, local=None):
        self.port = w.shared_port(ADDRS)
        if base is None:
            base = ["@ IN MX 10 mx1", "mx1 IN A 127.0.0.2"]
        recs = list(base) + [r.replace("PORT", str(self.port)) for r in extra]
        self.dns = w.SignedDNS("dest.example", recs, tamper=tamper)
        self.proxy = (w.FailingProxy(self.dns.addr, fails or
                                     (lambda name, qtype: False), local=local)
                      if fails or local else None)
        self.sinks = []

    def sink(self, addr, **kw):
        s = w.Sink(addr, self.port, **kw)
        self.sinks.append(s)
        return s

    def probe(self, args=(), expect_rc=0):
        a = ["--resolver", (self.proxy or self.dns).addr, "--trust-anchor",
             self.dns.trust_anchor, "--no-mta-sts", "--mx-port",
             str(self.port)]
        return probe("mx:dest.example", rcpts=("bob@dest.example",),
                     args=a + list(args), expect_rc=expect_rc)

    def close(self):
        for s in self.sinks:
            s.stop()
        if self.proxy:
            self.proxy.stop()
        self.dns.stop()


def with_world(extra, fn, **kw):
    wd = DaneWorld(extra, **kw)
    try:
        fn(wd)
    finally:
        wd.close()


def test_dane_ee_match():
    spki = CA.spki_sha256(CERTS["mx1"][0])

    def run(wd):
        s = wd.sink("127.0.0.2", cert=CERTS["mx1"])
        out = wd.probe()
        i = info(out)
        h.check(i["policy"] == "dane" and i["verified"] == "dane-ee", out)
        h.check(s.messages and s.messages[0]["tls"], out)
    with_world(["_PORT._tcp.mx1 IN TLSA 3 1 1 " + spki], run)


def test_dane_ee_name_not_checked():
    """DANE-EE: the key is what counts, not the name (RFC 7672 §3.1.1)."""
    spki = CA.spki_sha256(CERTS["other"][0])

    def run(wd):
        s = wd.sink("127.0.0.2", cert=CERTS["other"])
        out = wd.probe()
        h.check(info(out)["verified"] == "dane-ee", out)
        h.check(len(s.messages) == 1, out)
    with_world(["_PORT._tcp.mx1 IN TLSA 3 1 1 " + spki], run)


def test_dane_mismatch_defers():
    """A TLSA record that matches no key: 451 4.7.5, never in the clear."""
    def run(wd):
        s = wd.sink("127.0.0.2", cert=CERTS["mx1"])
        out = wd.probe(expect_rc=1)
        code, enh, perm, _ = failure(out)
        h.check((code, enh, perm) == ("451", "4.7.5", "perm=0"), out)
        h.check(len(s.conns) == 1 and not s.messages,
                "conns %r messages %d" % (s.conns, len(s.messages)))
    with_world(["_PORT._tcp.mx1 IN TLSA 3 1 1 " + "ab" * 32], run)


def test_dane_ta_match():
    ca = CA.cert_sha256_hex()

    def run(wd):
        s = wd.sink("127.0.0.2", cert=CERTS["mx1_chain"])
        out = wd.probe()
        h.check(info(out)["verified"] == "dane-ta", out)
        h.check(len(s.messages) == 1, out)
    with_world(["_PORT._tcp.mx1 IN TLSA 2 0 1 " + ca], run)


def test_dane_ta_wrong_name_defers():
    """DANE-TA checks the name: the MX host's (RFC 7672 §3.2.2)."""
    ca = CA.cert_sha256_hex()

    def run(wd):
        s = wd.sink("127.0.0.2", cert=CERTS["other_chain"])
        out = wd.probe(expect_rc=1)
        code, enh, _, _ = failure(out)
        h.check((code, enh) == ("451", "4.7.5"), out)
        h.check(not s.messages, out)
    with_world(["_PORT._tcp.mx1 IN TLSA 2 0 1 " + ca], run)


def test_signed_no_tlsa_is_may():
    """A signed zone without TLSA records: opportunistic TLS."""
    def run(wd):
        s = wd.sink("127.0.0.2", cert=CERTS["other"])
        out = wd.probe()
        i = info(out)
        h.check(i["policy"] == "may" and i["verified"] == "-", out)
        h.check(s.messages and s.messages[0]["tls"], out)
    with_world([], run)


def test_dane_forced_without_tlsa_defers():
    def run(wd):
        s = wd.sink("127.0.0.2", cert=CERTS["mx1"])
        out = wd.probe(args=["--tls-policy", "dane"], expect_rc=1)
        code, enh, _, _ = failure(out)
        h.check((code, enh) == ("451", "4.7.5"), out)
        h.check(not s.conns, out)
    with_world([], run)


def test_requiretls_dnssec_verified():
    """REQUIRETLS: DNSSEC-validated MX + certificate verified for the MX
    host + REQUIRETLS offered: sent, with REQUIRETLS on MAIL."""
    def run(wd):
        s = wd.sink("127.0.0.2", cert=CERTS["mx1"], requiretls=True)
        out = wd.probe(args=["--requiretls", "--ca-file", CA.cert])
        i = info(out)
        # the policy that applied: verified TLS for REQUIRETLS, not "may"
        h.check(i["verified"] == "ca" and i["policy"] == "requiretls-verify",
                out)
        h.check(len(s.messages) == 1 and "REQUIRETLS" in s.messages[0]["mail"],
                out)
    with_world([], run)


def test_requiretls_not_offered_bounces():
    def run(wd):
        s = wd.sink("127.0.0.2", cert=CERTS["mx1"])
        out = wd.probe(args=["--requiretls", "--ca-file", CA.cert],
                       expect_rc=1)
        code, enh, perm, text = failure(out)
        h.check((code, enh, perm) == ("550", "5.7.30", "perm=1"), out)
        h.check("REQUIRETLS" in text and not s.messages, out)
        h.wait_for(lambda: s.quits == 1, 5, "QUIT at the host without "
                   "REQUIRETLS (RFC 8689 §4.2.1)")
    with_world([], run)


# ---- a failed address lookup never turns DANE off (RFC 7672 §2.1.1, §2.2) -------

def test_bogus_aaaa_skips_host():
    """mx1's A validates, its AAAA is forged (bogus): mx1 is not used at
    all (not in the clear, not over its A), mx2 takes the message with
    DANE."""
    spki = CA.spki_sha256(CERTS["other"][0])

    def run(wd):
        s1 = wd.sink("127.0.0.2")  # no STARTTLS: plaintext if used
        s2 = wd.sink("127.0.0.3", cert=CERTS["other"])
        out = wd.probe()
        i = info(out)
        h.check(i["host"] == "mx2.dest.example" and i["verified"] == "dane-ee",
                out)
        h.check(not s1.conns, "mx1 (bogus AAAA) got %r" % s1.conns)
        h.check(len(s2.messages) == 1 and s2.messages[0]["tls"], out)
    with_world(["mx1 IN AAAA 2001:db8::1", "@ IN MX 20 mx2",
                "mx2 IN A 127.0.0.3",
                "_PORT._tcp.mx1 IN TLSA 3 1 1 " + spki,
                "_PORT._tcp.mx2 IN TLSA 3 1 1 " + spki], run,
               tamper=[("2001:db8::1", "2001:db8::2")])


def test_servfail_aaaa_defers():
    """mx1's AAAA question gets SERVFAIL (its A validates): the only
    host is unusable, 451 4.4.3, no connection (never plaintext)."""
    spki = CA.spki_sha256(CERTS["other"][0])

    def run(wd):
        s1 = wd.sink("127.0.0.2")
        out = wd.probe(expect_rc=1)
        code, enh, perm, text = failure(out)
        h.check((code, enh, perm) == ("451", "4.4.3", "perm=0"), out)
        h.check("mx1.dest.example" in text, out)
        h.check(not s1.conns, "mx1 got %r" % s1.conns)
    with_world(["mx1 IN AAAA 2001:db8::1",
                "_PORT._tcp.mx1 IN TLSA 3 1 1 " + spki], run,
               fails=lambda name, qtype: name == "mx1.dest.example."
               and qtype == "AAAA")


def test_insecure_host_failed_aaaa_delivers():
    """Signed MX, the host in an unsigned zone: its A answers (insecure),
    its AAAA gets SERVFAIL. DANE can never apply to that host, so the
    failed AAAA is no attack on it: the A address is used (opportunistic
    TLS), not 451 4.4.3 for ever."""
    def run(wd):
        s1 = wd.sink("127.0.0.2")
        out = wd.probe()
        i = info(out)
        h.check(i["host"] == "mx.unsigned.example" and i["policy"] == "may",
                out)
        h.check(len(s1.messages) == 1, out)

    def local(name, qtype):
        if name == "mx.unsigned.example." and qtype == "A":
            return ["127.0.0.2"]
        if name == "mx.unsigned.example." and qtype == "AAAA":
            return "SERVFAIL"
        return None
    with_world([], run, base=["@ IN MX 10 mx.unsigned.example."], local=local)


# ---- an MX host that is a CNAME (RFC 7672 §2.2.2, §3.2.3) ---------------------------

CNAME_BASE = ["@ IN MX 10 mx1", "mx1 IN CNAME real", "real IN A 127.0.0.2"]


def test_cname_tlsa_at_expanded_name():
    """mx1 is a CNAME for real (signed): the TLSA records of the expanded
    name (_25._tcp.real) apply; a host without STARTTLS never gets the
    message in the clear; with the right key: DANE-EE."""
    spki = CA.spki_sha256(CERTS["other"][0])

    def run(wd):
        s = wd.sink("127.0.0.2", cert=CERTS["other"])
        out = wd.probe()
        i = info(out)
        h.check(i["policy"] == "dane" and i["verified"] == "dane-ee", out)
        h.check(len(s.messages) == 1 and s.messages[0]["tls"], out)
    with_world(["_PORT._tcp.real IN TLSA 3 1 1 " + spki], run,
               base=CNAME_BASE)


def test_cname_expanded_tlsa_no_starttls_defers():
    spki = CA.spki_sha256(CERTS["other"][0])

    def run(wd):
        s = wd.sink("127.0.0.2")  # no STARTTLS
        out = wd.probe(expect_rc=1)
        code, enh, perm, _ = failure(out)
        h.check((code, enh, perm) == ("451", "4.7.5", "perm=0"), out)
        h.check(not s.messages, "sent in the clear: %r" % s.messages)
    with_world(["_PORT._tcp.real IN TLSA 3 1 1 " + spki], run,
               base=CNAME_BASE)


def test_cname_tlsa_at_original_name():
    """No TLSA at the expanded name (validated denial): the original
    MX host name's records apply."""
    spki = CA.spki_sha256(CERTS["other"][0])

    def run(wd):
        s = wd.sink("127.0.0.2", cert=CERTS["other"])
        out = wd.probe()
        h.check(info(out)["verified"] == "dane-ee", out)
        h.check(len(s.messages) == 1, out)
    with_world(["_PORT._tcp.mx1 IN TLSA 3 1 1 " + spki], run,
               base=CNAME_BASE)


def test_cname_dane_ta_expanded_name():
    """DANE-TA with a certificate for the expanded name (real): that name
    is a reference identifier too (RFC 7672 §3.2.3)."""
    ca = CA.cert_sha256_hex()

    def run(wd):
        s = wd.sink("127.0.0.2", cert=CERTS["real_chain"])
        out = wd.probe()
        h.check(info(out)["verified"] == "dane-ta", out)
        h.check(len(s.messages) == 1, out)
    with_world(["_PORT._tcp.real IN TLSA 2 0 1 " + ca], run,
               base=CNAME_BASE)


# ---- TLSA records none of which SMTP can use (RFC 7672 §3.1.3) --------------------

def test_unusable_tlsa_needs_tls():
    """Only PKIX-EE (usage 1) records: TLS stays mandatory: a host
    without STARTTLS is not used, 451 4.7.5, nothing sent."""
    spki = CA.spki_sha256(CERTS["mx1"][0])

    def run(wd):
        s = wd.sink("127.0.0.2")
        out = wd.probe(expect_rc=1)
        code, enh, perm, _ = failure(out)
        h.check((code, enh, perm) == ("451", "4.7.5", "perm=0"), out)
        h.check(not s.messages, out)
    with_world(["_PORT._tcp.mx1 IN TLSA 1 1 1 " + spki,
                "_PORT._tcp.mx1 IN TLSA 3 1 9 " + spki], run)


def test_unusable_tlsa_encrypts():
    """Only unusable records, STARTTLS offered: sent over TLS, not
    verified (as encrypt), policy "dane-unusable"."""
    spki = CA.spki_sha256(CERTS["mx1"][0])

    def run(wd):
        s = wd.sink("127.0.0.2", cert=CERTS["other"])
        out = wd.probe()
        i = info(out)
        h.check(i["policy"] == "dane-unusable" and i["verified"] == "-", out)
        h.check(len(s.messages) == 1 and s.messages[0]["tls"], out)
    with_world(["_PORT._tcp.mx1 IN TLSA 0 0 1 " + spki], run)


def setup():
    global CA
    CA = w.CA()
    CERTS["mx1"] = CA.leaf("mx1.dest.example")
    CERTS["other"] = CA.leaf("other.dest.example")
    CERTS["mx1_chain"] = CA.chain(CERTS["mx1"])
    CERTS["other_chain"] = CA.chain(CERTS["other"])
    CERTS["real"] = CA.leaf("real.dest.example")
    CERTS["real_chain"] = CA.chain(CERTS["real"])


if __name__ == "__main__":
    setup()
    h.main([
        test_dane_ee_match,
        test_dane_ee_name_not_checked,
        test_dane_mismatch_defers,
        test_dane_ta_match,
        test_dane_ta_wrong_name_defers,
        test_signed_no_tlsa_is_may,
        test_dane_forced_without_tlsa_defers,
        test_requiretls_dnssec_verified,
        test_requiretls_not_offered_bounces,
        test_bogus_aaaa_skips_host,
        test_servfail_aaaa_defers,
        test_insecure_host_failed_aaaa_delivers,
        test_cname_tlsa_at_expanded_name,
        test_cname_expanded_tlsa_no_starttls_defers,
        test_cname_tlsa_at_original_name,
        test_cname_dane_ta_expanded_name,
        test_unusable_tlsa_needs_tls,
        test_unusable_tlsa_encrypts,
    ])
