"""Helpers for the end-to-end tests of `tern serve` (tests/e2e).

`tern serve` runs as a real child process; real clients (Python smtplib,
swaks, curl, Postfix smtp-source through HAProxy) talk to it on loopback.
The generic helpers (bounded waits, failures that say what they waited
for, byte comparisons, Raw SMTP) come from tests/interop/harness.py.

Environment (set by CTest, tests/e2e/CMakeLists.txt):
    TERN_BIN         the tern program ($<TARGET_FILE:tern_cli>)
    TERN_TEST_CERTS  directory made by tests/data/make-certs.sh
"""

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time

from harness import (TestFailure, fail, check, wait_for, tmpdir,  # noqa
                     assert_bytes_equal, require_tool, run, Raw, sha256,
                     main, crlf, certs_dir, cert, env_path, transaction,
                     dot_stuff, Child, listening)

READY_TIMEOUT = 15.0
STOP_TIMEOUT = 20.0


def tern_bin():
    p = env_path("TERN_BIN")
    check(os.access(p, os.X_OK), "TERN_BIN is not executable: %s" % p)
    return p


def passwd_line(user, password):
    """A users-file line made by `tern passwd` (password on stdin)."""
    p = run([tern_bin(), "passwd", user], input=(password + "\n").encode(),
            timeout=30)
    line = p.stdout.decode().strip()
    check(line.startswith(user + ":$"), "tern passwd printed %r" % line)
    return line


class Serve:
    """`tern serve ARGS` as a child process; stderr (the log) collected.

    ports: the real port of each listener, in order, from the
    "event=listening url=... port=N" lines."""

    def __init__(self, args, cwd=None, name="serve", expect_ready=True):
        self.args = list(args)
        self.cwd = cwd
        self.name = name
        self.expect_ready = expect_ready
        self.proc = None
        self.lines = []
        self.ports = []
        self.urls = []
        self.returncode = None
        self._lock = threading.Lock()

    def start(self):
        cmd = [tern_bin(), "serve"] + self.args
        self.proc = subprocess.Popen(cmd, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self._t = threading.Thread(target=self._read, args=(self.proc.stderr,),
                                   daemon=True)
        self._t.start()
        self._t2 = threading.Thread(target=self._read, args=(self.proc.stdout,),
                                    daemon=True)
        self._t2.start()
        if self.expect_ready:
            wait_for(lambda: self.has("event=ready") or self.proc.poll() is not None,
                     READY_TIMEOUT, "%s: tern serve to log event=ready" % self.name)
            if not self.has("event=ready"):
                self.proc.wait(timeout=5)
                self._t.join(2)
                fail("%s: tern serve %s exited with %s before ready; log:\n%s"
                     % (self.name, " ".join(self.args), self.proc.returncode,
                        self.log()))
        return self

    def _read(self, f):
        for raw in f:
            ln = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self.lines.append(ln)
                m = re.search(r"event=listening url=(\S+) port=(-?\d+)", ln)
                if m:
                    self.urls.append(m.group(1))
                    self.ports.append(int(m.group(2)))

    @property
    def port(self):
        check(self.ports, "%s: no event=listening line" % self.name)
        return self.ports[0]

    def snapshot(self):
        with self._lock:
            return list(self.lines)

    def has(self, text):
        return any(text in ln for ln in self.snapshot())

    def grep(self, text):
        return [ln for ln in self.snapshot() if text in ln]

    def log(self, n=60):
        return "\n".join(self.snapshot()[-n:])

    def wait_log(self, text, timeout=10.0, count=1):
        wait_for(lambda: len(self.grep(text)) >= count, timeout,
                 "%s: %d log line(s) containing %r; log:\n%s"
                 % (self.name, count, text, self.log()))
        return self.grep(text)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=STOP_TIMEOUT):
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            fail("%s: tern serve did not exit within %.0f s (killed); log:\n%s"
                 % (self.name, timeout, self.log()))
        self._t.join(timeout=3)
        self._t2.join(timeout=3)
        return self.returncode

    def stop(self, expect_code=0):
        if self.proc is None:
            return None
        if self.returncode is not None:
            return self.returncode
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        rc = self.wait_exit()
        if expect_code is not None and rc != expect_code:
            fail("%s: tern serve exited with %d after SIGTERM (expected %d); "
                 "log:\n%s" % (self.name, rc, expect_code, self.log()))
        return rc

    def kill9(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.returncode = self.proc.wait(timeout=10)
            self._t.join(timeout=3)
            self._t2.join(timeout=3)

    def cleanup(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, et, ev, tb):
        try:
            if et is None:
                self.stop()
            else:
                sys.stdout.write("%s log (last lines):\n%s\n"
                                 % (self.name, self.log()))
        finally:
            self.cleanup()
        return False


def run_serve(args, cwd=None, timeout=20):
    """tern serve ARGS expected to exit by itself: (rc, stdout, stderr)."""
    p = run([tern_bin(), "serve"] + list(args), timeout=timeout,
            check_rc=False, cwd=cwd, stdin=subprocess.DEVNULL)
    return (p.returncode, p.stdout.decode("utf-8", "replace"),
            p.stderr.decode("utf-8", "replace"))


# ---- stored messages ----------------------------------------------------------

TRACE_RE = re.compile(rb"\AReturn-Path: <[^\r\n]*>\r\n"
                      rb"Received: [^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*")


def split_trace(data, what="stored message"):
    """(trace, rest): the Return-Path and Received lines tern prepends,
    and the message as the client sent it."""
    m = TRACE_RE.match(data)
    if not m:
        fail("%s does not start with Return-Path and Received lines: %r"
             % (what, data[:300]))
    return data[:m.end()], data[m.end():]


def maildir_files(d, sub="new"):
    p = os.path.join(d, sub)
    if not os.path.isdir(p):
        return []
    return sorted(os.path.join(p, f) for f in os.listdir(p))


def read(path):
    with open(path, "rb") as f:
        return f.read()


def stored_bodies(d):
    """{path: (trace, rest)} for every file in d/new."""
    return {p: split_trace(read(p), p) for p in maildir_files(d)}


MSGID_RE = re.compile(rb"^Message-ID: <([^>\r\n]+)>\r?$", re.M | re.I)


def message_id(b):
    hdr = b.split(b"\r\n\r\n", 1)[0]
    m = MSGID_RE.search(hdr)
    return m.group(1).decode() if m else None


def make_message(mid, size, rng, frm="sender@example.net",
                 to="rcpt@example.org", subject=None):
    """A message of about `size` octets, CRLF lines, varied content
    (including lines that start with a dot, which must be dot-stuffed on
    the wire and unstuffed in the store), ending with CRLF."""
    hdr = ("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s>\r\n"
           "Date: Tue, 24 Nov 2026 01:02:03 +0000\r\n\r\n"
           % (frm, to, subject or ("test " + mid), mid)).encode()
    alphabet = (b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                b"0123456789 .,;:!?-_=+/\t")
    table = bytes(alphabet[i % len(alphabet)] for i in range(256))
    lines = []
    n = len(hdr)
    i = 0
    while n < size:
        ln = rng.randbytes(rng.randint(0, 120)).translate(table)
        if i % 17 == 3:
            ln = b"." + ln
        if i % 29 == 5:
            ln = b".."
        i += 1
        lines.append(ln)
        n += len(ln) + 2
    return hdr + b"".join(ln + b"\r\n" for ln in lines)


def write(path, text, mode=None):
    with open(path, "w") as f:
        f.write(text)
    if mode is not None:
        os.chmod(path, mode)
    return path


@contextlib.contextmanager
def session(port, hello="EHLO client.example", timeout=20,
            host="127.0.0.1", source=None):
    """A Raw connection to port (from the address `source`, if given),
    greeted (220 checked) and past `hello` (250 checked); closed on
    leaving the block, however it is left."""
    r = Raw(host, port, timeout=timeout, source=source)
    try:
        code, lines = r.reply()
        check(code == 220, "greeting: %r" % lines)
        r.cmd(hello, 250)
        yield r
    finally:
        r.close()


def lmtp_send(r, frm, rcpts, body):
    """On an LMTP session past LHLO: MAIL, RCPT... (each 250), DATA with
    the dot-stuffed body; returns the end-of-data replies, one per
    recipient, as (code, lines)."""
    r.cmd("MAIL FROM:<%s>" % frm, 250)
    for t in rcpts:
        r.cmd("RCPT TO:<%s>" % t, 250)
    r.cmd("DATA", 354)
    r.send(dot_stuff(body) + b".\r\n")
    return [r.reply() for _ in rcpts]


def free_ports(n, host="127.0.0.1"):
    """n distinct TCP ports free right now on loopback. A configuration
    file does not accept port 0 (only --listen does), so tests with a file
    pick ports this way."""
    import socket
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
