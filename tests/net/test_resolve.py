#!/usr/bin/env python3
"""The resolver (tern/resolve.h, src/net/resolve.c, src/net/mtasts_fetch.c)
through tests/net/test_resolve_probe.c, against servers of our own on
127.0.0.1 only (never this machine's resolver): a dnslib DNS server (UDP
and TCP, random port) the resolver forwards to; NSD serving a signed, a
tampered and an unsigned zone (ldns-keygen, ldns-signzone) for DNSSEC;
a server that never answers, for timeouts; HTTPS servers (Python's
http.server over TLS, certificates from the test CA) for MTA-STS
policies, whose names the test DNS resolves to 127.0.0.1."""

import os
import sys

try:
    import dnslib  # noqa: F401  (Debian's python3-dnslib)
except ImportError:  # another python3 first on PATH: use Debian's
    if sys.executable != "/usr/bin/python3" and os.path.exists("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    raise

import http.server
import re
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time

from dnslib import QTYPE, RCODE, RR, DNSRecord
from dnslib.server import BaseResolver, DNSServer

import harness as h

TLSA_HEX = "a1" * 32

# Names under example.org/example.net, never .test: unbound answers
# "test." (RFC 6761) itself, NXDOMAIN, without asking the forwarder.

ZONE = """
example.org. 300 IN MX 20 mx2.example.org.
example.org. 300 IN MX 10 mx1.example.org.
mx1.example.org. 300 IN A 127.0.0.11
mx1.example.org. 300 IN AAAA ::1
mx2.example.org. 300 IN A 127.0.0.12
mx2.example.org. 300 IN A 127.0.0.13
_25._tcp.mx1.example.org. 300 IN TLSA 3 1 1 %(tlsa)s
_25._tcp.mx1.example.org. 300 IN TLSA 2 0 2 %(tlsa)s%(tlsa)s
equal.example.net. 300 IN MX 5 first.equal.example.net.
equal.example.net. 300 IN MX 10 a.equal.example.net.
equal.example.net. 300 IN MX 10 b.equal.example.net.
equal.example.net. 300 IN MX 10 c.equal.example.net.
equal.example.net. 300 IN MX 10 d.equal.example.net.
first.equal.example.net. 300 IN A 127.0.0.20
a.equal.example.net. 300 IN A 127.0.0.21
b.equal.example.net. 300 IN A 127.0.0.22
c.equal.example.net. 300 IN A 127.0.0.23
d.equal.example.net. 300 IN A 127.0.0.24
implicit.example.net. 300 IN A 127.0.0.30
implicit.example.net. 300 IN TXT "no mx here"
nullmx.example.net. 300 IN MX 0 .
nohost.example.net. 300 IN MX 10 gone.nowhere.example.net.
""" % {"tlsa": TLSA_HEX}
ZONE += "".join("many.example.net. 300 IN MX %d m%02d.many.example.net.\nm%02d.many.example.net. 300 IN A 127.0.1.%d\n"
                % (i, i, i, i) for i in range(12))

POLICY = ("version: STSv1\r\nmode: enforce\r\nmx: mx1.example.org\r\n"
          "mx: *.Example.NET\r\nmax_age: 86400\r\n")
STS_DOMAINS = ["example.org", "redirect.example.net", "big.example.net", "ctype.example.net",
               "keep.example.net", "multi.example.net", "none.example.net"]


def sts_zone(ids):
    # TTL 0 on the ids: a changed id must reach the resolver at once
    z = ""
    for d in STS_DOMAINS:
        z += "mta-sts.%s. 300 IN A 127.0.0.1\n" % d
        if d == "none.example.net":
            continue
        z += '_mta-sts.%s. 0 IN TXT "v=STSv1; id=%s;"\n' % (d, ids.get(d, "id1"))
    z += '_mta-sts.multi.example.net. 300 IN TXT "v=STSv1; id=other;"\n'
    # one record of several strings, to be joined
    z += '_mta-sts.split.example.net. 300 IN TXT "v=STSv1; " "id=split1;"\n'
    z += "mta-sts.split.example.net. 300 IN A 127.0.0.1\n"
    z += '_mta-sts.split.example.net. 300 IN TXT "not an sts record"\n'
    return z


# ---- the test DNS ---------------------------------------------------------

class ZoneResolver(BaseResolver):
    def __init__(self, text):
        self.servfail = {"servfail.example.net."}
        self.set(text)

    def set(self, text):
        self.rrs = RR.fromZone(text)
        self.queries = []

    def resolve(self, request, handler):
        reply = request.reply()
        q = request.q
        name = str(q.qname).lower()
        self.queries.append((name, QTYPE[q.qtype]))
        if name in self.servfail:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        exists = False
        for rr in self.rrs:
            if str(rr.rname).lower() == name:
                exists = True
                if rr.rtype == q.qtype:
                    reply.add_answer(rr)
        if not exists:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class QuietLogger:
    def __getattr__(self, name):
        return lambda *a, **k: None


class TestDNS:
    def __init__(self, text):
        self.resolver = ZoneResolver(text)
        for _ in range(20):
            port = h.free_port()
            try:
                self.udp = DNSServer(self.resolver, address="127.0.0.1", port=port)
                self.tcp = DNSServer(self.resolver, address="127.0.0.1", port=port,
                                     tcp=True)
            except OSError:
                continue
            break
        else:
            h.fail("no port for the test DNS")
        self.port = port
        for s in (self.udp, self.tcp):
            s.server.logger = QuietLogger()
            s.start_thread()

    def stop(self):
        self.udp.stop()
        self.tcp.stop()


class BlackHole:
    """Takes DNS queries over UDP and TCP and never answers."""
    def __init__(self):
        # the UDP port the kernel picks may be taken for TCP by another
        # test running at the same time: pick again (bounded)
        for _ in range(50):
            self.u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.u.bind(("127.0.0.1", 0))
            self.port = self.u.getsockname()[1]
            self.t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                self.t.bind(("127.0.0.1", self.port))
                break
            except OSError:
                self.u.close()
                self.t.close()
        else:
            raise OSError("no port free for both UDP and TCP")
        self.t.listen(16)

    def stop(self):
        self.u.close()
        self.t.close()


# ---- the probe --------------------------------------------------------------

def probe_path():
    p = os.environ.get("TERN_RESOLVE_PROBE")
    if not p:
        p = os.path.join(os.path.dirname(h.capture_server_path()), "resolve_probe")
    h.check(os.access(p, os.X_OK), "resolve_probe not executable: %s" % p)
    return p


class Probe:
    def __init__(self, *args):
        self.p = subprocess.Popen([probe_path()] + list(args), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE)
        self.buf = b""
        first = self.read_line(10)
        h.check(first == "ready", "probe did not start: %r" % first)

    def read_line(self, timeout):
        """One line, from our own buffer over the raw pipe (a buffered
        reader would hide lines from select)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            r, _, _ = select.select([self.p.stdout], [], [], max(0, left))
            h.check(r, "probe: no output within %s s" % timeout)
            chunk = os.read(self.p.stdout.fileno(), 65536)
            h.check(chunk, "probe ended early (rc %s)" % self.p.poll())
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def cmd(self, line, timeout=20):
        self.p.stdin.write(line.encode() + b"\n")
        self.p.stdin.flush()
        out = []
        deadline = time.monotonic() + timeout
        while True:
            ln = self.read_line(max(0.1, deadline - time.monotonic()))
            if ln == "END":
                return out
            # never: a callback from inside the call that started it
            h.check("INSIDE START" not in ln, "%s: %s" % (line, ln))
            out.append(ln)

    def close(self):
        self.p.stdin.close()
        rc = self.p.wait(20)
        rest = self.buf + self.p.stdout.read()
        h.check(rc == 0, "probe exit %s: %r" % (rc, rest))


def kv(line):
    return dict(m.group(1, 2) for m in re.finditer(r"(\w+)=(\S*)", line))


def mx(p, domain):
    out = p.cmd("mx " + domain)
    h.check(out and out[0].startswith("mx "), "mx %s: %r" % (domain, out))
    res = kv(out[0].split(" why=")[0])
    res["why"] = out[0].split(" why=", 1)[1]
    res["hosts"] = []
    for ln in out[1:]:
        parts = ln.split()
        hd = kv(ln)
        hd["name"] = parts[1]
        res["hosts"].append(hd)
    return res


WORLD = {}


def world():
    if not WORLD:
        WORLD["dns"] = TestDNS(ZONE)
    return WORLD["dns"]


def plain_probe(*extra):
    return Probe("--forward", "127.0.0.1:%d" % world().port, "--no-dnssec",
                 "--timeout", "3000", *extra)


# ---- MX ---------------------------------------------------------------------

def test_mx_order():
    p = plain_probe()
    r = mx(p, "Example.ORG.")
    h.check(r["status"] == "OK" and r["implicit"] == "0" and r["secure"] == "0", r)
    names = [x["name"] for x in r["hosts"]]
    h.check(names == ["mx1.example.org", "mx2.example.org"], names)
    h.check(r["hosts"][0]["pref"] == "10" and r["hosts"][1]["pref"] == "20", r)
    # IPv6 first, then IPv4
    h.check(r["hosts"][0]["addrs"] == "::1,127.0.0.11", r["hosts"][0])
    h.check(sorted(r["hosts"][1]["addrs"].split(",")) == ["127.0.0.12", "127.0.0.13"],
            r["hosts"][1])
    p.close()
    # address families as asked
    p = plain_probe("--no-ipv6")
    r = mx(p, "example.org")
    h.check(r["hosts"][0]["addrs"] == "127.0.0.11", r)
    p.close()


def test_mx_equal_preference_shuffled():
    p = plain_probe()
    orders = set()
    for _ in range(12):
        r = mx(p, "equal.example.net")
        names = [x["name"] for x in r["hosts"]]
        h.check(names[0] == "first.equal.example.net", names)
        h.check(sorted(names[1:]) == ["%s.equal.example.net" % c for c in "abcd"], names)
        orders.add(tuple(names[1:]))
    # 12 draws of 24 orders all equal: 1 in 24^11
    h.check(len(orders) > 1, "equal preferences never shuffled: %r" % orders)
    p.close()


def test_mx_capped_at_ten():
    p = plain_probe()
    r = mx(p, "many.example.net")
    names = [x["name"] for x in r["hosts"]]
    h.check(names == ["m%02d.many.example.net" % i for i in range(10)], names)
    p.close()


def test_mx_implicit():
    p = plain_probe()
    r = mx(p, "implicit.example.net")
    h.check(r["status"] == "OK" and r["implicit"] == "1", r)
    h.check(len(r["hosts"]) == 1 and r["hosts"][0]["name"] == "implicit.example.net", r)
    h.check(r["hosts"][0]["pref"] == "0" and r["hosts"][0]["addrs"] == "127.0.0.30", r)
    p.close()


def test_mx_null_nxdomain_servfail():
    p = plain_probe()
    r = mx(p, "nullmx.example.net")
    h.check(r["status"] == "NULLMX" and not r["hosts"], r)
    h.check("null MX" in r["why"], r)
    r = mx(p, "nowhere.example.net")
    h.check(r["status"] == "NXDOMAIN", r)
    r = mx(p, "servfail.example.net")
    h.check(r["status"] == "TEMPFAIL", r)
    # an MX host without addresses: reported per host
    r = mx(p, "nohost.example.net")
    h.check(r["status"] == "OK" and r["hosts"][0]["status"] == "NXDOMAIN", r)
    h.check(r["hosts"][0]["addrs"] == "", r)
    # IP literals and junk are refused at the call
    out = p.cmd("mx [127.0.0.1]")
    h.check(out and "error -1" in out[0], out)
    out = p.cmd("mx 127.0.0.1")
    h.check(out and "error -1" in out[0], out)
    out = p.cmd("mx bad..name")
    h.check(out and "error -1" in out[0], out)
    p.close()


def test_hosts_file():
    d = h.tmpdir("tern-hosts-")
    hosts = os.path.join(d, "hosts")
    with open(hosts, "w") as f:
        f.write("127.0.0.77 hosted.example.org\n")
    p = plain_probe("--hosts", hosts, "--no-ipv6")
    r = mx(p, "hosted.example.org")
    h.check(r["status"] == "OK" and r["implicit"] == "1", r)
    h.check(r["hosts"][0]["addrs"] == "127.0.0.77", r)
    # other names still come from the DNS
    r = mx(p, "example.org")
    h.check(r["status"] == "OK" and len(r["hosts"]) == 2, r)
    p.close()
    shutil.rmtree(d, ignore_errors=True)


def test_timeout_is_tempfail_within_bound():
    bh = BlackHole()
    try:
        p = Probe("--forward", "127.0.0.1:%d" % bh.port, "--no-dnssec",
                  "--timeout", "800")
        t = time.monotonic()
        r = mx(p, "example.org")
        took = time.monotonic() - t
        h.check(r["status"] == "TEMPFAIL" and "timed out" in r["why"], r)
        # upper bound loose: a loaded CI machine is slow, the point is that
        # the query ends (TEMPFAIL) near its bound, not after unbound's own
        h.check(0.7 <= took < 6.0, "took %.2f s for an 800 ms bound" % took)
        out = p.cmd("tlsa mx1.example.org 25")
        h.check("status=TEMPFAIL" in out[0], out)
        out = p.cmd("sts example.org")
        h.check("sts none" in out[0] and "timed out" in out[0], out)
        p.close()
        # freed with queries waiting for the silent server: at once
        p = Probe("--forward", "127.0.0.1:%d" % bh.port, "--no-dnssec")
        out = p.cmd("free-pending example.org")
        h.check(len(out) == 1 and out[0].startswith("freed"), out)
        h.check(int(kv(out[0])["free_ms"]) < 1000, out)
        p.close()
    finally:
        bh.stop()


# ---- TLSA -------------------------------------------------------------------

def test_tlsa():
    p = plain_probe()
    out = p.cmd("tlsa MX1.example.org 25")
    h.check(kv(out[0])["status"] == "OK" and kv(out[0])["n"] == "2", out)
    recs = sorted(out[1:])
    h.check(recs == sorted(["rec 3 1 1 " + TLSA_HEX, "rec 2 0 2 " + TLSA_HEX * 2]), recs)
    out = p.cmd("tlsa mx2.example.org 25")
    h.check(kv(out[0])["status"] == "NXDOMAIN", out)
    out = p.cmd("tlsa mx1.example.org 0")
    h.check("error -1" in out[0], out)
    p.close()


# ---- cancel, free from a callback ---------------------------------------------

def test_cancel_and_free_in_callback():
    p = plain_probe()
    out = p.cmd("cancel example.org")
    h.check(out == ["cancelled"], out)
    out = p.cmd("cancel-sts example.org")
    h.check(out == ["cancelled"], out)
    out = p.cmd("free-in-cb example.org")
    h.check(len(out) == 2 and out[0].startswith("first status=") and
            out[1] == "loop empty", out)
    p.close()


def test_bad_options():
    p = subprocess.run([probe_path(), "--forward", "127.0.0.1:99999"],
                       input="", capture_output=True, text=True, timeout=20)
    h.check(p.returncode == 1 and "error -1" in p.stdout and "forward" in p.stdout,
            p.stdout)
    p = subprocess.run([probe_path(), "--ta", "/nonexistent/root.key"],
                       input="", capture_output=True, text=True, timeout=20)
    h.check(p.returncode == 1 and "error -16" in p.stdout and
            "/nonexistent/root.key" in p.stdout, p.stdout)
    # forwarder lists: spaces or commas, IPv6 bare or in brackets
    for good in ("127.0.0.1:53, [::1]:5353 ::1", "127.0.0.2", "[::1]"):
        p = subprocess.run([probe_path(), "--forward", good, "--no-dnssec"], input="",
                           capture_output=True, text=True, timeout=20)
        h.check(p.returncode == 0 and p.stdout.startswith("ready"), (good, p.stdout))
    for bad in ("", "[::1", "[::1]x", "1.2.3.4:0", "1.2.3.4:x", "mx.example.org:53",
                "1.2.3.4:53:53", "300.1.1.1"):
        p = subprocess.run([probe_path(), "--forward", bad, "--no-dnssec"], input="",
                           capture_output=True, text=True, timeout=20)
        h.check(p.returncode == 1 and "error -1" in p.stdout, (bad, p.stdout))
    p = subprocess.run([probe_path(), "--sts-port", "70000"], input="",
                       capture_output=True, text=True, timeout=20)
    h.check(p.returncode == 1 and "mta_sts_port" in p.stdout, p.stdout)
    d = h.tmpdir("tern-ta-")
    bad = os.path.join(d, "bad.key")
    with open(bad, "w") as f:
        f.write("example.org. IN DNSKEY this is not a key\n")
    p = subprocess.run([probe_path(), "--ta", bad], input="", capture_output=True,
                       text=True, timeout=20)
    shutil.rmtree(d, ignore_errors=True)
    h.check(p.returncode == 1 and "error -16" in p.stdout and bad in p.stdout and
            "malformed" in p.stdout, p.stdout)
    p = subprocess.run([probe_path(), "--hosts", "/nonexistent/hosts"],
                       input="", capture_output=True, text=True, timeout=20)
    h.check(p.returncode == 1 and "error -16" in p.stdout and
            "/nonexistent/hosts" in p.stdout, p.stdout)
    p = subprocess.run([probe_path(), "--resolv-conf", "/nonexistent/resolv.conf"],
                       input="", capture_output=True, text=True, timeout=20)
    h.check(p.returncode == 1 and "/nonexistent/resolv.conf" in p.stdout, p.stdout)


# ---- DNSSEC: NSD with signed zones ----------------------------------------------

SIGNED_ZONE = """$ORIGIN %(z)s.
$TTL 300
@ IN SOA ns.%(z)s. admin.%(z)s. 1 3600 600 86400 300
@ IN NS ns.%(z)s.
ns IN A 127.0.0.1
@ IN MX 10 mx.%(z)s.
mx IN A 127.0.0.31
_25._tcp.mx IN TLSA 3 1 1 %(tlsa)s
"""


def tamper(path):
    """Break the MX RRSIG's signature: one changed base64 character."""
    lines = open(path).read().split("\n")
    for i, ln in enumerate(lines):
        f = ln.split()
        if len(f) > 5 and f[3] == "RRSIG" and f[4] == "MX":
            sig = f[-1]
            k = len(sig) // 2
            f[-1] = sig[:k] + ("A" if sig[k] != "A" else "B") + sig[k + 1:]
            lines[i] = "\t".join(f)
            break
    else:
        h.fail("no MX RRSIG in %s" % path)
    open(path, "w").write("\n".join(lines))


def start_nsd(d):
    for tool in ("nsd", "ldns-keygen", "ldns-signzone"):
        h.check(shutil.which(tool) or os.path.exists("/usr/sbin/" + tool),
                "%s is missing (scripts/install-deps)" % tool)
    nsd = shutil.which("nsd") or "/usr/sbin/nsd"
    ta = []
    zones = ""
    for z in ("signed.example.net", "bogus.example.net", "unsigned.example.net"):
        zf = os.path.join(d, z + ".zone")
        with open(zf, "w") as f:
            f.write(SIGNED_ZONE % {"z": z, "tlsa": TLSA_HEX})
        served = zf
        if z != "unsigned.example.net":
            key = subprocess.run(["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", z],
                                 cwd=d, capture_output=True, text=True, check=True
                                 ).stdout.strip()
            subprocess.run(["ldns-signzone", "-n", zf, key], cwd=d, check=True,
                           capture_output=True)
            served = zf + ".signed"
            ta.append(open(os.path.join(d, key + ".key")).read())
            if z == "bogus.example.net":
                tamper(served)
        zones += "zone:\n  name: %s\n  zonefile: %s\n" % (z, served)
    tafile = os.path.join(d, "ta.key")
    with open(tafile, "w") as f:
        f.write("".join(ta))
    port = h.free_port()
    conf = os.path.join(d, "nsd.conf")
    with open(conf, "w") as f:
        f.write("""server:
  ip-address: 127.0.0.1@%(port)d
  port: %(port)d
  username: ""
  chroot: ""
  zonesdir: "%(d)s"
  database: ""
  pidfile: "%(d)s/nsd.pid"
  zonelistfile: "%(d)s/zone.list"
  xfrdfile: "%(d)s/xfrd.state"
  xfrdir: "%(d)s"
  logfile: "%(d)s/nsd.log"
  server-count: 1
  verbosity: 1
remote-control:
  control-enable: no
%(zones)s""" % {"port": port, "d": d, "zones": zones})
    proc = subprocess.Popen([nsd, "-d", "-c", conf], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)

    def answers():
        h.check(proc.poll() is None, "nsd exited: %s" % _read(os.path.join(d, "nsd.log")))
        try:
            a = DNSRecord.question("signed.example.net", "SOA").send("127.0.0.1", port,
                                                                timeout=0.3)
            return DNSRecord.parse(a).header.rcode == RCODE.NOERROR
        except OSError:
            return False
    h.wait_for(answers, 15, "nsd answering")
    return proc, port, tafile


def _read(p):
    try:
        return open(p).read()
    except OSError:
        return ""


def test_dnssec_secure_bogus_insecure():
    d = h.tmpdir("tern-nsd-")
    proc, port, ta = start_nsd(d)
    try:
        p = Probe("--forward", "127.0.0.1:%d" % port, "--ta", ta, "--timeout", "5000",
                  "--no-ipv6")
        r = mx(p, "signed.example.net")
        h.check(r["status"] == "OK" and r["secure"] == "1", r)
        h.check(r["hosts"][0]["secure"] == "1" and r["hosts"][0]["addrs"] == "127.0.0.31", r)
        # no MX at the host name: implicit MX, the denial signed too
        r = mx(p, "mx.signed.example.net")
        h.check(r["status"] == "OK" and r["implicit"] == "1" and r["secure"] == "1", r)
        r = mx(p, "mx.unsigned.example.net")
        h.check(r["status"] == "OK" and r["implicit"] == "1" and r["secure"] == "0", r)
        out = p.cmd("tlsa mx.signed.example.net 25")
        h.check(kv(out[0])["status"] == "OK" and kv(out[0])["secure"] == "1", out)
        h.check(out[1:] == ["rec 3 1 1 " + TLSA_HEX], out)
        out = p.cmd("tlsa nothere.signed.example.net 25")
        h.check(kv(out[0])["status"] == "NXDOMAIN" and kv(out[0])["secure"] == "1", out)
        r = mx(p, "bogus.example.net")
        h.check(r["status"] == "BOGUS" and "DNSSEC" in r["why"], r)
        r = mx(p, "unsigned.example.net")
        h.check(r["status"] == "OK" and r["secure"] == "0", r)
        h.check(r["hosts"][0]["secure"] == "0", r)
        p.close()
        # dnssec off: the signed zone reads as insecure, the tampered one works
        p = Probe("--forward", "127.0.0.1:%d" % port, "--ta", ta, "--no-dnssec",
                  "--no-ipv6")
        r = mx(p, "signed.example.net")
        h.check(r["status"] == "OK" and r["secure"] == "0", r)
        r = mx(p, "bogus.example.net")
        h.check(r["status"] == "OK" and r["secure"] == "0", r)
        p.close()
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


# ---- MTA-STS ------------------------------------------------------------------------

class StsState:
    def __init__(self):
        self.requests = []
        self.lock = threading.Lock()
        self.keep_fails = False


def make_handler(state):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            host = (self.headers.get("Host") or "").split(":")[0].lower()
            with state.lock:
                state.requests.append((host, self.path))
            if self.path != "/.well-known/mta-sts.txt":
                return self.reply(404, "text/plain", b"no")
            if host == "mta-sts.redirect.example.net":
                self.send_response(301)
                self.send_header("Location", "https://mta-sts.example.org/.well-known/mta-sts.txt")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if host == "mta-sts.big.example.net":
                return self.reply(200, "text/plain",
                                  POLICY.encode() + b"x-pad: " + b"y" * 70000 + b"\r\n")
            if host == "mta-sts.ctype.example.net":
                return self.reply(200, "text/html", POLICY.encode())
            if host == "mta-sts.keep.example.net" and state.keep_fails:
                return self.reply(500, "text/plain", b"down")
            if host == "mta-sts.split.example.net":
                return self.reply(200, "text/plain; charset=utf-8",
                                  b"version: STSv1\nmode: testing\nmx: mx.split.example.net\nmax_age: 600\n")
            self.reply(200, "text/plain", POLICY.encode())

        def reply(self, code, ctype, body):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    return Handler


def sts_cert(d):
    names = ["mta-sts.%s" % x for x in STS_DOMAINS + ["split.example.net"]]
    ca, cakey = h.cert("ca.pem"), h.cert("ca.key")
    key, csr, crt = (os.path.join(d, n) for n in ("sts.key", "sts.csr", "sts.pem"))
    ext = os.path.join(d, "ext")
    with open(ext, "w") as f:
        f.write("subjectAltName = %s\n" % ",".join("DNS:" + n for n in names))
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-subj",
                    "/CN=" + names[0], "-out", csr], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", cakey,
                    "-set_serial", str(int(time.time())), "-days", "2", "-extfile", ext,
                    "-out", crt], check=True, capture_output=True)
    return crt, key


def https_server(state, certfile, keyfile):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile, keyfile)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def sts_line(out, prefix=""):
    h.check(out and out[0].startswith(prefix + "sts "), out)
    ln = out[0][len(prefix):]
    d = kv(ln.split(" why=")[0])
    d["why"] = ln.split(" why=", 1)[1].split(" mx=")[0]
    d["mx"] = ln.split(" mx=", 1)[1] if " mx=" in ln else None
    d["none"] = ln.startswith("sts none")
    return d


def test_mtasts():
    ids = {}
    dns = world()
    dns.resolver.set(ZONE + sts_zone(ids))
    d = h.tmpdir("tern-sts-")
    state = StsState()
    crt, key = sts_cert(d)
    srv = https_server(state, crt, key)
    port = srv.server_address[1]
    try:
        p = plain_probe("--sts-ca", h.cert("ca.pem"), "--sts-port", str(port),
                        "--sts-timeout", "5000")
        # enforce policy, parsed; the second ask comes from the cache
        s = sts_line(p.cmd("sts example.org"))
        h.check(not s["none"] and s["mode"] == "2" and s["max_age"] == "86400" and
                s["id"] == "id1" and s["why"] == "fetched", s)
        h.check(s["mx"] == "mx1.example.org,*.example.net", s)
        s = sts_line(p.cmd("sts example.org"))
        h.check(s["why"] == "cached" and s["mode"] == "2", s)
        h.check(p.cmd("fetches") == ["fetches=1"], "one fetch for two asks")
        h.check(state.requests == [("mta-sts.example.org", "/.well-known/mta-sts.txt")],
                state.requests)
        # two at once: one fetch, both answered
        out = p.cmd("sts2 keep.example.net")
        h.check(len(out) == 2, out)
        for ln in out:
            s = sts_line([ln[2:]])
            # the later ask waits for the fetch, or (if its TXT answer came
            # after the fetch ended) reads the cache: never a second fetch
            h.check(s["why"] in ("fetched", "cached") and s["mode"] == "2", s)
        h.check(p.cmd("fetches") == ["fetches=2"], "one fetch for two waiting asks")
        # a new id with a failing policy host: the cached policy stays (§5.1)
        state.keep_fails = True
        ids["keep.example.net"] = "id2"
        dns.resolver.set(ZONE + sts_zone(ids))
        s = sts_line(p.cmd("sts keep.example.net"))
        h.check(not s["none"] and s["id"] == "id1" and "cached policy kept" in s["why"]
                and "HTTP status 500" in s["why"], s)
        # refusals
        s = sts_line(p.cmd("sts redirect.example.net"))
        h.check(s["none"] and "HTTP status 301" in s["why"], s)
        s = sts_line(p.cmd("sts big.example.net"))
        h.check(s["none"] and "64 KiB" in s["why"], s)
        s = sts_line(p.cmd("sts ctype.example.net"))
        h.check(s["none"] and "text/html" in s["why"], s)
        s = sts_line(p.cmd("sts multi.example.net"))
        h.check(s["none"] and "several" in s["why"], s)
        s = sts_line(p.cmd("sts none.example.net"))
        h.check(s["none"] and s["why"] == "no _mta-sts record", s)
        s = sts_line(p.cmd("sts nowhere.example.net"))
        h.check(s["none"] and s["why"] == "no _mta-sts record", s)
        # a record of two strings, next to a TXT that is not MTA-STS
        s = sts_line(p.cmd("sts split.example.net"))
        h.check(s["mode"] == "1" and s["id"] == "split1" and s["mx"] == "mx.split.example.net", s)
        h.check(not any(hst == "mta-sts.example.org" for hst, _ in state.requests[1:]),
                "the redirect was followed: %r" % state.requests)
        p.close()
        # more fetches at once than the thread-pool slots: all answered
        p = plain_probe("--sts-ca", h.cert("ca.pem"), "--sts-port", str(port))
        doms = ["example.org", "split.example.net", "redirect.example.net",
                "ctype.example.net", "big.example.net"]
        out = p.cmd("stsall " + " ".join(doms))
        h.check(sorted(ln.split(":", 1)[0] for ln in out) == sorted(doms), out)
        for ln in out:
            dom, rest = ln.split(":", 1)
            s = sts_line([rest])
            h.check(s["none"] == (dom not in ("example.org", "split.example.net")), ln)
        h.check(p.cmd("fetches") == ["fetches=5"], "five fetches")
        p.close()
        # freed from the callback of a fetch with two waiters
        p = plain_probe("--sts-ca", h.cert("ca.pem"), "--sts-port", str(port))
        out = p.cmd("free-in-sts example.org")
        h.check(len(out) == 2 and out[0].startswith("first status=") and
                out[1] == "loop empty", out)
        p.close()
        # MTA-STS off: no lookups at all
        p = plain_probe("--no-sts")
        s = sts_line(p.cmd("sts example.org"))
        h.check(s["none"] and s["why"] == "MTA-STS is off", s)
        p.close()
        # the wrong certificate (CN=localhost for mta-sts.example.org)
        bad = https_server(state, h.cert("server.pem"), h.cert("server.key"))
        try:
            p = plain_probe("--sts-ca", h.cert("ca.pem"), "--sts-port",
                            str(bad.server_address[1]), "--sts-timeout", "5000")
            s = sts_line(p.cmd("sts example.org"))
            h.check(s["none"] and "fetch failed" in s["why"], s)
            p.close()
        finally:
            bad.shutdown()
        # the right certificate, but not trusted (system CAs only)
        p = plain_probe("--sts-port", str(port), "--sts-timeout", "5000")
        s = sts_line(p.cmd("sts example.org"))
        h.check(s["none"] and "fetch failed" in s["why"], s)
        p.close()
    finally:
        srv.shutdown()
        dns.resolver.set(ZONE)
        shutil.rmtree(d, ignore_errors=True)


def test_mtasts_slow_hosts_delay_nobody():
    """Policy hosts that take the connection and never answer (tarpits)
    must not hold up another domain's fetch: every fetch runs at once,
    each with its own timeout (no queue behind slow ones)."""
    many = ["slow%d.example.net" % i for i in range(70)]  # more than 64
    slow = many[:8]
    zone = ZONE + sts_zone({})
    for dom in many:
        zone += "mta-sts.%s. 300 IN A 127.0.0.2\n" % dom
        zone += '_mta-sts.%s. 300 IN TXT "v=STSv1; id=slow1;"\n' % dom
    dns = world()
    dns.resolver.set(zone)
    d = h.tmpdir("tern-sts-slow-")
    state = StsState()
    crt, key = sts_cert(d)
    srv = https_server(state, crt, key)
    port = srv.server_address[1]
    tar = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tar.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tar.bind(("127.0.0.2", port))
    tar.listen(64)  # the kernel completes the handshakes; nobody answers
    try:
        p = plain_probe("--sts-ca", h.cert("ca.pem"), "--sts-port", str(port),
                        "--sts-timeout", "3000")
        out = p.cmd("stsall " + " ".join(slow + ["example.org"]), timeout=30)
        h.check(len(out) == len(slow) + 1, out)
        got = {ln.split(":", 1)[0]: sts_line([ln.split(":", 1)[1]]) for ln in out}
        good = got["example.org"]
        h.check(not good["none"] and good["why"] == "fetched", good)
        h.check(int(good["ms"]) < 1500, "the good domain waited behind tarpits: %r" % good)
        for dom in slow:
            s = got[dom]
            h.check(s["none"] and "fetch failed" in s["why"], s)
            # each tarpit ends at its own timeout, not one after another
            h.check(int(s["ms"]) < 6000, s)
        h.check(p.cmd("fetches") == ["fetches=%d" % (len(slow) + 1)], "all fetched")
        p.close()
        # more tarpits than fetch slots: the ones past the bound wait for a
        # slot (at most their own timeout), none fails "busy" at once, and
        # the good domain still gets its policy
        p = plain_probe("--sts-ca", h.cert("ca.pem"), "--sts-port", str(port),
                        "--sts-timeout", "2000")
        out = p.cmd("stsall " + " ".join(many + ["example.org"]), timeout=30)
        h.check(len(out) == len(many) + 1, out)
        got = {ln.split(":", 1)[0]: sts_line([ln.split(":", 1)[1]]) for ln in out}
        good = got["example.org"]
        h.check(not good["none"] and good["why"] == "fetched" and int(good["ms"]) < 6500, good)
        for dom in many:
            s = got[dom]
            h.check(s["none"] and "fetch failed" in s["why"] and "busy" not in s["why"], s)
            h.check(int(s["ms"]) < 6500, s)  # wait + run: two timeouts
        h.check(p.cmd("fetches") == ["fetches=%d" % (len(many) + 1)], "all fetched")
        p.close()
        # freed while the tarpit fetches are in flight: at once
        p = plain_probe("--sts-ca", h.cert("ca.pem"), "--sts-port", str(port),
                        "--sts-timeout", "3000")
        out = p.cmd("free-pending " + slow[0], timeout=10)
        m = re.search(r"free_ms=(\d+)", " ".join(out))
        h.check(m and int(m.group(1)) < 1000, out)
        p.close()
    finally:
        tar.close()
        srv.shutdown()
        dns.resolver.set(ZONE)
        shutil.rmtree(d, ignore_errors=True)


def test_mtasts_cache_file():
    """The policy cache outlives the process (mta_sts_cache_file): after a
    restart an enforce policy stays in force with no fetch, even when the
    _mta-sts record can no longer be read; a tampered or garbled file
    loads only what parses; a full cache evicts testing policies before
    an enforce one."""
    dns = world()
    dns.resolver.set(ZONE + sts_zone({}))
    d = h.tmpdir("tern-sts-cache-")
    cache = os.path.join(d, "mta-sts.cache")
    state = StsState()
    crt, key = sts_cert(d)
    srv = https_server(state, crt, key)
    port = srv.server_address[1]
    no_txt = re.sub(r"_mta-sts\.example\.org\..*\n", "", ZONE + sts_zone({}))
    try:
        # two resolvers on one file (the daemon's loops): neither drops
        # the policy the other wrote
        p = plain_probe("--sts-ca", h.cert("ca.pem"), "--sts-port", str(port),
                        "--sts-cache", cache)
        p2 = plain_probe("--sts-ca", h.cert("ca.pem"), "--sts-port", str(port),
                         "--sts-cache", cache)
        s = sts_line(p.cmd("sts example.org"))
        h.check(s["why"] == "fetched" and s["mode"] == "2", s)
        p.cmd("sleep 300")  # its write done
        s = sts_line(p2.cmd("sts split.example.net"))
        h.check(s["why"] == "fetched" and s["mode"] == "1", s)
        p2.close()  # the write in flight finishes before the loop ends
        p.close()
        with open(cache) as f:
            text = f.read()
        h.check(re.search(r"^example\.org id1 enforce 86400 \d+ mx1\.example\.org,\*\.example\.net$",
                          text, re.M), text)
        h.check(os.stat(cache).st_mode & 0o077 == 0, "cache file readable by others")
        h.check(not any(".tmp" in n for n in os.listdir(d)), os.listdir(d))
        # a restart, the policy host gone and the TXT record blocked:
        # the enforce policy stays, no fetch
        srv.shutdown()
        dns.resolver.set(no_txt)
        p = plain_probe("--sts-ca", h.cert("ca.pem"), "--sts-port", str(port),
                        "--sts-cache", cache)
        s = sts_line(p.cmd("sts example.org"))
        h.check(not s["none"] and s["mode"] == "2" and s["id"] == "id1" and
                s["why"].startswith("cached"), s)
        s = sts_line(p.cmd("sts split.example.net"))
        h.check(s["why"] == "cached" and s["mode"] == "1", s)
        h.check(p.cmd("fetches") == ["fetches=0"], "no fetch after a restart")
        p.close()
        # garbage, a tampered expiry and an expired line are skipped
        now = int(time.time())
        with open(cache, "w") as f:
            f.write("\x00garbage\nexample.org id1 enforce\n")
            f.write("keep.example.net id1 enforce 600 %d mx1.example.org\n" % (now + 10 ** 9))
            f.write("none.example.net id1 enforce 600 %d mx1.example.org\n" % (now - 5))
            f.write("multi.example.net id! enforce 600 %d mx1.example.org\n" % (now + 500))
            f.write("example.org id1 enforce 600 %d mx1.example.org\n" % (now + 500))
        dns.resolver.set(re.sub(r"_mta-sts\.(keep|none|multi)\.example\.net\..*\n", "", no_txt))
        p = plain_probe("--sts-cache", cache, "--sts-port", str(port))
        s = sts_line(p.cmd("sts example.org"))
        h.check(not s["none"] and s["mode"] == "2" and s["max_age"] == "600", s)
        for dom in ("keep.example.net", "none.example.net", "multi.example.net"):
            s = sts_line(p.cmd("sts " + dom))
            h.check(s["none"], (dom, s))
        p.close()
        # a full cache (10,000 domains) evicts a testing policy, not the
        # enforce one, though the enforce one is the least recently used
        srv = https_server(state, crt, key)
        port = srv.server_address[1]
        with open(cache, "w") as f:
            for i in range(9999):
                f.write("f%d.example.net id1 testing 86400 %d mx.example.net\n" % (i, now + 80000))
            f.write("example.org id1 enforce 86400 %d mx1.example.org\n" % (now + 80000))
        p = plain_probe("--sts-ca", h.cert("ca.pem"), "--sts-port", str(port),
                        "--sts-cache", cache)
        s = sts_line(p.cmd("sts split.example.net"))
        h.check(s["why"] == "fetched", s)
        s = sts_line(p.cmd("sts example.org"))
        h.check(not s["none"] and s["mode"] == "2" and s["why"].startswith("cached"), s)
        p.close()
        with open(cache) as f:
            lines = f.read().splitlines()
        h.check(len(lines) == 10001, len(lines))  # the header and 10,000
    finally:
        srv.shutdown()
        dns.resolver.set(ZONE)
        shutil.rmtree(d, ignore_errors=True)


def test_mtasts_cache_file_not_regular():
    """A FIFO (or a symlink) where the cache file should be is not read:
    the resolver starts and fetches as without a cache, it does not hang
    opening it."""
    dns = world()
    dns.resolver.set(ZONE + sts_zone({}))
    d = h.tmpdir("tern-sts-fifo-")
    state = StsState()
    crt, key = sts_cert(d)
    srv = https_server(state, crt, key)
    port = srv.server_address[1]
    try:
        for kind in ("fifo", "symlink"):
            cache = os.path.join(d, "mta-sts.cache." + kind)
            if kind == "fifo":
                os.mkfifo(cache)
            else:
                target = os.path.join(d, "elsewhere")
                with open(target, "w") as f:
                    f.write("example.org id1 enforce 86400 %d mx9.example.org\n"
                            % (int(time.time()) + 80000))
                os.symlink(target, cache)
            p = plain_probe("--sts-ca", h.cert("ca.pem"), "--sts-port",
                            str(port), "--sts-cache", cache)
            s = sts_line(p.cmd("sts example.org", timeout=10))
            h.check(s["why"] == "fetched", "%s: %r" % (kind, s))
            p.close()
    finally:
        srv.shutdown()
        dns.resolver.set(ZONE)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    try:
        h.main([test_mx_order, test_mx_equal_preference_shuffled, test_mx_capped_at_ten,
                test_mx_implicit, test_mx_null_nxdomain_servfail, test_hosts_file,
                test_timeout_is_tempfail_within_bound, test_tlsa,
                test_cancel_and_free_in_callback, test_bad_options,
                test_dnssec_secure_bogus_insecure, test_mtasts,
                test_mtasts_slow_hosts_delay_nobody, test_mtasts_cache_file,
                test_mtasts_cache_file_not_regular])
    finally:
        if WORLD:
            WORLD["dns"].stop()
