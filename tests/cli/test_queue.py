#!/usr/bin/env python3
"""`tern queue` (src/cli/queue_cmd.c) and the daemon's control socket
(src/cli/control.c), against queue_ctl_server: a real queue (the public
API) whose every delivery is deferred, with the control socket, without
the rest of `tern serve`.

Usage errors and exit codes; the socket's mode (0600) and the daemon's
peer check (another uid is refused even when the mode would let it in);
list / list --json / show / hold / release / flush / delete through the
daemon; the same listing read from the spool when the daemon is stopped;
"the daemon is not running" (75) for what needs it; the protocol's
limits (bad request, over-long line, no request within 10 s); a stale
socket replaced, a live one or a non-socket left alone."""

import json
import os
import queue as pyqueue
import re
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time

import harness as h

ID_RE = re.compile(r"^[0-9A-Z]{1,23}$")
REPLY = "451 4.4.1 test: next hop down"


def tern():
    return h.env_path("TERN_BIN")


def run(args, timeout=60, pre=None, binary=None):
    p = h.run((pre or []) + [binary or tern(), "queue"] + args,
              timeout=timeout, check_rc=False)
    return (p.returncode, p.stdout.decode("utf-8", "replace"),
            p.stderr.decode("utf-8", "replace"))


def expect(args, code, err_has=None, out=None, **kw):
    rc, o, e = run(args, **kw)
    h.check(rc == code, "tern queue %s: exit %d, expected %d; stderr %r"
            % (" ".join(args), rc, code, e))
    if err_has is not None:
        h.check(err_has in e, "tern queue %s: stderr %r lacks %r"
                % (" ".join(args), e, err_has))
    if out is not None:
        h.check(o == out, "tern queue %s: stdout %r, expected %r"
                % (" ".join(args), o, out))
    return o, e


def body(i):
    return "Subject: test %d\r\n\r\nmessage %d\r\n" % (i, i)


class QServer:
    """queue_ctl_server DIR CONTROL N: the queue with its control socket;
    "ready" once the N messages are committed and deferred."""

    def __init__(self, qdir, control, n, mode=None):
        self.qdir, self.control = qdir, control
        cmd = [h.env_path("TERN_QUEUE_CTL_SERVER"), qdir, control, str(n)]
        if mode:
            cmd.append(mode)
        self.lines = pyqueue.Queue()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL)
        self.ids = []
        self.err = []

        def read(stream, into):
            for raw in stream:
                into(raw.decode("utf-8", "replace").rstrip("\n"))
            into(None)
        threading.Thread(target=read, args=(self.proc.stdout, self.lines.put),
                         daemon=True).start()
        threading.Thread(target=read, args=(self.proc.stderr, self.err.append),
                         daemon=True).start()

    def wait_ready(self, timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            h.check(left > 0, "queue_ctl_server: not ready after %d s" % timeout)
            try:
                line = self.lines.get(timeout=left)
            except pyqueue.Empty:
                continue
            if line is None:
                self.proc.wait(timeout=10)
                return self.proc.returncode
            m = re.match(r"queued Ok: queued as ([0-9A-Z]+)$", line)
            if m:
                self.ids.append(m.group(1))
            elif line == "ready":
                return None

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            h.fail("queue_ctl_server did not stop on SIGTERM")
        h.check(rc == 0, "queue_ctl_server exited %d: %r" % (rc, self.err))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def raw_request(path, data, timeout=20):
    """Send bytes, read the whole answer (the daemon closes)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    if data:
        s.sendall(data)
    out = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        out += b
    s.close()
    return out.decode("utf-8", "replace")


def parse_text(out):
    """The text listing as {id: (held, header, [rcpt lines])}."""
    msgs, cur = {}, None
    for line in out.splitlines():
        if line.startswith("-- ") or line == "Queue is empty":
            continue
        if not line.startswith(" "):
            f = line.split("  ")
            mid = f[0].rstrip("!")
            cur = msgs[mid] = (f[0].endswith("!"), line, [])
        else:
            cur[2].append(line)
    return msgs


# ---- without a daemon -------------------------------------------------------

def test_usage():
    d = h.tmpdir(prefix="tern-queue-usage-")
    for args in ([], ["frob"], ["show"], ["show", "abc"],
                 ["show", "A" * 24], ["delete"], ["hold", "A", "B"],
                 ["flush", "A", "B"], ["list", "X"], ["show", "A-1"],
                 ["show", "--json", "A"], ["--nope", "list"]):
        expect(["-d", d] + args, 64)
    for args in (["-c", "x.ini", "-d", d, "list"], ["-d"], ["-d", "", "list"]):
        expect(args, 64)
    o, _ = expect(["--help"], 0)
    for w in ("list", "show", "flush", "delete", "hold", "release", "--json",
              "-c", "-d"):
        h.check(w in o, "--help lacks %s: %r" % (w, o))
    p = h.run([tern(), "help"], timeout=30)
    h.check(b"queue" in p.stdout, "tern help does not list queue")


def test_not_running():
    d = h.tmpdir(prefix="tern-queue-down-")
    ctl = os.path.join(d, "control")
    for args in (["flush"], ["flush", "ABC"], ["delete", "ABC"],
                 ["hold", "ABC"], ["release", "ABC"]):
        expect(["-d", d] + args, 75,
               err_has="tern queue: the daemon is not running (%s)" % ctl)
    expect(["-d", os.path.join(d, "nowhere"), "list"], 66,
           err_has="no queue at")
    # a file named in a configuration: its [queue] directory and control
    ini = os.path.join(d, "tern.ini")
    with open(ini, "w") as f:
        f.write("[queue]\ndirectory = %s\ncontrol = %s/ctl.sock\n" % (d, d))
    expect(["-c", ini, "flush"], 75,
           err_has="the daemon is not running (%s/ctl.sock)" % d)
    with open(ini, "w") as f:
        f.write("[queue]\nretry_min = 2h\n")
    expect(["-c", ini, "list"], 78, err_has="%s:2: [queue] retry_min" % ini)


# ---- with the daemon --------------------------------------------------------

def check_listing(out, ids, held=(), attempts=1):
    msgs = parse_text(out)
    h.check(sorted(msgs) == sorted(ids), "ids %r, expected %r\n%s"
            % (sorted(msgs), sorted(ids), out))
    for mid, (is_held, line, rcpts) in msgs.items():
        h.check(is_held == (mid in held), "%s held=%s: %r"
                % (mid, is_held, line))
        h.check(re.match(r"^%s!?  \d+  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  "
                         r"sender@example\.org$" % mid, line), line)
        h.check(len(rcpts) == 4, "%s: %r" % (mid, rcpts))
        for addr, (r, reply) in zip(("a@example.net", "b@example.net"),
                                    (rcpts[0:2], rcpts[2:4])):
            # a held message is not tried: no next time (tern_queue_list
            # reports next_try 0 for it)
            nxt = ("" if mid in held else
                   r"  next \d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
            h.check(re.match(r"^  %s  deferred  attempts %d%s  via relay$"
                             % (re.escape(addr), attempts, nxt), r), r)
            h.check(reply == "    (%s)" % REPLY, reply)
    n = len(ids)
    last = out.splitlines()[-1]
    h.check(last == ("-- %d message%s, %d recipients"
                     % (n, "" if n == 1 else "s", 2 * n)
                     if n else "Queue is empty"), last)


def check_json(out, ids, held=(), attempts=1):
    now = time.time()
    objs = [json.loads(line) for line in out.splitlines()]
    h.check(sorted(o["id"] for o in objs) == sorted(ids), out)
    for o in objs:
        h.check(set(o) == {"id", "arrival", "size", "from", "held", "bounce",
                           "rcpts"}, "keys %r" % sorted(o))
        h.check(ID_RE.match(o["id"]), o)
        h.check(abs(o["arrival"] - now) < 600, o)
        h.check(o["from"] == "sender@example.org" and o["bounce"] is False
                and o["held"] == (o["id"] in held), o)
        h.check(o["size"] == len(body(0)), "size %r" % o["size"])
        h.check([r["addr"] for r in o["rcpts"]]
                == ["a@example.net", "b@example.net"], o)
        for r in o["rcpts"]:
            h.check(set(r) == {"addr", "dest", "state", "attempts",
                               "next_try", "last_code", "last_reply"}, r)
            h.check(r["dest"] == "relay" and r["state"] == "deferred"
                    and r["attempts"] == attempts and r["last_code"] == 451
                    and r["last_reply"] == REPLY, r)
            h.check(r["next_try"] == 0 if o["id"] in held
                    else r["next_try"] > now + 1800, r)


def test_daemon():
    d = h.tmpdir(prefix="tern-queue-on-")
    qdir = os.path.join(d, "q")
    ctl = os.path.join(qdir, "control")
    srv = QServer(qdir, ctl, 3)
    try:
        h.check(srv.wait_ready() is None, "queue_ctl_server failed: %r"
                % srv.err)
        ids = srv.ids
        h.check(len(ids) == 3 and all(ID_RE.match(i) for i in ids), ids)
        st = os.lstat(ctl)
        h.check(stat.S_ISSOCK(st.st_mode), "control is not a socket")
        h.check(stat.S_IMODE(st.st_mode) == 0o600, "control mode %o"
                % stat.S_IMODE(st.st_mode))
        h.check(st.st_uid == os.geteuid(), "control owner %d" % st.st_uid)
        h.check(not [n for n in os.listdir(qdir) if n.startswith(".control")],
                "the bind directory was left: %r" % os.listdir(qdir))

        o, _ = expect(["-d", qdir, "list"], 0)
        check_listing(o, ids)
        o, _ = expect(["-d", qdir, "list", "--json"], 0)
        check_json(o, ids)

        # show: the envelope, a blank line, the body as stored
        o, _ = expect(["-d", qdir, "show", ids[1]], 0)
        env, sep, rest = o.partition("\n\n")
        h.check(sep and rest == body(1), "show body %r" % o)
        check_listing(env + "\n-- 1 message, 2 recipients\n", [ids[1]])

        # hold, release
        expect(["-d", qdir, "hold", ids[0]], 0, out="")
        o, _ = expect(["-d", qdir, "list"], 0)
        check_listing(o, ids, held=[ids[0]])
        o, _ = expect(["-d", qdir, "list", "--json"], 0)
        check_json(o, ids, held=[ids[0]])
        expect(["-d", qdir, "release", ids[0]], 0, out="")
        o, _ = expect(["-d", qdir, "list"], 0)
        check_listing(o, ids)

        # flush one: it is tried again at once (and deferred again)
        expect(["-d", qdir, "flush", ids[2]], 0, out="")

        def attempts():
            o = run(["-d", qdir, "list", "--json"])[1]
            return {m["id"]: [r["attempts"] for r in m["rcpts"]]
                    for m in map(json.loads, o.splitlines())}
        h.wait_for(lambda: attempts()[ids[2]] == [2, 2], 10,
                   "the flushed message's second attempt")
        h.check(attempts()[ids[0]] == [1, 1], "flush ID retried others")
        # flush all: every message again
        expect(["-d", qdir, "flush"], 0, out="")
        h.wait_for(lambda: attempts() == {ids[0]: [2, 2], ids[1]: [2, 2],
                                          ids[2]: [3, 3]}, 10,
                   "every message's next attempt")

        # delete: gone; a second time, or an unknown id: 1
        expect(["-d", qdir, "delete", ids[2]], 0, out="")
        for args in (["delete", ids[2]], ["show", ids[2]],
                     ["hold", "ZZZZZZZZ"], ["release", "ZZZZZZZZ"],
                     ["flush", "ZZZZZZZZ"]):
            expect(["-d", qdir] + args, 1, err_has="no such message")
        h.wait_for(lambda: run(["-d", qdir, "list"])[0] == 0 and
                   len(parse_text(run(["-d", qdir, "list"])[1])) == 2,
                   10, "the deleted message to leave the list")
        ids = ids[:2]

        # the protocol's own limits
        a = raw_request(ctl, b"FROB\n")
        h.check(a.startswith("ERR USAGE unknown request"), a)
        a = raw_request(ctl, b"SHOW abc\n")
        h.check(a.startswith("ERR USAGE SHOW needs a queue id"), a)
        a = raw_request(ctl, b"DELETE\n")
        h.check(a.startswith("ERR USAGE"), a)
        a = raw_request(ctl, b"L" * 3000)
        h.check(a == "ERR USAGE request longer than 1024 octets\n", a)
        a = raw_request(ctl, b"LIST\r\n")
        h.check(a.startswith(" ") and a.endswith("\nOK\n"), a)
        t0 = time.monotonic()
        a = raw_request(ctl, b"", timeout=30)
        took = time.monotonic() - t0
        h.check(a == "ERR USAGE no request within 10 s\n", a)
        h.check(9 <= took < 20, "the idle client was dropped after %.1f s"
                % took)

        # at most 16 clients at once: the 17th is told to come back (75)
        idle = []
        try:
            for _ in range(16):
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                c.settimeout(10)
                c.connect(ctl)
                idle.append(c)
            a = raw_request(ctl, b"LIST\n")
            h.check(a.startswith("ERR BUSY"), a)
            expect(["-d", qdir, "list"], 75, err_has="too many control")
        finally:
            for c in idle:
                c.close()
        h.wait_for(lambda: run(["-d", qdir, "list"])[0] == 0, 10,
                   "the control socket to serve again")

        # a second daemon on the same socket: refused, the first unharmed
        other = QServer(os.path.join(d, "q2"), ctl, 0)
        rc = other.wait_ready()
        h.check(rc == 1 and any("another daemon answers there" in e
                                for e in other.err if e), "%r %r"
                % (rc, other.err))
        expect(["-d", qdir, "list"], 0)

        check_peer(d, qdir, ctl)
        online = run(["-d", qdir, "list"])[1]
        online_json = run(["-d", qdir, "list", "--json"])[1]
    finally:
        srv.kill() if srv.proc.poll() is not None else srv.stop()
    h.check(not os.path.exists(ctl), "the socket outlived the daemon")

    # offline: the same listing from the spool; changes need the daemon
    o, _ = expect(["-d", qdir, "list"], 0)
    h.check(o == online, "offline list differs:\n%s\nonline:\n%s"
            % (o, online))
    o, _ = expect(["-d", qdir, "list", "--json"], 0)
    h.check(o == online_json, "offline --json differs")
    o, _ = expect(["-d", qdir, "show", ids[0]], 0)
    h.check(o.partition("\n\n")[2] == body(0), o)
    expect(["-d", qdir, "show", "ZZZZ"], 1, err_has="no such message: ZZZZ")
    expect(["-d", qdir, "hold", ids[0]], 75,
           err_has="the daemon is not running (%s)" % ctl)

    # a stale socket (a daemon that died) is replaced
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(ctl)
    s.close()
    srv = QServer(qdir, ctl, 0)
    try:
        h.check(srv.wait_ready() is None, "stale socket: %r" % srv.err)
        o, _ = expect(["-d", qdir, "list"], 0)
        check_listing(o, ids, attempts=2)
    finally:
        srv.stop()
    # a file that is not a socket is left alone
    with open(ctl, "w") as f:
        f.write("not a socket\n")
    srv = QServer(qdir, ctl, 0)
    rc = srv.wait_ready()
    h.check(rc == 1 and any("exists and is not a socket" in e
                            for e in srv.err if e), "%r %r" % (rc, srv.err))
    with open(ctl) as f:
        h.check(f.read() == "not a socket\n", "the file was touched")


def check_peer(d, qdir, ctl):
    """Another user: the socket's mode keeps it out (EACCES, 77); with the
    mode opened up, the daemon's SO_PEERCRED check still refuses it."""
    if os.geteuid() != 0:
        print("NOTE: not root: the other-uid checks need root (setpriv)")
        return
    setpriv = h.require_tool("setpriv")
    # a copy of tern that the other user can run, wherever the build is
    bindir = os.path.join(d, "bin")
    os.mkdir(bindir)
    os.chmod(d, 0o755)
    os.chmod(bindir, 0o755)
    binary = os.path.join(bindir, "tern")
    shutil.copy(tern(), binary)
    os.chmod(binary, 0o755)
    pre = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    expect(["-d", qdir, "list"], 77, err_has="Permission denied",
           pre=pre, binary=binary)
    mode = stat.S_IMODE(os.stat(qdir).st_mode)
    os.chmod(qdir, 0o755)
    os.chmod(ctl, 0o666)
    try:
        for args in (["list"], ["delete", "ABC"], ["flush"]):
            expect(["-d", qdir] + args, 77,
                   err_has="uid 65534 may not use this socket",
                   pre=pre, binary=binary)
    finally:
        os.chmod(ctl, 0o600)
        os.chmod(qdir, mode)
    h.check(len(parse_text(run(["-d", qdir, "list"])[1])) == 2,
            "the refused delete went through")


def test_offline_spool():
    """A spool written and closed, no daemon ever listening: list, --json,
    show; an empty spool says so."""
    d = h.tmpdir(prefix="tern-queue-off-")
    qdir = os.path.join(d, "q")
    srv = QServer(qdir, os.path.join(qdir, "control"), 2, mode="exit")
    rc = srv.wait_ready()
    h.check(rc == 0, "queue_ctl_server exit mode: %r %r" % (rc, srv.err))
    o, _ = expect(["-d", qdir, "list"], 0)
    check_listing(o, srv.ids)
    o, _ = expect(["-d", qdir, "list", "--json"], 0)
    check_json(o, srv.ids)
    o, _ = expect(["-d", qdir, "show", srv.ids[1]], 0)
    h.check(o.partition("\n\n")[2] == body(1), o)
    empty = os.path.join(d, "empty")
    srv = QServer(empty, os.path.join(empty, "control"), 0, mode="exit")
    h.check(srv.wait_ready() == 0, "empty spool: %r" % srv.err)
    expect(["-d", empty, "list"], 0, out="Queue is empty\n")
    expect(["-d", empty, "list", "--json"], 0, out="")


def test_large_listing():
    """3,000 messages (about 1 MB of listing: many 64 KiB blocks written
    while the list is made): the daemon's list equals the spool's, and
    the client gets all of it."""
    d = h.tmpdir(prefix="tern-queue-large-")
    qdir = os.path.join(d, "q")
    srv = QServer(qdir, os.path.join(qdir, "control"), 3000)
    try:
        h.check(srv.wait_ready(timeout=60) is None, "%r" % srv.err)
        t0 = time.monotonic()
        online = run(["-d", qdir, "list"])
        took = time.monotonic() - t0
        online_json = run(["-d", qdir, "list", "--json"])
    finally:
        srv.stop()
    h.check(online[0] == 0 and online_json[0] == 0, "%r %r"
            % (online[2], online_json[2]))
    print("list of 3000 messages through the socket: %.2f s, %d octets"
          % (took, len(online[1])))
    h.check(online[1].endswith("-- 3000 messages, 6000 recipients\n"),
            online[1][-200:])
    h.check(len(online_json[1].splitlines()) == 3000, "json lines")
    offline = run(["-d", qdir, "list"])
    h.check(offline == online, "offline and online listings differ")
    h.check(run(["-d", qdir, "list", "--json"]) == online_json,
            "offline and online --json differ")


def test_clients_that_never_read():
    """16 clients ask for a 3,000-message listing and never read it: they
    must not lock `tern queue` out (they did, until the daemon restarted:
    each answer waited for its reader for ever)."""
    d = h.tmpdir(prefix="tern-queue-stuck-")
    qdir = os.path.join(d, "q")
    ctl = os.path.join(qdir, "control")
    srv = QServer(qdir, ctl, 3000)
    try:
        h.check(srv.wait_ready(timeout=60) is None, "%r" % srv.err)
        # 16 clients ask for the listing and never read it: they must not
        # lock tern queue out (they did, until the daemon restarted)
        stuck = []
        try:
            for _ in range(16):
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                c.settimeout(10)
                c.connect(ctl)
                c.sendall(b"LIST\n")
                stuck.append(c)
            h.wait_for(lambda: run(["-d", qdir, "flush"])[0] == 0, 30,
                       "tern queue to be served again beside 16 clients "
                       "that never read")
        finally:
            for c in stuck:
                c.close()
    finally:
        srv.stop()


def test_audit_trail():
    """Every change made through the control socket is a log line of the
    daemon's: event=hold/release/flush/delete, the id, who (uid), and how
    it went."""
    d = h.tmpdir(prefix="tern-queue-audit-")
    qdir = os.path.join(d, "q")
    srv = QServer(qdir, os.path.join(qdir, "control"), 2)
    uid = os.geteuid()
    try:
        h.check(srv.wait_ready() is None, "%r" % srv.err)
        a, b = srv.ids
        expect(["-d", qdir, "hold", a], 0)
        expect(["-d", qdir, "release", a], 0)
        expect(["-d", qdir, "flush", b], 0)
        expect(["-d", qdir, "flush"], 0)
        expect(["-d", qdir, "delete", b], 0)
        expect(["-d", qdir, "delete", b], 1)
        want = [r"event=hold id=%s by=control uid=%d result=ok" % (a, uid),
                r"event=release id=%s by=control uid=%d result=ok" % (a, uid),
                r"event=flush id=%s by=control uid=%d result=ok" % (b, uid),
                r"event=flush scope=all by=control uid=%d result=ok" % uid,
                r"event=delete id=%s by=control uid=%d result=ok" % (b, uid),
                r"event=delete id=%s by=control uid=%d "
                r"result=no-such-message" % (b, uid)]

        def logged():
            lines = [e for e in list(srv.err) if e]
            return all(any(w in e for e in lines) for w in want)
        h.wait_for(logged, 10, "the audit lines %r in %r" % (want, srv.err))
        # a listing changes nothing and is not audited
        n = len(srv.err)
        expect(["-d", qdir, "list"], 0)
        h.check(not any("event=" in e for e in srv.err[n:] if e),
                "list was logged: %r" % srv.err[n:])
    finally:
        srv.stop()


def test_hung_daemon():
    """A daemon that is stopped (SIGSTOP): list and show give up on it
    after 10 s and read the spool, with a note; flush and the other
    changes fail (69) after 10 s with a clear message, never hang."""
    d = h.tmpdir(prefix="tern-queue-hung-")
    qdir = os.path.join(d, "q")
    srv = QServer(qdir, os.path.join(qdir, "control"), 2)
    try:
        h.check(srv.wait_ready() is None, "%r" % srv.err)
        online = run(["-d", qdir, "list"])
        h.check(online[0] == 0, "%r" % (online,))
        srv.proc.send_signal(signal.SIGSTOP)
        # the four at once: each waits its own 10 s
        t0 = time.monotonic()
        procs = [subprocess.Popen([tern(), "queue", "-d", qdir] + args,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
                 for args in (["list"], ["show", srv.ids[0]], ["flush"],
                              ["hold", srv.ids[1]])]
        res = []
        for p in procs:
            try:
                o, e = p.communicate(timeout=40)
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                h.fail("tern queue hung on a stopped daemon")
            res.append((p.returncode, o.decode(), e.decode()))
        took = time.monotonic() - t0
        h.check(9 <= took < 25, "gave up after %.1f s" % took)
        msg = "the daemon did not answer within 10 s"
        for rc, o, e in res:
            h.check(msg in e, "stderr %r lacks %r" % (e, msg))
        h.check(res[0][0] == 0 and res[0][1] == online[1],
                "list fell back to the spool: %r" % (res[0],))
        h.check("Reading the spool directly" in res[0][2], res[0][2])
        h.check(res[1][0] == 0 and
                res[1][1].partition("\n\n")[2] == body(0),
                "show fell back to the spool: %r" % (res[1],))
        h.check(res[2][0] == 69 and res[2][1] == "", "flush: %r" % (res[2],))
        h.check(res[3][0] == 69, "hold: %r" % (res[3],))
    finally:
        if srv.proc.poll() is None:
            srv.proc.send_signal(signal.SIGCONT)
        srv.stop()


def test_sendmail_names():
    """sendmail -bp is `tern queue list`, sendmail -q `tern queue flush`
    (-C FILE: tern serve's configuration, where the queue is), and the
    name mailq is `tern queue [OPTIONS] list`."""
    d = h.tmpdir(prefix="tern-queue-names-")
    qdir = os.path.join(d, "q")
    conf = os.path.join(d, "tern.ini")
    with open(conf, "w") as f:
        f.write("[queue]\ndirectory = %s\n" % qdir)
    links = {}
    for name in ("sendmail", "mailq"):
        links[name] = os.path.join(d, name)
        os.symlink(tern(), links[name])

    def named(name, args):
        p = h.run([links[name]] + args, timeout=60, check_rc=False)
        return (p.returncode, p.stdout.decode("utf-8", "replace"),
                p.stderr.decode("utf-8", "replace"))
    srv = QServer(qdir, os.path.join(qdir, "control"), 2)
    try:
        h.check(srv.wait_ready() is None, "%r" % srv.err)
        listing = run(["-d", qdir, "list"])
        h.check(listing[0] == 0, "%r" % (listing,))
        for name, args in (("sendmail", ["-C", conf, "-bp"]),
                           ("mailq", ["-c", conf]), ("mailq", ["-d", qdir])):
            got = named(name, args)
            h.check(got == listing, "%s %s: %r, expected %r"
                    % (name, " ".join(args), got, listing))
        got = named("mailq", ["-d", qdir, "--json"])
        h.check(got[0] == 0 and got[1] == run(["-d", qdir, "list",
                                                "--json"])[1], "%r" % (got,))
        n = len(srv.err)
        got = named("sendmail", ["-C", conf, "-q"])
        h.check(got[0] == 0 and got[1] == "", "sendmail -q: %r" % (got,))
        h.wait_for(lambda: any("event=flush scope=all" in e
                               for e in srv.err[n:] if e), 10,
                   "sendmail -q to flush the queue: %r" % srv.err[n:])
    finally:
        srv.stop()
    # no daemon: -q says so (75), -bp reads the spool
    got = named("sendmail", ["-C", conf, "-q"])
    h.check(got[0] == 75 and "not running" in got[2], "%r" % (got,))
    got = named("sendmail", ["-C", conf, "-bp"])
    h.check(got[0] == 0 and got == run(["-d", qdir, "list"]), "%r" % (got,))


if __name__ == "__main__":
    h.main([test_usage, test_not_running, test_daemon, test_offline_spool,
            test_large_listing, test_clients_that_never_read,
            test_audit_trail, test_hung_daemon,
            test_sendmail_names])
