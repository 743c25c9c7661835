"""Helpers for the queue tests (tests/queue; named qtest, as "queue"
would hide Python's own module): `tern serve` with its
durable queue ([queue] section) relaying to next hops the tests control.

Re-exports tests/e2e/e2e.py (Serve, bounded waits, free_ports, ...) and
adds:
    queue_conf()     a tern.ini whose [delivery] relays through the queue
    tern_queue()     runs `tern queue ... -c CONF`
    queue_json()     `tern queue list --json` parsed, one dict a message
    wait_queue_empty()
    AioSink          an aiosmtpd next hop (in this process) that records
                     every message; stopped and started on a fixed port
    Hop              a raw threaded SMTP next hop with scripted or random
                     replies (accept, 4xx, 5xx, stall) that counts the
                     transactions open at any moment
    Postfix          a private Postfix instance (own config, queue, log
                     and Maildir directories) on a loopback port
    strip_received() our Received line off a relayed message

Environment (set by CTest, tests/queue/CMakeLists.txt): TERN_BIN,
TERN_TEST_CERTS, PYTHONPATH with tests/e2e and tests/interop.
"""

import asyncio
import glob
import json
import os
import pwd
import re
import socket
import subprocess
import threading
import time

from e2e import *  # noqa: F401,F403 (the e2e helpers are ours too)
import e2e as h

HOST = "127.0.0.1"

QUEUE_CONF = """[server]
hostname = queue.e2e.example
shutdown_timeout = {shutdown}
{server}
[listener in]
url = smtp://127.0.0.1:{port}

[delivery]
target = smtp
url = smtp://127.0.0.1:{hop}
{delivery}
[queue]
directory = {qdir}
retry_min = {retry_min}
retry_max = {retry_max}
{queue}"""


class Conf:
    """A written tern.ini: path, the listener's port, the spool dir."""

    def __init__(self, path, port, qdir, control):
        self.path, self.port, self.qdir, self.control = (path, port, qdir,
                                                         control)


def queue_conf(d, hop_port, name="tern", qdir=None, retry_min="1s",
               retry_max="2s", shutdown="10s", server="", delivery="",
               queue="", port=None):
    """Writes d/NAME.ini: one SMTP listener on a free port, [delivery]
    target smtp to 127.0.0.1:hop_port (through the queue, the default
    for a relaying target), [queue] in d/NAME-queue with short retries.
    `server`, `delivery`, `queue`: extra lines for those sections."""
    if port is None:
        (port,) = h.free_ports(1)
    qdir = qdir or os.path.join(d, name + "-queue")
    path = h.write(os.path.join(d, name + ".ini"), QUEUE_CONF.format(
        port=port, hop=hop_port, qdir=qdir, retry_min=retry_min,
        retry_max=retry_max, shutdown=shutdown, server=server,
        delivery=delivery, queue=queue))
    control = os.path.join(qdir, "control")
    m = re.search(r"^control\s*=\s*(\S+)", queue, re.M)
    if m:
        control = m.group(1)
    return Conf(path, port, qdir, control)


def tern_queue(conf, *args, timeout=30, check_rc=True):
    """`tern queue ARGS -c CONF` (CONF: a Conf or a path)."""
    path = conf.path if isinstance(conf, Conf) else conf
    return h.run([h.tern_bin(), "queue"] + list(args) + ["-c", path],
                 timeout=timeout, check_rc=check_rc,
                 stdin=subprocess.DEVNULL)


def queue_json(conf):
    """`tern queue list --json`: a list of dicts, one a message."""
    p = tern_queue(conf, "list", "--json")
    out = []
    for ln in p.stdout.decode("utf-8", "replace").splitlines():
        if not ln.strip():
            continue
        try:
            out.append(json.loads(ln))
        except ValueError:
            h.fail("tern queue list --json printed a line that is not "
                   "JSON: %r" % ln)
    return out


def queue_text(conf):
    return tern_queue(conf, "list").stdout.decode("utf-8", "replace")


def wait_queue_empty(conf, timeout, what="the queue to be empty"):
    last = []

    def empty():
        last[:] = queue_json(conf)
        return not last
    try:
        h.wait_for(empty, timeout, what, interval=0.2)
    except h.TestFailure as e:
        h.fail("%s; still queued (%d):\n%s" % (
            e, len(last), "\n".join(json.dumps(m) for m in last[:10])))


def sqlite_integrity(qdir):
    """sqlite3's integrity_check of the spool's queue.db (read only)."""
    sq = h.require_tool("sqlite3", paths=["/usr/bin/sqlite3"])
    db = os.path.join(qdir, "queue.db")
    h.check(os.path.exists(db), "no %s" % db)
    p = h.run([sq, "-readonly", db, "PRAGMA integrity_check;"], timeout=60)
    return p.stdout.decode().strip()


def sqlite_query(qdir, sql):
    sq = h.require_tool("sqlite3", paths=["/usr/bin/sqlite3"])
    p = h.run([sq, "-readonly", os.path.join(qdir, "queue.db"), sql],
              timeout=60)
    return p.stdout.decode().strip()


# ---- relayed messages ----------------------------------------------------------

def strip_received(data, what="relayed message"):
    """(trace, rest): the Received field(s) a relay prepends (with their
    continuation lines) and the message behind them."""
    pos = 0
    n = 0
    while True:
        end = data.find(b"\r\n", pos)
        h.check(end >= 0, "%s: no end of line in %r" % (what, data[:200]))
        line = data[pos:end]
        if line[:1] in (b" ", b"\t") and n:
            pass
        elif line.lower().startswith(b"received:"):
            n += 1
        else:
            h.check(n, "%s does not start with a Received field: %r"
                    % (what, data[:300]))
            return data[:pos], data[pos:]
        pos = end + 2


MSGID_RE = re.compile(rb"^Message-ID:[ \t]*<([^>\r\n]+)>", re.M | re.I)


def msgid_of(data):
    hdr = data.split(b"\r\n\r\n", 1)[0]
    m = MSGID_RE.search(hdr)
    return m.group(1).decode() if m else None


# ---- aiosmtpd next hop ------------------------------------------------------------

class AioSink:
    """An aiosmtpd SMTP server in this process on 127.0.0.1:port that
    stores every message: self.got = [(mail_from, [rcpts], bytes)],
    bytes as received after dot-unstuffing. `delay`: seconds it waits
    before answering the end of data (a slow next hop); self.inflight:
    transactions whose data is in and not yet answered; a message whose
    client is gone when the answer is due is not kept (self.dropped)."""

    def __init__(self, port=None, delay=0.0):
        try:
            import aiosmtpd  # noqa: F401
        except ImportError:
            h.fail("aiosmtpd is missing (Debian: python3-aiosmtpd)")
        self.port = port or h.free_ports(1)[0]
        self.delay = delay
        self.got = []
        self.inflight = 0
        self.dropped = 0
        self.lock = threading.Lock()
        self.ctl = None

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.inflight += 1
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            t = server.transport
            if t is None or t.is_closing():
                # the client left before our answer: like a server that
                # commits only when it can say so, keep nothing
                with self.lock:
                    self.dropped += 1
                return "451 4.3.0 Client gone"
            with self.lock:
                self.got.append((envelope.mail_from, list(envelope.rcpt_tos),
                                 bytes(envelope.original_content)))
            return "250 2.0.0 Ok stored"
        finally:
            with self.lock:
                self.inflight -= 1

    def start(self):
        from aiosmtpd.controller import Controller
        self.ctl = Controller(self, hostname=HOST, port=self.port,
                              ready_timeout=10)
        self.ctl.start()
        return self

    def stop(self):
        if self.ctl is not None:
            self.ctl.stop()
            self.ctl = None

    def messages(self):
        with self.lock:
            return list(self.got)

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()
        return False


# ---- a raw, scriptable next hop ------------------------------------------------------

class Hop:
    """A threaded SMTP next hop on 127.0.0.1:port.

    decide(stage, ctx) -> reply text, or ("stall", seconds, reply): what
    to answer at "rcpt" (ctx: mail_from, rcpt) and at "data" (the end of
    data; ctx: mail_from, rcpts accepted, data). Default: accept all.
    It offers DSN, so a relay passes ENVID, RET, NOTIFY and ORCPT on.

    Records under its lock:
      accepted  [(mail_from, rcpt, msgid, data)] one per recipient of a
                message answered 250 at the end of data (the reply sent)
      txns      the transactions open now (MAIL seen; not yet ended by
                the reply to the data, RSET, QUIT, a new MAIL or the
                connection's end): dicts with mail_from, envid, rcpts
                (every RCPT, whatever its answer), data (or None)
      ended     (monotonic time, transaction) of each ended one
    """

    CAPS = ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "DSN"]

    def __init__(self, port=None, decide=None):
        self.port = port or h.free_ports(1)[0]
        self.decide = decide or (lambda stage, ctx: "250 2.0.0 Ok")
        self.lock = threading.Lock()
        self.accepted = []
        self.txns = {}
        self.ended = []
        self.sessions = 0
        self.ls = None
        self.conns = set()
        self.stopping = False

    def start(self):
        self.stopping = False
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind((HOST, self.port))
        self.ls.listen(128)
        self.t = threading.Thread(target=self._accept, daemon=True)
        self.t.start()
        return self

    def stop(self):
        self.stopping = True
        if self.ls is not None:
            try:
                self.ls.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.ls.close()
            self.ls = None
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()
        return False

    def _accept(self):
        ls = self.ls
        while not self.stopping:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            with self.lock:
                self.conns.add(c)
                self.sessions += 1
            threading.Thread(target=self._session, args=(c,),
                             daemon=True).start()

    def _reply(self, c, stage, ctx):
        r = self.decide(stage, ctx)
        if isinstance(r, tuple):
            _, secs, r = r
            time.sleep(secs)
        c.sendall(r.encode() + b"\r\n")
        return r

    def _begin(self, mail_from, envid):
        t = {"mail_from": mail_from, "envid": envid, "rcpts": [],
             "data": None}
        with self.lock:
            self.txns[id(t)] = t
        return t

    def _end(self, t):
        if t is None:
            return None
        with self.lock:
            if self.txns.pop(id(t), None) is not None:
                self.ended.append((time.monotonic(), t))
        return None

    def _session(self, c):
        c.settimeout(120)
        f = c.makefile("rb")
        txn, rcpts = None, []
        try:
            c.sendall(b"220 hop.queue.example ESMTP\r\n")
            while True:
                ln = f.readline(4096)
                if not ln:
                    return
                line = ln.rstrip(b"\r\n").decode("utf-8", "replace")
                verb = line.split(" ", 1)[0].upper()
                if verb in ("EHLO", "HELO"):
                    ks = ["hop.queue.example"] + self.CAPS
                    c.sendall("".join(
                        "250%s%s\r\n" % ("-" if i < len(ks) - 1 else " ", k)
                        for i, k in enumerate(ks)).encode())
                elif verb == "MAIL":
                    txn = self._end(txn)
                    m = re.match(r"MAIL FROM:\s*<([^>]*)>", line, re.I)
                    e = re.search(r" ENVID=(\S+)", line, re.I)
                    txn = self._begin(m.group(1) if m else "",
                                      xtext_decode(e.group(1)) if e else None)
                    rcpts = []
                    c.sendall(b"250 2.1.0 Ok\r\n")
                elif verb == "RCPT":
                    m = re.match(r"RCPT TO:\s*<([^>]*)>", line, re.I)
                    rcpt = m.group(1) if m else ""
                    if txn is not None:
                        txn["rcpts"].append(rcpt)
                    r = self._reply(c, "rcpt", {
                        "mail_from": txn["mail_from"] if txn else "",
                        "rcpt": rcpt})
                    if r.startswith("2"):
                        rcpts.append(rcpt)
                elif verb == "DATA":
                    if not rcpts or txn is None:
                        c.sendall(b"554 5.5.1 No valid recipients\r\n")
                        continue
                    c.sendall(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    chunks = []
                    while True:
                        d = f.readline()
                        if not d:
                            return
                        if d == b".\r\n":
                            break
                        chunks.append(d[1:] if d.startswith(b".") else d)
                    data = b"".join(chunks)
                    txn["data"] = data
                    r = self._reply(c, "data", {
                        "mail_from": txn["mail_from"], "rcpts": list(rcpts),
                        "data": data})
                    if r.startswith("2"):
                        mid = msgid_of(data)
                        with self.lock:
                            for t in rcpts:
                                self.accepted.append(
                                    (txn["mail_from"], t, mid, data))
                    txn, rcpts = self._end(txn), []
                elif verb in ("RSET", "NOOP"):
                    if verb == "RSET":
                        txn, rcpts = self._end(txn), []
                    c.sendall(b"250 2.0.0 Ok\r\n")
                elif verb == "QUIT":
                    txn = self._end(txn)
                    c.sendall(b"221 2.0.0 Bye\r\n")
                    return
                else:
                    c.sendall(b"502 5.5.2 Not implemented\r\n")
        except OSError:
            return
        finally:
            self._end(txn)
            with self.lock:
                self.conns.discard(c)
            try:
                c.close()
            except OSError:
                pass

    def snapshot(self):
        with self.lock:
            return list(self.accepted)

    def in_flight(self, window=0.0):
        """The transactions open now, plus those that ended in the last
        `window` seconds (an outcome the relay may not have recorded
        yet): a list of their dicts."""
        now = time.monotonic()
        with self.lock:
            return (list(self.txns.values()) +
                    [t for e, t in self.ended if now - e <= window])


def xtext_decode(s):
    """RFC 3461 xtext: "+HH" is the octet HH."""
    return re.sub(r"\+([0-9A-Fa-f]{2})",
                  lambda m: chr(int(m.group(1), 16)), s)


# ---- a private Postfix instance ------------------------------------------------------

POSTFIX_MAIN = """\
compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
myhostname = hop.queue.example
mydomain = queue.example
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
maillog_file_prefixes = {d}
maillog_file = {d}/maillog
virtual_mailbox_domains = example.org, example.net
virtual_mailbox_base = {d}/mail
virtual_mailbox_maps = texthash:{d}/conf/vmailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_transport = virtual
smtpd_recipient_restrictions = reject_unlisted_recipient,
  permit_mynetworks, reject_unauth_destination
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
"""

POSTFIX_MASTER = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
proxymap  unix  - - n -  - proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
virtual   unix  - n n -  - virtual
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class Postfix:
    """A private Postfix instance (own config, queue, data, log and mail
    directories) whose smtpd listens on a loopback port and delivers the
    users given (LOCAL@DOMAIN, DOMAIN example.org or example.net) to
    Maildirs under d/mail/DOMAIN/LOCAL/; any other recipient of those
    domains is refused at RCPT time by reject_unlisted_recipient with
    Postfix's own "550 5.1.1 ... User unknown in virtual mailbox table"."""

    def __init__(self, users):
        self.postfix = h.require_tool("postfix", paths=["/usr/sbin/postfix"])
        h.check(os.path.exists("/usr/lib/postfix/sbin/smtpd"),
                "Postfix's smtpd is not installed (Debian: postfix)")
        h.check(os.getuid() == 0, "a private Postfix instance needs root")
        d = self.d = h.tmpdir("tern-queue-postfix-")
        os.chmod(d, 0o755)
        (self.port,) = h.free_ports(1)
        nobody = pwd.getpwnam("nobody")
        for sub in ("conf", "queue", "data", "mail"):
            os.makedirs(os.path.join(d, sub))
        pf = pwd.getpwnam("postfix")
        os.chown(os.path.join(d, "data"), pf.pw_uid, pf.pw_gid)
        os.chown(os.path.join(d, "mail"), nobody.pw_uid, nobody.pw_gid)
        h.write(os.path.join(d, "conf", "main.cf"), POSTFIX_MAIN.format(
            d=d, uid=nobody.pw_uid, gid=nobody.pw_gid))
        h.write(os.path.join(d, "conf", "master.cf"),
                POSTFIX_MASTER.format(port=self.port))
        h.write(os.path.join(d, "conf", "vmailbox"), "".join(
            "%s %s/%s/\n" % (u, u.split("@")[1], u.split("@")[0])
            for u in users))
        self.conf = os.path.join(d, "conf")

    def __enter__(self):
        r = subprocess.run([self.postfix, "-c", self.conf, "start"],
                           capture_output=True, timeout=60)
        h.check(r.returncode == 0, "postfix start: %r %r%s" % (
            r.stdout, r.stderr, self.log()))
        try:
            h.wait_for(lambda: h.listening(self.port), 20, "Postfix's smtpd")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        subprocess.run([self.postfix, "-c", self.conf, "stop"],
                       capture_output=True, timeout=60)

    def __exit__(self, *a):
        self.stop()
        return False

    def files(self, addr):
        local, dom = addr.split("@")
        return sorted(glob.glob(os.path.join(self.d, "mail", dom, local,
                                             "new", "*")))

    def all_files(self):
        return sorted(glob.glob(os.path.join(self.d, "mail", "*", "*",
                                             "new", "*")))

    def queue_files(self):
        """Files in Postfix's own queue (mail it has not delivered)."""
        out = []
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for root, _, fs in os.walk(os.path.join(self.d, "queue", sub)):
                out += [os.path.join(root, f) for f in fs]
        return out

    def wait_idle(self, timeout=30):
        h.wait_for(lambda: not self.queue_files(), timeout,
                   "Postfix's queue to be empty", interval=0.1)

    def log(self):
        p = os.path.join(self.d, "maillog")
        return open(p, errors="replace").read() if os.path.exists(p) else ""
