"""The test world of Step 8 (tests/world): mail to any domain, for real,
inside a network namespace the test makes.

A test script is started by CTest as root. `main(cases)` makes a network
namespace `tern-w-PID` (its own loopback: 127.0.0.x port 25 and 53 are
ours), writes `/etc/netns/NAME/resolv.conf` (nameserver 127.0.0.53) and
runs the same script again inside it (`ip netns exec NAME python3 SCRIPT
--inside`); whatever happens (a failure, a timeout, SIGTERM from CTest),
the outer process ends what still runs in the namespace, deletes it and
/etc/netns/NAME. Inside, the cases run one after another (harness.main:
PASS/FAIL lines, TERN_TEST_ONLY=name runs one) against a `World`:

    W = world.World()
    cert = W.cert("mx.dane.example")          # (chain.pem, key.pem)
    mx = W.addr()                             # 127.0.0.11, 12, ...
    W.zone("dane.example", {"@": "MX 10 mx", "mx": "A " + mx,
                            "_25._tcp.mx": "TLSA " + W.tlsa(cert[0])},
           signed=True)
    W.start_dns()                     # NSD on 127.0.0.53:53, zones signed
    sink = W.sink(mx, tls=cert)
    tern = W.serve({"routes": {"dane.example": "mx"}})
    W.send("sender@local.example", ["rcpt@dane.example"], msg)
    d = world.wait_delivery(tern, "rcpt@dane.example", "sent")
    assert d["verified"] == "dane-ee" and sink.wait(1)[0].tls

Names end in .example: libunbound itself answers NXDOMAIN for every
.test name (a locally served zone by default), whatever the DNS says.

Pieces:
  * DNS: NSD serving zones given as Python dicts ({owner: ["TYPE RDATA"]},
    "@" the apex); signed ones with ldns-keygen (ECDSAP256SHA256 KSK + ZSK)
    and ldns-signzone; a trust-anchor file holding the KSK DNSKEY of every
    signed zone (`W.trust_anchor`). No root zone: the anchors sit at each
    signed zone's apex, so a signed zone is secure, an unsigned one
    insecure. `W.check_dnssec()` asks libunbound itself (ctypes) that the
    answers are what we think (secure / insecure).
  * A test CA (openssl) and certificates per host name (`W.cert`), TLSA
    data "3 1 1 HEX" from a certificate (`W.tlsa`).
  * SMTP sinks (aiosmtpd) on 127.0.0.x:25 (`W.sink`): optional STARTTLS,
    every MAIL and message recorded with whether it came over TLS,
    connections counted (total and most at once); `W.greet421(addr)`: a
    host that answers every connection with 421.  A host that refuses
    connections is an address nothing listens on.
  * An HTTPS server for mta-sts.DOMAIN (`W.mta_sts`), counting fetches.
  * MX hosts that misbehave: `W.greet421(addr)`, `W.tarpit(addr)`
    (accepts, never greets).
  * `tern serve` (`W.serve(sections)`): e2e.Serve with a configuration
    written from `W.base_config()` and the sections given: listener
    127.0.0.2:25, accepted domain local.example into a Maildir per
    recipient (`W.maildir`), the queue, [outbound] pointed at the test
    DNS, the trust anchor and the test CA. `W.submission(users)` adds a
    587 listener (STARTTLS, AUTH, users file made by `tern passwd`);
    `W.send` and `W.submit` put mail in; `wait_delivery()` waits for a
    recipient's event=delivery line (`kv()` reads it).
  * DKIM: `dkim_keys()` (RSA or Ed25519 key and its TXT text),
    `dkim_verify()` (dkimpy, keys fetched from the test DNS).

Needs (fails, never skips): root, ip, nsd, ldns-keygen, ldns-signzone,
openssl, /usr/bin/python3 with aiosmtpd, dnslib, dkim (this script runs
under that interpreter: tests/world/CMakeLists.txt), libunbound.so.8.
"""

import base64
import ctypes
import ctypes.util
import hashlib
import http.server
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

import e2e as h
from harness import TestFailure, fail, check, wait_for  # noqa: F401

NS_PREFIX = "tern-w-"
DNS_ADDR = "127.0.0.53"
TERN_ADDR = "127.0.0.2"          # tern serve's listeners inside the namespace
LOCAL_DOMAIN = "local.example"      # the accepted (local) domain of tern serve
INNER_TIMEOUT = float(os.environ.get("TERN_WORLD_TIMEOUT", "240"))


# ---- the outer process: the namespace ----------------------------------------

def _need(prog):
    p = shutil.which(prog) or next(
        (d + "/" + prog for d in ("/usr/sbin", "/sbin", "/usr/bin")
         if os.access(d + "/" + prog, os.X_OK)), None)
    if not p:
        fail("required program '%s' is not installed (scripts/install-deps "
             "--test); tests/world fails rather than skips" % prog)
    return p


def _run(cmd, **kw):
    kw.setdefault("timeout", 60)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       **kw)
    if p.returncode != 0:
        fail("%s exited with %d: %s%s" % (" ".join(cmd), p.returncode,
                                          p.stdout.decode(errors="replace"),
                                          p.stderr.decode(errors="replace")))
    return p.stdout.decode(errors="replace")


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _ns_pids(name):
    p = subprocess.run([_need("ip"), "netns", "pids", name],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return [int(x) for x in p.stdout.split()]


def _remove_ns(name):
    """End what still runs in namespace `name` (all of it was started by
    this test), delete the namespace and /etc/netns/NAME."""
    ip = _need("ip")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _ns_pids(name)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            time.sleep(0.05)
        if not pids:
            break
    subprocess.run([ip, "netns", "del", name], stderr=subprocess.DEVNULL)
    shutil.rmtree("/etc/netns/" + name, ignore_errors=True)


def _remove_stale():
    """Namespaces left by an earlier run that was killed outright
    (SIGKILL leaves no chance to clean up): tern-w-PID whose PID is gone."""
    p = subprocess.run([_need("ip"), "netns", "list"], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL)
    for ln in p.stdout.decode().splitlines():
        m = re.match(r"(%s(\d+))\b" % NS_PREFIX, ln)
        if m and not _alive(int(m.group(2))):
            _remove_ns(m.group(1))


def _outer(script):
    if os.geteuid() != 0:
        fail("tests/world needs root (it makes a network namespace); run "
             "ctest as root")
    for prog in ("ip", "nsd", "ldns-keygen", "ldns-signzone", "openssl"):
        _need(prog)
    ip = _need("ip")
    _remove_stale()
    name = "%s%d" % (NS_PREFIX, os.getpid())
    got_term = []
    tmp = None

    def on_term(sig, frame):
        got_term.append(sig)
        raise KeyboardInterrupt("signal %d" % sig)

    signal.signal(signal.SIGTERM, on_term)
    proc = None
    try:
        _run([ip, "netns", "add", name])
        os.makedirs("/etc/netns/" + name, exist_ok=True)
        with open("/etc/netns/%s/resolv.conf" % name, "w") as f:
            f.write("nameserver %s\n" % DNS_ADDR)
        _run([ip, "netns", "exec", name, ip, "link", "set", "lo", "up"])
        # the inner process's files live under tmp: removed below even
        # when it was killed
        tmp = tempfile.mkdtemp(prefix="tern-world-%d-" % os.getpid())
        env = dict(os.environ, TERN_WORLD_NS=name, TMPDIR=tmp)
        cmd = [ip, "netns", "exec", name, sys.executable, script, "--inside"]
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=INNER_TIMEOUT)
        except subprocess.TimeoutExpired:
            print("FAIL: the tests did not finish within %.0f s (killed)"
                  % INNER_TIMEOUT, flush=True)
            rc = 1
        return rc
    except KeyboardInterrupt:
        print("FAIL: interrupted (%s)" % (got_term or "SIGINT"), flush=True)
        return 1
    finally:
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        _remove_ns(name)
        if tmp and os.environ.get("TERN_TEST_KEEP") is None:
            shutil.rmtree(tmp, ignore_errors=True)


def main(cases):
    """The test script's entry: outside, make the namespace and run the
    script again inside it; inside, run the cases (harness.main)."""
    if "--inside" in sys.argv:
        check(os.environ.get("TERN_WORLD_NS"), "--inside without a namespace")
        rc = 1
        try:
            h.main(cases)   # exits
        except SystemExit as e:
            rc = e.code
        finally:
            problems = []
            for w in list(World.instances):
                problems += w.close()
        for p in problems:
            print("FAIL (at the end): %s" % p, flush=True)
        sys.exit(1 if problems else rc)
    else:
        try:
            rc = _outer(os.path.abspath(sys.argv[0]))
        except TestFailure as e:
            print("FAIL: %s" % e, flush=True)
            rc = 1
        sys.exit(rc)


def once(fn):
    """Decorator: fn() runs once; later calls return its result, or raise
    its failure again (a test file's world is built by its first case,
    and a world that could not be built fails every case the same way)."""
    memo = []

    def wrapper():
        if not memo:
            try:
                memo.append((True, fn()))
            except BaseException as e:
                memo.append((False, e))
                raise
        ok, v = memo[0]
        if not ok:
            first = str(v).splitlines()
            raise TestFailure("the world of this test could not be built "
                              "(see the first case's failure): %s"
                              % (first[0] if first else repr(v)))
        return v
    wrapper.__name__ = fn.__name__
    return wrapper


# ---- the world inside the namespace ----------------------------------------------

OPENSSL_CNF = """[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
"""

LEAF_EXT = """basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = %s
"""

CA_EXT = """basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""


class World:
    """Everything of one test script inside its namespace; close() ends
    it (main() calls it at the end)."""

    instances = []

    def __init__(self):
        check(os.environ.get("TERN_WORLD_NS"),
              "World() outside the namespace: call world.main(cases)")
        self.dir = h.tmpdir("tern-world-")
        self.zones = {}            # name -> (records dict, signed)
        self.trust_anchor = os.path.join(self.dir, "trust-anchor.keys")
        self.nsd = None
        self.sinks = []
        self.servers = []          # https / 421 hosts
        self.serves = []
        self._next_addr = 10
        self.ca, self.ca_key = self._make_ca()
        World.instances.append(self)

    # -- addresses -------------------------------------------------------
    def addr(self):
        """A fresh loopback address 127.0.0.N (N from 10 up) for a host."""
        self._next_addr += 1
        check(self._next_addr < 250, "out of 127.0.0.x addresses")
        return "127.0.0.%d" % self._next_addr

    # -- certificates ----------------------------------------------------
    def _openssl(self, *args):
        env = dict(os.environ, OPENSSL_CONF=os.path.join(self.dir,
                                                         "openssl.cnf"))
        return _run(["openssl"] + list(args), env=env, cwd=self.dir)

    def _make_ca(self):
        h.write(os.path.join(self.dir, "openssl.cnf"), OPENSSL_CNF)
        h.write(os.path.join(self.dir, "ca.ext"), CA_EXT)
        ca = os.path.join(self.dir, "ca.pem")
        key = os.path.join(self.dir, "ca.key")
        self._openssl("genpkey", "-algorithm", "EC", "-pkeyopt",
                      "ec_paramgen_curve:P-256", "-out", key)
        self._openssl("req", "-new", "-key", key, "-subj",
                      "/CN=tern world test CA", "-out", key + ".csr")
        self._openssl("x509", "-req", "-in", key + ".csr", "-signkey", key,
                      "-days", "30", "-sha256", "-set_serial",
                      "0x" + os.urandom(8).hex(), "-extfile",
                      os.path.join(self.dir, "ca.ext"), "-out", ca)
        return ca, key

    def cert(self, *names, tag=None):
        """(chain.pem, key.pem): a certificate for DNS names `names`
        signed by the test CA (self.ca); the chain file holds the leaf,
        then the CA."""
        base = os.path.join(self.dir, "cert-" + (tag or names[0]))
        check(not os.path.exists(base + ".pem"), "cert %s made twice" % base)
        h.write(base + ".ext",
                LEAF_EXT % ", ".join("DNS:" + n for n in names))
        self._openssl("genpkey", "-algorithm", "EC", "-pkeyopt",
                      "ec_paramgen_curve:P-256", "-out", base + ".key")
        self._openssl("req", "-new", "-key", base + ".key", "-subj",
                      "/CN=" + names[0], "-out", base + ".csr")
        self._openssl("x509", "-req", "-in", base + ".csr", "-CA", self.ca,
                      "-CAkey", self.ca_key, "-days", "30", "-sha256",
                      "-set_serial", "0x" + os.urandom(8).hex(),
                      "-extfile", base + ".ext", "-out", base + ".leaf")
        with open(base + ".pem", "wb") as f:
            f.write(h.read(base + ".leaf") + h.read(self.ca))
        return base + ".pem", base + ".key"

    def tlsa(self, certfile, usage=3, selector=1, mtype=1):
        """TLSA RDATA "3 1 1 HEX" for the first certificate of certfile
        (selector 1: its SubjectPublicKeyInfo; type 1: SHA-256)."""
        check((selector, mtype) == (1, 1), "tlsa: only selector 1 type 1")
        spki = subprocess.run(
            ["openssl", "x509", "-in", certfile, "-pubkey", "-noout"],
            stdout=subprocess.PIPE, check=True).stdout
        der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"],
                             input=spki, stdout=subprocess.PIPE,
                             check=True).stdout
        check(len(der) > 50, "no public key from %s" % certfile)
        return "%d %d %d %s" % (usage, selector, mtype,
                                hashlib.sha256(der).hexdigest())

    # -- DNS -------------------------------------------------------------
    def zone(self, name, records, signed=False):
        """A zone served by the test DNS: records {owner: ["TYPE RDATA",
        ...]}, owner relative to the zone ("@" = the apex) or absolute
        (ending in "."). SOA and NS (ns.ZONE at 127.0.0.53) are added.
        Call before start_dns()."""
        check(self.nsd is None, "zone() after start_dns()")
        name = name.lower().rstrip(".")
        check(name not in self.zones, "zone %s given twice" % name)
        self.zones[name] = (records, signed)

    def _zone_text(self, name, records):
        out = ["$ORIGIN %s." % name, "$TTL 300",
               "@ IN SOA ns.%s. hostmaster.%s. 1 3600 600 86400 300"
               % (name, name),
               "@ IN NS ns.%s." % name]
        owners = dict(records)
        if "ns" not in owners:
            out.append("ns IN A %s" % DNS_ADDR)
        for owner, rrs in owners.items():
            if isinstance(rrs, str):
                rrs = [rrs]
            for rr in rrs:
                out.append("%s IN %s" % (owner, rr))
        return "\n".join(out) + "\n"

    def _sign(self, name, path):
        zd = os.path.join(self.dir, "zones")
        ksk = _run(["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", name],
                   cwd=zd).strip()
        zsk = _run(["ldns-keygen", "-a", "ECDSAP256SHA256", name],
                   cwd=zd).strip()
        _run(["ldns-signzone", path, os.path.join(zd, ksk),
              os.path.join(zd, zsk)], cwd=zd)
        check(os.path.isfile(path + ".signed"), "ldns-signzone made no %s"
              % (path + ".signed"))
        with open(os.path.join(zd, ksk + ".key")) as f:
            dnskey = f.read().strip()
        check(" DNSKEY 257 " in dnskey.replace("\t", " "),
              "KSK of %s is not a DNSKEY 257 record: %r" % (name, dnskey))
        return path + ".signed", dnskey

    def start_dns(self):
        """Write and sign the zones, start NSD on 127.0.0.53:53 and wait
        until it answers for every zone; write the trust anchor file."""
        check(self.nsd is None, "start_dns() twice")
        zd = os.path.join(self.dir, "zones")
        os.makedirs(zd, exist_ok=True)
        conf = ['server:',
                '  ip-address: %s' % DNS_ADDR,
                '  port: 53',
                '  username: ""',
                '  chroot: ""',
                '  zonesdir: "%s"' % zd,
                '  pidfile: "%s/nsd.pid"' % self.dir,
                '  database: ""',
                '  zonelistfile: "%s/zone.list"' % self.dir,
                '  xfrdfile: "%s/xfrd.state"' % self.dir,
                '  xfrdir: "%s"' % self.dir,
                '  server-count: 1',
                '  verbosity: 1',
                '  hide-version: yes',
                'remote-control:',
                '  control-enable: no']
        if not any(signed for _, signed in self.zones.values()):
            # tern refuses dnssec = yes with an empty anchor file: one
            # signed zone of our own keeps the anchor file meaningful
            # (every other zone stays insecure)
            self.zones["world-anchor.example"] = ({"@": "A 127.0.0.1"}, True)
        anchors = []
        for name, (records, signed) in sorted(self.zones.items()):
            path = os.path.join(zd, name + ".zone")
            h.write(path, self._zone_text(name, records))
            if signed:
                path, dnskey = self._sign(name, path)
                anchors.append(dnskey)
            conf += ['zone:', '  name: "%s"' % name,
                     '  zonefile: "%s"' % path]
        h.write(self.trust_anchor, "\n".join(anchors) + "\n")
        cf = h.write(os.path.join(self.dir, "nsd.conf"), "\n".join(conf) + "\n")
        _run([_need("nsd-checkconf"), cf])
        self.nsd_log = os.path.join(self.dir, "nsd.log")
        with open(self.nsd_log, "ab") as lf:
            self.nsd = subprocess.Popen([_need("nsd"), "-d", "-c", cf],
                                        stdout=lf, stderr=lf,
                                        stdin=subprocess.DEVNULL)
        for name in self.zones:
            wait_for(lambda: self.nsd.poll() is not None or
                     self.query(name, "SOA"), 15,
                     "NSD to answer SOA %s (log: %s)" % (name, self.nsd_log))
            check(self.nsd.poll() is None, "nsd exited with %s: %s"
                  % (self.nsd.returncode, h.read(self.nsd_log)[-2000:]))
        return self

    def query(self, name, qtype):
        """The answer records (dnslib RRs) of NSD for name/qtype, or None
        when it does not answer."""
        import dnslib
        try:
            q = dnslib.DNSRecord.question(name, qtype)
            a = dnslib.DNSRecord.parse(q.send(DNS_ADDR, 53, timeout=0.5))
        except (OSError, socket.timeout, dnslib.DNSError):
            return None
        if a.header.rcode != 0:
            return None
        return a.rr or None

    def check_dnssec(self, secure=(), insecure=()):
        """Ask libunbound (the library tern uses) through the test DNS with
        our trust anchor: each (name, type) of `secure` must be answered
        and secure, each of `insecure` answered and not secure (nor bogus).
        Fails saying what libunbound said otherwise."""
        lib = ctypes.util.find_library("unbound") or "libunbound.so.8"
        try:
            ub = ctypes.CDLL(lib)
        except OSError as e:
            fail("cannot load libunbound (%s): %s" % (lib, e))

        class Result(ctypes.Structure):
            _fields_ = [("qname", ctypes.c_char_p), ("qtype", ctypes.c_int),
                        ("qclass", ctypes.c_int),
                        ("data", ctypes.c_void_p), ("len", ctypes.c_void_p),
                        ("canonname", ctypes.c_char_p),
                        ("rcode", ctypes.c_int),
                        ("answer_packet", ctypes.c_void_p),
                        ("answer_len", ctypes.c_int),
                        ("havedata", ctypes.c_int),
                        ("nxdomain", ctypes.c_int),
                        ("secure", ctypes.c_int), ("bogus", ctypes.c_int),
                        ("why_bogus", ctypes.c_char_p)]
        ub.ub_ctx_create.restype = ctypes.c_void_p
        ub.ub_ctx_delete.argtypes = [ctypes.c_void_p]
        ub.ub_ctx_set_fwd.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        ub.ub_ctx_set_option.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                         ctypes.c_char_p]
        ub.ub_ctx_add_ta_file.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        ub.ub_resolve.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                  ctypes.c_int, ctypes.c_int,
                                  ctypes.POINTER(ctypes.POINTER(Result))]
        ub.ub_resolve_free.argtypes = [ctypes.POINTER(Result)]
        ub.ub_strerror.restype = ctypes.c_char_p
        types = {"A": 1, "NS": 2, "SOA": 6, "MX": 15, "TXT": 16, "AAAA": 28,
                 "TLSA": 52, "DNSKEY": 48}
        ctx = ub.ub_ctx_create()
        check(ctx, "ub_ctx_create failed")
        try:
            for opt, val in ():   # libunbound defaults, as tern
                r = ub.ub_ctx_set_option(ctx, opt.encode(), val.encode())
                check(r == 0, "ub_ctx_set_option %s: %s"
                      % (opt, ub.ub_strerror(r)))
            r = ub.ub_ctx_set_fwd(ctx, (DNS_ADDR + "@53").encode())
            check(r == 0, "ub_ctx_set_fwd: %s" % ub.ub_strerror(r))
            r = ub.ub_ctx_add_ta_file(ctx, self.trust_anchor.encode())
            check(r == 0, "ub_ctx_add_ta_file %s: %s"
                  % (self.trust_anchor, ub.ub_strerror(r)))
            for want, items in ((True, secure), (False, insecure)):
                for name, qtype in items:
                    res = ctypes.POINTER(Result)()
                    r = ub.ub_resolve(ctx, name.encode(), types[qtype], 1,
                                      ctypes.byref(res))
                    check(r == 0, "ub_resolve %s %s: %s"
                          % (name, qtype, ub.ub_strerror(r)))
                    v = res.contents
                    got = (v.rcode, v.havedata, v.secure, v.bogus,
                           v.why_bogus)
                    ub.ub_resolve_free(res)
                    check(got[1], "libunbound: no data for %s %s (rcode %d, "
                          "bogus %d: %s)" % (name, qtype, got[0], got[3],
                                             got[4]))
                    check(not got[3], "libunbound: %s %s is bogus: %s"
                          % (name, qtype, got[4]))
                    check(bool(got[2]) == want,
                          "libunbound: %s %s secure=%d, expected %s"
                          % (name, qtype, got[2], want))
        finally:
            ub.ub_ctx_delete(ctx)

    # -- SMTP sinks --------------------------------------------------------
    def sink(self, addr, tls=None, port=25, name=None, reply=None,
             requiretls=False):
        """An aiosmtpd mail host on addr:port; tls=(cert, key) offers
        STARTTLS (not required); requiretls=True also offers REQUIRETLS
        after STARTTLS (RFC 8689) and takes the MAIL parameter. reply(rcpt)
        may return an SMTP reply text to refuse a recipient. Started;
        stopped by close()."""
        s = Sink(addr, port, tls, name or addr, reply, requiretls).start()
        s.world = self
        self.sinks.append(s)
        return s

    def greet421(self, addr, port=25):
        """A host that answers every connection with 421 and closes it."""
        s = Greet421(addr, port).start()
        self.servers.append(s)
        return s

    def tarpit(self, addr, port=25):
        """A host that never answers: connections complete (the kernel's
        backlog) but no greeting ever comes."""
        s = Tarpit(addr, port).start()
        self.servers.append(s)
        return s

    def mta_sts(self, domain, policy, addr, cert=None):
        """The HTTPS server of mta-sts.DOMAIN on addr:443 serving `policy`
        (text) at /.well-known/mta-sts.txt with a certificate for
        mta-sts.DOMAIN (made unless given); .fetches counts the GETs."""
        if cert is None:
            cert = self.cert("mta-sts." + domain)
        s = PolicyServer(addr, cert, policy).start()
        self.servers.append(s)
        return s

    # -- tern serve --------------------------------------------------------
    def base_config(self):
        """The sections every world test starts from (a dict of dicts;
        serve() merges a test's own over it)."""
        d = self.dir
        if not hasattr(self, "tern_cert"):
            self.tern_cert = self.cert("mail." + LOCAL_DOMAIN)
        return {
            "server": {"hostname": "mail." + LOCAL_DOMAIN},
            "listener in": {"url": "smtp://%s:25" % TERN_ADDR},
            "tls": {"cert": self.tern_cert[0], "key": self.tern_cert[1]},
            "domains": {"accept": LOCAL_DOMAIN},
            "delivery": {"target": "maildir",
                         "maildir": os.path.join(d, "mail", "%d", "%u"),
                         "fsync": "no"},
            "queue": {"directory": None, "retry_min": "1s",
                      "retry_max": "2s", "fsync": "no"},
            "outbound": {"helo": "mail." + LOCAL_DOMAIN,
                         "resolver": "%s:53" % DNS_ADDR,
                         "trust_anchor": self.trust_anchor,
                         "dnssec": "yes", "mta_sts": "yes",
                         "mta_sts_ca_file": self.ca, "ca_file": self.ca,
                         "port": "25", "connect_timeout": "2s",
                         "timeout": "10s"},
        }

    def config_text(self, sections):
        base = self.base_config()
        for sec, kv in sections.items():
            if kv is None:
                base.pop(sec, None)
                continue
            cur = base.setdefault(sec, {})
            for k, v in kv.items():
                if v is None:
                    cur.pop(k, None)
                else:
                    cur[k] = v
        out = []
        for sec, kv in base.items():
            out.append("[%s]" % sec)
            for k, v in kv.items():
                if isinstance(v, (list, tuple)):      # repeated key
                    out += ["%s = %s" % (k, x) for x in v]
                else:
                    out.append("%s = %s" % (k, v))
            out.append("")
        return "\n".join(out)

    def serve(self, sections=None, name="serve", start=True):
        """tern serve with the base configuration and `sections` merged
        over it; [domains] accept (unless given) is local.example and
        every exact domain of [routes], plus the list `accept_extra` ({"routes": {"a.example": "mx"}, "queue": {"lifetime":
        "5s"}}; a value None removes a key, a section None removes it).
        A fresh queue directory each time. One tern serve at a time (they
        listen on the same address): a running one is stopped first.
        Returns the e2e.Serve (logs in .lines; stopped by close() if not
        before)."""
        for old in self.serves:
            if old.alive():
                old.stop()
        n = len(self.serves)
        qdir = os.path.join(self.dir, "queue%d" % n)
        sections = dict(sections or {})
        # [routes] only chooses where mail goes; the test's unauthenticated
        # client may send to the routed domains because they are accepted
        # (accept_extra: more accepted domains, e.g. under a suffix route)
        extra = list(sections.pop("accept_extra", ()))
        dom = dict(sections.get("domains") or {})
        if "accept" not in dom:
            routed = [d for d in (sections.get("routes") or {})
                      if d != "*" and not d.startswith(".")]
            dom["accept"] = " ".join([LOCAL_DOMAIN] + routed + extra)
            sections["domains"] = dom
        q = dict(sections.get("queue") or {})
        q.setdefault("directory", qdir)
        sections["queue"] = q
        text = self.config_text(sections)
        cf = h.write(os.path.join(self.dir, "tern%d.ini" % n), text)
        s = h.Serve(["-c", cf], cwd=self.dir, name=name)
        s.config_file = cf
        s.config = text
        self.serves.append(s)
        if start:
            try:
                s.start()
            except TestFailure:
                s.cleanup()
                raise TestFailure("tern serve did not start; config:\n%s\n"
                                  "log:\n%s" % (text, s.log()))
        return s

    def send(self, frm, rcpts, msg, port=25, host=TERN_ADDR):
        """One message into tern serve (plain SMTP, no AUTH): the queue id
        from "250 ... queued as ID" (or the reply text)."""
        with smtplib.SMTP(host, port, timeout=20) as c:
            c.ehlo("client.world.example")
            c.mail(frm)
            for r in rcpts:
                code, text = c.rcpt(r)
                check(code == 250, "RCPT %s: %d %s" % (r, code, text))
            code, text = c.data(msg)
            check(code == 250, "DATA: %d %s" % (code, text))
            m = re.search(rb"queued as (\S+)", text)
            return m.group(1).decode() if m else text.decode()

    def users_file(self, users):
        """A users file made with `tern passwd` for {user: password}."""
        path = os.path.join(self.dir, "users")
        h.write(path, "".join(h.passwd_line(u, p) + "\n"
                              for u, p in users.items()), 0o600)
        return path

    def submission(self, users):
        """Config sections for a submission listener on TERN_ADDR:587
        (STARTTLS, AUTH required) with these {user: password}."""
        return {"listener sub": {"url": "smtp://%s:587" % TERN_ADDR,
                                 "starttls": "yes", "auth": "required"},
                "auth": {"users": self.users_file(users)}}

    def submit(self, user, password, frm, rcpts, msg, mail_options=(),
               port=587, host=TERN_ADDR):
        """One message over submission: EHLO, STARTTLS (tern's certificate
        chain checked against the test CA), AUTH, MAIL with mail_options (e.g.
        ["REQUIRETLS"]), RCPT, DATA. Returns the DATA reply text."""
        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.check_hostname = False     # connected by address; chain checked
        with smtplib.SMTP(host, port, timeout=20) as c:
            c.ehlo("client.world.example")
            c.starttls(context=ctx)
            c.ehlo("client.world.example")
            for opt in mail_options:
                check(c.has_extn(opt.split("=")[0].lower()),
                      "tern does not offer %s after STARTTLS: %r"
                      % (opt, c.esmtp_features))
            c.login(user, password)
            code, text = c.mail(frm, list(mail_options))
            check(code == 250, "MAIL FROM:<%s> %s: %d %s"
                  % (frm, " ".join(mail_options), code, text))
            for r in rcpts:
                code, text = c.rcpt(r)
                check(code == 250, "RCPT %s: %d %s" % (r, code, text))
            code, text = c.data(msg)
            check(code == 250, "DATA: %d %s" % (code, text))
            return text.decode()

    def logs(self, n=25):
        """The last n log lines of each tern serve of this world."""
        return "".join("\n%s log (last lines):\n%s" % (s.name, s.log(n))
                       for s in self.serves)

    def maildir(self, domain, user):
        return os.path.join(self.dir, "mail", domain, user)

    def maildir_messages(self, domain, user):
        return [h.read(p) for p in h.maildir_files(self.maildir(domain,
                                                                 user))]

    def wait_maildir(self, domain, user, n=1, timeout=15):
        d = self.maildir(domain, user)
        err = None
        try:
            wait_for(lambda: len(h.maildir_files(d)) >= n, timeout,
                     "%d message(s) in the Maildir %s" % (n, d))
        except TestFailure as e:
            err = "%s%s" % (e, self.logs())
        if err:
            fail(err)
        return [h.read(p) for p in h.maildir_files(d)]

    # -- the end ------------------------------------------------------------
    def close(self):
        """Stop everything. Returns what went wrong on the way, as text:
        a tern serve that does not exit 0 on SIGTERM (a sanitizer's
        report in an ASan build ends up here)."""
        problems = []
        if os.environ.get("TERN_WORLD_VERBOSE"):
            for s in self.serves:
                print("---- %s log:\n%s" % (s.name, "\n".join(s.snapshot())))
        for s in self.serves:
            try:
                if s.alive():
                    s.signal(signal.SIGTERM)
                    rc = s.wait_exit(20)
                    if rc != 0:
                        problems.append("%s: tern serve exited with %s after "
                                        "SIGTERM; log:\n%s"
                                        % (s.name, rc, s.log(80)))
            except Exception as e:
                problems.append("%s: stopping tern serve: %s" % (s.name, e))
            s.cleanup()
        self.serves = []
        for s in self.sinks + self.servers:
            try:
                s.stop()
            except Exception:
                pass
        self.sinks, self.servers = [], []
        if self.nsd is not None and self.nsd.poll() is None:
            self.nsd.terminate()
            try:
                self.nsd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.nsd.kill()
                self.nsd.wait()
        if self in World.instances:
            World.instances.remove(self)
        return problems


def message(frm, to, subject="world test", body="Hello.\r\n", extra=""):
    """A small message (CRLF) with a unique Message-ID."""
    mid = "%s.%d@world.example" % (os.urandom(6).hex(), os.getpid())
    return ("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s>\r\n"
            "Date: Thu, 03 Dec 2026 18:00:00 +0000\r\n%s\r\n%s"
            % (frm, to, subject, mid, extra, body)).encode()


def server_tls_context(cert):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert[0], cert[1])
    return ctx


class SinkMessage:
    def __init__(self, peer, mail_from, rcpts, data, tls, tls_version):
        self.peer = peer
        self.mail_from = mail_from
        self.rcpts = list(rcpts)
        self.data = data
        self.tls = tls
        self.tls_version = tls_version

    def __repr__(self):
        return "<SinkMessage from=%r to=%r tls=%s %d bytes>" % (
            self.mail_from, self.rcpts, self.tls_version, len(self.data))


class Sink:
    """An aiosmtpd host: .messages (SinkMessage), .mails (every MAIL as
    (tls, address, [parameters])), .connections (total), .max_open (most
    at once)."""

    def __init__(self, addr, port, tls, name, reply, requiretls=False):
        self.addr, self.port, self.name = addr, port, name
        self.tls = tls
        self.reply = reply
        self.requiretls = requiretls
        self.lock = threading.Lock()
        self.messages = []
        self.mails = []
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self.controller = None

    def start(self):
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import SMTP
        sink = self

        def is_tls(server):
            return server._tls_protocol is not None

        class Handler:
            async def handle_EHLO(self, server, session, envelope, hostname,
                                  responses):
                session.host_name = hostname
                if sink.requiretls and is_tls(server):
                    responses.insert(len(responses) - 1, "250-REQUIRETLS")
                return responses

            async def handle_MAIL(self, server, session, envelope, address,
                                  options):
                with sink.lock:
                    sink.mails.append((is_tls(server), address,
                                       list(options)))
                envelope.mail_from = address
                envelope.mail_options.extend(options)
                return "250 2.1.0 OK"

            async def handle_RCPT(self, server, session, envelope, address,
                                  options):
                if sink.reply:
                    r = sink.reply(address)
                    if r:
                        return r
                envelope.rcpt_tos.append(address)
                return "250 2.1.5 OK"

            async def handle_DATA(self, server, session, envelope):
                tls = is_tls(server)
                ver = None
                if tls:
                    so = server.transport.get_extra_info("ssl_object")
                    ver = so.version() if so else "?"
                m = SinkMessage(session.peer, envelope.mail_from,
                                envelope.rcpt_tos, envelope.original_content,
                                tls, ver)
                with sink.lock:
                    sink.messages.append(m)
                return "250 2.0.0 stored by %s" % sink.name

        class CountingSMTP(SMTP):
            def _getparams(self, params):
                r = super()._getparams(params)
                if r is not None and sink.requiretls and \
                        self._tls_protocol is not None:
                    r.pop("REQUIRETLS", None)    # known here (no value)
                return r

            def connection_made(self, transport):
                if self._original_transport is None:
                    with sink.lock:
                        sink.connections += 1
                        sink.open += 1
                        sink.max_open = max(sink.max_open, sink.open)
                super().connection_made(transport)

            def connection_lost(self, error):
                # once per connection, STARTTLS or not
                super().connection_lost(error)
                with sink.lock:
                    sink.open -= 1

        class C(Controller):
            def factory(self):
                return CountingSMTP(self.handler, **self.SMTP_kwargs)

        kw = {"hostname": self.addr, "port": self.port,
              "server_hostname": self.name, "ready_timeout": 10,
              "data_size_limit": 0, "enable_SMTPUTF8": True}
        if self.tls:
            kw["tls_context"] = server_tls_context(self.tls)
            kw["require_starttls"] = False
        self.controller = C(Handler(), **kw)
        self.controller.start()
        # Controller.start() connects once itself to see the server work:
        # not a client's connection.
        wait_for(lambda: self.open == 0, 5, "the sink's own start-up "
                 "connection to close")
        with self.lock:
            self.connections = 0
            self.max_open = 0
        return self

    def stop(self):
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def snapshot(self):
        with self.lock:
            return list(self.messages)

    def wait(self, n, timeout=15):
        err = None
        try:
            wait_for(lambda: len(self.snapshot()) >= n, timeout,
                     "%d message(s) at the sink %s" % (n, self.name))
        except TestFailure as e:
            w = getattr(self, "world", None)
            err = ("%s (has %d, %d connections)%s"
                   % (e, len(self.snapshot()), self.connections,
                      w.logs() if w else ""))
        if err:
            fail(err)
        return self.snapshot()

    def plaintext_mails(self):
        with self.lock:
            return [a for tls, a, opts in self.mails if not tls]


class Greet421:
    """Accepts connections on addr:port, writes a 421 greeting, closes."""

    def __init__(self, addr, port):
        self.addr, self.port = addr, port
        self.connections = 0
        self.sock = None

    def start(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.addr, self.port))
        self.sock.listen(64)
        self.t = threading.Thread(target=self._loop, daemon=True)
        self.t.start()
        return self

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            try:
                c.sendall(b"421 4.3.2 world: service not available\r\n")
            except OSError:
                pass
            c.close()

    def stop(self):
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
            self.sock = None


class Tarpit:
    """Accepts connections and holds them open, silent; .connections
    counts them, .open() how many are held now."""

    def __init__(self, addr, port):
        self.addr, self.port = addr, port
        self.sock = None
        self.held = []
        self.connections = 0

    def start(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.addr, self.port))
        self.sock.listen(1024)
        self.t = threading.Thread(target=self._loop, daemon=True)
        self.t.start()
        return self

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.held.append(c)

    def open(self):
        n = 0
        for c in list(self.held):
            try:
                c.setblocking(False)
                if c.recv(1, socket.MSG_PEEK) == b"":
                    continue          # closed by the client
            except BlockingIOError:
                pass
            except OSError:
                continue
            n += 1
        return n

    def stop(self):
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
            self.sock = None
        for c in self.held:
            c.close()
        self.held = []


class PolicyServer:
    """HTTPS on addr:443 serving an MTA-STS policy; .fetches counts GETs
    of /.well-known/mta-sts.txt, .hosts the Host headers seen."""

    def __init__(self, addr, cert, policy, port=443):
        self.addr, self.port, self.cert, self.policy = addr, port, cert, policy
        self.fetches = 0
        self.hosts = []
        self.httpd = None

    def start(self):
        srv = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/.well-known/mta-sts.txt":
                    self.send_error(404)
                    return
                srv.fetches += 1
                srv.hosts.append(self.headers.get("Host"))
                body = srv.policy.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer((self.addr, self.port), H)
        ctx = server_tls_context(self.cert)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket,
                                            server_side=True)
        self.t = threading.Thread(target=self.httpd.serve_forever,
                                  daemon=True)
        self.t.start()
        return self

    def stop(self):
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


def tlsa_of_der(der_cert):
    """"3 1 1 HEX" of a DER certificate (what a client was shown)."""
    pem = subprocess.run(["openssl", "x509", "-inform", "DER", "-pubkey",
                          "-noout"], input=der_cert, stdout=subprocess.PIPE,
                         check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"],
                         input=pem, stdout=subprocess.PIPE, check=True).stdout
    return "3 1 1 " + hashlib.sha256(der).hexdigest()


# ---- DKIM keys --------------------------------------------------------------------

def dkim_keys(d, name, algo):
    """(private key PEM path, DNS TXT text "v=DKIM1; k=...; p=...") for
    algo "rsa" (2048 bits) or "ed25519" (RFC 8463: p= the raw key)."""
    key = os.path.join(d, "dkim-%s.pem" % name)
    if algo == "rsa":
        _run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
              "rsa_keygen_bits:2048", "-out", key])
    else:
        _run(["openssl", "genpkey", "-algorithm", "ED25519", "-out", key])
    der = subprocess.run(["openssl", "pkey", "-in", key, "-pubout",
                          "-outform", "DER"], stdout=subprocess.PIPE,
                         check=True).stdout
    if algo == "ed25519":
        der = der[-32:]
        k = "ed25519"
    else:
        k = "rsa"
    return key, "v=DKIM1; k=%s; p=%s" % (k, base64.b64encode(der).decode())


def txt_rdata(text):
    """TXT RDATA for a zone file: quoted strings of at most 255 octets."""
    parts = [text[i:i + 200] for i in range(0, len(text), 200)]
    return "TXT " + " ".join('"%s"' % p for p in parts)


def dns_txt(name):
    """The TXT record of `name` from the test DNS (NSD on 127.0.0.53),
    its strings joined, as bytes; None if there is none."""
    import dnslib
    q = dnslib.DNSRecord.question(name, "TXT")
    a = dnslib.DNSRecord.parse(q.send(DNS_ADDR, 53, timeout=3))
    for rr in a.rr:
        if rr.rtype == dnslib.QTYPE.TXT:
            return b"".join(rr.rdata.data)
    return None


def dkim_verify(data):
    """dkimpy verifies every DKIM-Signature of `data` (bytes), the keys
    looked up in the test DNS (s1._domainkey... TXT served by NSD);
    returns the list of (d=, s=, a=) of the signatures; fails if there is
    none or one does not verify."""
    import dkim

    def dnsfunc(name, timeout=5):
        n = name.decode() if isinstance(name, bytes) else name
        return dns_txt(n.rstrip("."))

    d = dkim.DKIM(data)
    hdrs = [v for k, v in d.headers if k.lower() == b"dkim-signature"]
    check(hdrs, "no DKIM-Signature in the delivered message:\n%r"
          % data[:1500])
    res = []
    for i, hv in enumerate(hdrs):
        tags = dict(t.strip().split(b"=", 1) for t in
                    hv.replace(b"\r\n", b"").split(b";") if b"=" in t)
        ok = d.verify(idx=i, dnsfunc=dnsfunc)
        check(ok, "DKIM-Signature #%d (%r) does not verify with dkimpy"
              % (i, hv[:200]))
        res.append((tags.get(b"d", b"").strip().decode(),
                    tags.get(b"s", b"").strip().decode(),
                    tags.get(b"a", b"").strip().decode()))
    return res


# ---- log lines --------------------------------------------------------------------

def kv(line):
    """The key=value pairs of a logfmt line (quoted values unescaped)."""
    out = {}
    for m in re.finditer(r'(\w[\w.-]*)=("((?:[^"\\]|\\.)*)"|\S*)', line):
        v = m.group(3) if m.group(3) is not None else m.group(2)
        if m.group(3) is not None:
            v = re.sub(r"\\(.)", r"\1", v)
        out[m.group(1)] = v
    return out


def deliveries(serve, rcpt=None, status=None):
    """The event=delivery lines of `serve` as dicts (filtered)."""
    res = []
    for ln in serve.grep("event=delivery"):
        d = kv(ln)
        if rcpt and d.get("rcpt") != "<%s>" % rcpt:
            continue
        if status and d.get("status") != status:
            continue
        d["_line"] = ln
        res.append(d)
    return res


FINAL = ("sent", "bounced", "expired")


def wait_delivery(serve, rcpt, status, timeout=20):
    """Wait for a delivery line of rcpt with that status; returns it.
    Fails at once when rcpt gets another final status (sent, bounced,
    expired) instead, quoting that line."""
    def look():
        got = deliveries(serve, rcpt, status)
        if got:
            return got
        other = [d for d in deliveries(serve, rcpt)
                 if d.get("status") in FINAL]
        if other:
            fail("rcpt=<%s>: expected status=%s, got: %s"
                 % (rcpt, status, other[0]["_line"]))
        local = [ln for ln in serve.grep("event=message")
                 if "<%s>" % rcpt in ln and "status=250" in ln]
        if local:
            fail("rcpt=<%s> was delivered in the SMTP transaction (the "
                 "local target, no queue), not to its MX: %s"
                 % (rcpt, local[0]))
        if not serve.alive():
            fail("tern serve exited (%s) before a status=%s line for <%s>"
                 % (serve.proc.poll(), status, rcpt))
        return None
    err = None
    try:
        wait_for(look, timeout,
                 "a delivery line rcpt=<%s> status=%s" % (rcpt, status))
    except TestFailure as e:
        err = "%s; log:\n%s" % (e, serve.log(40))
    if err:
        fail(err)
    return deliveries(serve, rcpt, status)[0]
