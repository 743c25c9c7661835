"""Shared helpers for the tests/net and tests/interop scripts (stdlib only).

    with CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        smtplib.SMTP("127.0.0.1", srv.port) ...
        msgs = srv.wait_messages(1)
        assert_bytes_equal(msgs[0].eml, sent)

Environment (set by CTest):
    TERN_CAPTURE_SERVER  path of tests/net/capture_server
    TERN_TEST_CERTS      directory made by tests/data/make-certs.sh

Every wait is bounded; a test that cannot make progress fails with a
message saying what it waited for. Child processes are killed even when a
test fails (context managers, try/finally).
"""

import atexit
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

READY_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


class TestFailure(AssertionError):
    pass


def fail(msg):
    raise TestFailure(msg)


def check(cond, msg):
    if not cond:
        fail(msg)


def env_path(name):
    v = os.environ.get(name)
    if not v:
        fail("environment variable %s is not set (run through ctest)" % name)
    return v


def capture_server_path():
    p = env_path("TERN_CAPTURE_SERVER")
    check(os.access(p, os.X_OK), "capture_server not executable: %s" % p)
    return p


def certs_dir():
    d = env_path("TERN_TEST_CERTS")
    for f in ("ca.pem", "server.pem", "server.key"):
        check(os.path.isfile(os.path.join(d, f)),
              "test certificate %s/%s is missing (CTest fixture 'certs' "
              "runs tests/data/make-certs.sh)" % (d, f))
    return d


def cert(name):
    return os.path.join(certs_dir(), name)


def tls_args():
    return ["--tls-cert", cert("server.pem"), "--tls-key", cert("server.key")]


def require_tool(name, paths=()):
    """The path of a required program, or a failure that names it."""
    for p in paths:
        if os.access(p, os.X_OK):
            return p
    p = shutil.which(name)
    if not p:
        fail("required tool '%s' is not installed (DESIGN.md §8: interop "
             "tools are installed by .ci/run; this test fails rather than "
             "skips)" % name)
    return p


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def assert_bytes_equal(got, want, what="stored message"):
    if got == want:
        return
    # find the first difference to make the failure useful
    i = 0
    n = min(len(got), len(want))
    while i < n and got[i] == want[i]:
        i += 1
    fail("%s differs: sha256 %s (%d bytes) != expected %s (%d bytes); "
         "first difference at offset %d: got %r, expected %r"
         % (what, sha256(got), len(got), sha256(want), len(want), i,
            got[max(0, i - 20):i + 20], want[max(0, i - 20):i + 20]))


def crlf(b):
    """Normalise line endings to CRLF (what an SMTP client sends)."""
    if isinstance(b, str):
        b = b.encode("utf-8")
    b = b.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return b.replace(b"\n", b"\r\n")


def wait_for(cond, timeout, what, interval=0.01):
    """Poll cond() until it returns a true value (returned) or fail."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            fail("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def tmpdir(prefix="tern-test-"):
    """A temporary directory removed when the script exits
    (TERN_TEST_KEEP=1 keeps it)."""
    d = tempfile.mkdtemp(prefix=prefix)
    if os.environ.get("TERN_TEST_KEEP") is None:
        atexit.register(shutil.rmtree, d, True)
    return d


def free_port(host="127.0.0.1"):
    """A TCP port free right now on loopback (for tools that need one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def listening(port, host="127.0.0.1"):
    """True when something accepts a TCP connection on host:port now."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


class Message:
    def __init__(self, num, eml, env):
        self.num = num
        self.eml = eml
        self.env_text = env
        self.env = {}
        self.rcpt = []
        for line in env.splitlines():
            k, _, v = line.partition(": ")
            if k == "rcpt":
                self.rcpt.append(v)
            else:
                self.env[k.rstrip(":")] = v

    def __repr__(self):
        return "<Message %d %d bytes %r>" % (self.num, len(self.eml), self.env)


class CaptureServer:
    """capture_server as a child process on loopback, with a temp --out."""

    def __init__(self, args, out=None, env=None, name="capture"):
        self.args = list(args)
        self.tmp = None
        if out is None:
            self.tmp = tempfile.mkdtemp(prefix="tern-%s-" % name)
            out = self.tmp
        self.out = out
        self.env = env
        self.proc = None
        self.port = None
        self.ports = {}
        self.stderr_lines = []
        self.returncode = None

    # -- lifecycle --------------------------------------------------------
    def start(self):
        cmd = [capture_server_path()] + self.args + ["--out", self.out]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, env=self.env)
        self._err_thread = threading.Thread(target=self._read_stderr,
                                            daemon=True)
        self._err_thread.start()
        def read_stdout():
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").strip()
                m = re.match(r"READY (-?\d+)$", line)
                if m:
                    self.port = int(m.group(1))
                    self.ports[0] = self.port
                m = re.match(r"PORT (\d+) (-?\d+)$", line)
                if m:
                    self.ports[int(m.group(1))] = int(m.group(2))

        self._out_thread = threading.Thread(target=read_stdout, daemon=True)
        self._out_thread.start()
        wait_for(lambda: self.port is not None or self.proc.poll() is not None,
                 READY_TIMEOUT, "capture_server to print READY")
        if self.port is None:
            self.proc.wait(timeout=5)
            fail("capture_server exited with %s before READY: %s"
                 % (self.proc.returncode, self.stderr()))
        nl = sum(1 for a in self.args if a == "--listen")
        wait_for(lambda: len(self.ports) >= nl or self.proc.poll() is not None,
                 READY_TIMEOUT, "capture_server to print listener ports")
        return self

    def _read_stderr(self):
        for raw in self.proc.stderr:
            self.stderr_lines.append(raw.decode("utf-8", "replace").rstrip())

    def stderr(self):
        return "\n".join(self.stderr_lines[-40:])

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=STOP_TIMEOUT):
        """Wait for the process to exit; kill it and fail if it does not."""
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            fail("capture_server did not exit within %.0f s of SIGTERM "
                 "(killed); stderr:\n%s" % (timeout, self.stderr()))
        self._err_thread.join(timeout=2)
        return self.returncode

    def stop(self, expect_code=0):
        """SIGTERM, wait ≤10 s (then kill and fail), check the exit code."""
        if self.proc is None or self.returncode is not None:
            return self.returncode
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        rc = self.wait_exit()
        if expect_code is not None and rc != expect_code:
            fail("capture_server exited with %d (expected %d); stderr:\n%s"
                 % (rc, expect_code, self.stderr()))
        return rc

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def cleanup(self):
        self.kill()
        if self.tmp and os.environ.get("TERN_TEST_KEEP") is None:
            shutil.rmtree(self.tmp, ignore_errors=True)

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
            elif self.alive():
                sys.stderr.write("capture_server stderr:\n%s\n" % self.stderr())
        finally:
            self.cleanup()
        return False

    # -- stored messages --------------------------------------------------
    def _nums(self, ext):
        out = []
        for f in os.listdir(self.out):
            m = re.match(r"(\d+)\.%s$" % ext, f)
            if m:
                out.append(int(m.group(1)))
        return sorted(out)

    def messages(self):
        """Complete stored messages (.env written last), by number."""
        msgs = []
        for n in self._nums("env"):
            with open(os.path.join(self.out, "%d.eml" % n), "rb") as f:
                eml = f.read()
            with open(os.path.join(self.out, "%d.env" % n), "r",
                      encoding="utf-8", errors="surrogateescape") as f:
                env = f.read()
            msgs.append(Message(n, eml, env))
        return msgs

    def aborted(self):
        res = []
        for n in self._nums("aborted"):
            with open(os.path.join(self.out, "%d.aborted" % n)) as f:
                res.append(f.read())
        return res

    def eml_count(self):
        return len(self._nums("eml"))

    def wait_messages(self, n, timeout=10.0):
        wait_for(lambda: len(self._nums("env")) >= n, timeout,
                 "%d stored message(s) in %s (have %d)"
                 % (n, self.out, len(self._nums("env"))))
        msgs = self.messages()
        check(len(msgs) == n, "expected exactly %d stored messages, got %d"
              % (n, len(msgs)))
        return msgs

    def wait_aborted(self, n, timeout=10.0):
        wait_for(lambda: len(self._nums("aborted")) >= n, timeout,
                 "%d .aborted file(s) in %s" % (n, self.out))
        return self.aborted()

    def summary(self):
        p = os.path.join(self.out, "summary")
        check(os.path.isfile(p), "no summary file (--count-only) in %s"
              % self.out)
        d = {}
        with open(p) as f:
            for line in f:
                k, v = line.split()
                d[k] = int(v)
        return d


class Child:
    """Another program run for a test (haproxy, ...), killed on exit."""

    def __init__(self, cmd, **kw):
        self.cmd = cmd
        self.kw = kw
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen(self.cmd, **self.kw)
        return self

    def __exit__(self, *a):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return False


def run(cmd, input=None, timeout=60, check_rc=True, **kw):
    """Run a tool with a bounded time; fail with its output on error."""
    try:
        p = subprocess.run(cmd, input=input, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        fail("%s timed out after %d s; output: %r %r"
             % (cmd[0], timeout, e.stdout, e.stderr))
    if check_rc and p.returncode != 0:
        fail("%s exited with %d\ncommand: %s\nstdout:\n%s\nstderr:\n%s"
             % (cmd[0], p.returncode, " ".join(map(str, cmd)),
                p.stdout.decode("utf-8", "replace")[-4000:],
                p.stderr.decode("utf-8", "replace")[-4000:]))
    return p


# ---- a tiny raw SMTP client over a socket (bounded reads) -------------------

class Raw:
    """Raw SMTP over a blocking socket with timeouts."""

    def __init__(self, host="127.0.0.1", port=25, timeout=5.0, sock=None,
                 family=socket.AF_INET, source=None):
        if sock is None:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            if source:
                sock.bind(source)
            sock.connect(port if family == socket.AF_UNIX else (host, port))
        self.s = sock
        self.s.settimeout(timeout)
        self.buf = b""

    def send(self, b):
        if isinstance(b, str):
            b = b.encode()
        self.s.sendall(b)

    def line(self):
        while b"\r\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                fail("connection closed while waiting for a reply line; "
                     "have %r" % self.buf)
            self.buf += d
        ln, _, self.buf = self.buf.partition(b"\r\n")
        return ln.decode("utf-8", "replace")

    def reply(self):
        """One (possibly multi-line) reply: (code, [lines])."""
        lines = []
        while True:
            ln = self.line()
            lines.append(ln)
            if len(ln) < 4 or ln[3] != "-":
                return int(ln[:3]), lines

    def cmd(self, c, expect=None):
        self.send(c + "\r\n")
        code, lines = self.reply()
        if expect is not None and code != expect:
            fail("%r: expected %d, got %s" % (c, expect, lines))
        return code, lines

    def closed(self, timeout=5.0):
        """True when the server closes the connection within timeout
        (after any remaining bytes)."""
        self.s.settimeout(timeout)
        try:
            while True:
                d = self.s.recv(65536)
                if not d:
                    return True
                self.buf += d
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def transaction(r, frm, rcpts, body, ehlo="test.example"):
    """EHLO (once), MAIL, RCPT..., DATA with a dot-stuffed body."""
    if ehlo:
        r.cmd("EHLO " + ehlo, 250)
    r.cmd("MAIL FROM:<%s>" % frm, 250)
    for t in rcpts:
        r.cmd("RCPT TO:<%s>" % t, 250)
    r.cmd("DATA", 354)
    r.send(dot_stuff(body) + b".\r\n")
    code, lines = r.reply()
    return code, lines


def dot_stuff(body):
    """CRLF-normalised body, dot-stuffed, ending with CRLF."""
    b = crlf(body)
    if not b.endswith(b"\r\n"):
        b += b"\r\n"
    if b.startswith(b"."):
        b = b"." + b
    return b.replace(b"\r\n.", b"\r\n..")


# ---- running a test script ---------------------------------------------------

def main(tests):
    """Run test functions in order; print PASS/FAIL for each; exit 1 if
    any failed. TERN_TEST_ONLY=name runs one."""
    only = os.environ.get("TERN_TEST_ONLY")
    failed = []
    t0 = time.monotonic()
    tests = [t for t in tests if not only or t.__name__ == only]
    if not tests:
        fail("no test named %r" % only)
    for t in tests:
        start = time.monotonic()
        try:
            t()
        except Exception:
            failed.append(t.__name__)
            print("FAIL %s (%.2f s)" % (t.__name__, time.monotonic() - start))
            traceback.print_exc(file=sys.stdout)
        else:
            print("PASS %s (%.2f s)" % (t.__name__, time.monotonic() - start))
        sys.stdout.flush()
    print("%d test(s), %d failed, %.1f s"
          % (len(tests), len(failed), time.monotonic() - t0))
    if failed:
        print("failed: " + " ".join(failed))
    sys.exit(1 if failed else 0)
