#!/usr/bin/env python3
"""`tern passwd`, `tern bench`, `tern version` / `help` and the dispatch;
which packages each make target installs."""

import ctypes
import ctypes.util
import glob
import os
import re

import harness as h


def tern():
    return h.env_path("TERN_BIN")


def run(args, stdin=b"", timeout=60):
    p = h.run([tern()] + args, input=stdin, timeout=timeout, check_rc=False)
    return (p.returncode, p.stdout.decode("utf-8", "replace"),
            p.stderr.decode("utf-8", "replace"))


def libcrypt_check(pw, hashed):
    """crypt(pw, hashed) == hashed, through the system's libcrypt."""
    name = ctypes.util.find_library("crypt") or "libcrypt.so.1"
    lib = ctypes.CDLL(name)
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    return lib.crypt(pw.encode(), hashed.encode()) == hashed.encode()


def test_passwd():
    rc, out, err = run(["passwd", "alice"], stdin=b"correct horse\n")
    h.check(rc == 0, "passwd: %d %r" % (rc, err))
    m = re.match(r"^alice:(\$y\$[^:\s]+)\n$", out)
    h.check(m, "output %r" % out)
    h.check(libcrypt_check("correct horse", m.group(1)), "hash does not "
            "verify: %r" % out)
    h.check(not libcrypt_check("wrong", m.group(1)), "wrong password "
            "verifies")
    # two runs, two salts
    _, out2, _ = run(["passwd", "alice"], stdin=b"correct horse\n")
    h.check(out2 != out, "same salt twice")
    rc, out, err = run(["passwd", "--sha512", "bob"], stdin=b"pw\r\n")
    h.check(rc == 0 and out.startswith("bob:$6$"), "%d %r %r"
            % (rc, out, err))
    h.check(libcrypt_check("pw", out.strip().split(":", 1)[1]), out)
    for args, stdin, code in ((["passwd", "a:b"], b"x\n", 64),
                              (["passwd", "--nope"], b"x\n", 64),
                              (["passwd", "carol"], b"", 66),
                              (["passwd", "carol"], b"\n", 65)):
        rc, out, err = run(args, stdin=stdin)
        h.check(rc == code, "%r: %d (expected %d) %r" % (args, rc, code, err))
        h.check(out == "", "output on failure: %r" % out)


def test_dispatch():
    rc, out, err = run(["version"])
    h.check(rc == 0 and out.startswith("tern "), "%d %r" % (rc, out))
    rc, out, err = run(["help"])
    h.check(rc == 0 and "send" in out and "bench" in out, out)
    rc, out, err = run(["frobnicate"])
    h.check(rc == 64 and "unknown command" in err, "%d %r" % (rc, err))
    rc, out, err = run([])
    h.check(rc == 64, "no command: %d" % rc)


def parse_bench(out):
    m = re.search(r"messages:\s+sent (\d+) ok (\d+) failed (\d+)", out)
    h.check(m, "no messages line: %r" % out)
    return tuple(int(x) for x in m.groups())


def test_bench():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0",
                          "--count-only"]) as srv:
        url = "smtp://127.0.0.1:%d" % srv.port
        runs = [
            ["--sessions", "4", "--messages", "200", "--size", "2000"],
            ["--sessions", "3", "--messages", "100", "--size", "70k",
             "--pipelining", "off", "--per-connection", "7"],
            ["--sessions", "2", "--messages", "50", "--size", "300000",
             "--chunking"],
        ]
        total = 0
        size = 0
        for args in runs:
            rc, out, err = run(["bench", "--server", url, "--quiet"] + args,
                               timeout=120)
            h.check(rc == 0, "bench %r: %d\n%s\n%s" % (args, rc, out, err))
            sent, ok, failed = parse_bench(out)
            n = int(args[args.index("--messages") + 1])
            h.check((sent, ok, failed) == (n, n, 0), out)
            for want in ("messages/s", "MB/s", "p50", "p99", "us/message"):
                h.check(want in out, "%r missing: %r" % (want, out))
            total += n
            sz = args[args.index("--size") + 1]
            sz = int(sz[:-1]) * 1024 if sz.endswith("k") else int(sz)
            size += n * sz
        rc, out, err = run(["bench", "--server", url, "--quiet",
                            "--sessions", "2", "--duration", "2",
                            "--size", "512", "--per-connection", "500"], timeout=60)
        h.check(rc == 0, "duration run: %d %s %s" % (rc, out, err))
        sent, ok, failed = parse_bench(out)
        h.check(ok > 0 and failed == 0 and sent == ok, out)
        total += ok
        srv.stop()
        s = srv.summary()
        h.check(s["messages"] == total, "server got %r, sent %d"
                % (s, total))
    # nothing listening: no message, exit 75, the error said once
    port = h.free_port()
    rc, out, err = run(["bench", "--server", "smtp://127.0.0.1:%d" % port,
                        "--quiet", "--sessions", "2", "--messages", "5"])
    h.check(rc == 75 and "connection to 127.0.0.1:%d failed" % port in out,
            "%d %r" % (rc, out))
    rc, out, err = run(["bench", "--sessions", "0"])
    h.check(rc == 64, "bad --sessions: %d" % rc)


SRC = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
PEERS = {"postfix", "haproxy", "dovecot-lmtpd", "swaks", "msmtp",
         "python3-aiosmtpd"}


def deps_line(target):
    """The scripts/install-deps command `make -n TARGET` would run."""
    env = dict(os.environ)
    # a `make test SKIP_DEPS=1` above us passes its variables down in
    # MAKEFLAGS: this make must see the Makefile's own defaults
    for k in ("SKIP_DEPS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):
        env.pop(k, None)
    p = h.run(["make", "-n", "-C", SRC, target], env=env, timeout=60)
    lines = [ln for ln in p.stdout.decode().splitlines()
             if "scripts/install-deps" in ln]
    h.check(len(lines) == 1, "make -n %s: install-deps lines %r"
            % (target, lines))
    return lines[0].split()


def test_install_deps_sets():
    """make, make run, make install and make fuzz install the build
    dependencies only; the test peers (postfix replaces any other MTA)
    come with make test / make asan and .ci/run (issue 8, item 31)."""
    script = os.path.join(SRC, "scripts", "install-deps")

    def listed(*sets):
        p = h.run(["bash", script] + list(sets) + ["--list"], timeout=30)
        return set(p.stdout.decode().split())
    build, test = listed("--build"), listed("--test")
    h.check(build and not (build & PEERS),
            "build set holds test peers: %r" % (build & PEERS))
    h.check(PEERS <= test, "test set lacks %r" % (PEERS - test))
    h.check("libsystemd-dev" in build, "libsystemd-dev not a build dep")
    h.check(listed() == build | test, "the default is not both sets")
    for target in ("build", "run", "install", "fuzz", "bench"):
        args = deps_line(target)
        h.check("--build" in args and "--test" not in args,
                "make %s installs %r" % (target, args))
    for target in ("test", "asan"):
        args = deps_line(target)
        h.check("--build" in args and "--test" in args,
                "make %s installs %r" % (target, args))
    with open(os.path.join(SRC, ".ci", "run")) as f:
        ci = [ln for ln in f if "install-deps" in ln and
              not ln.lstrip().startswith("#")]
    h.check(ci and all("--build" in ln and "--test" in ln for ln in ci),
            ".ci/run: %r" % ci)
    with open(os.path.join(SRC, "README.md")) as f:
        readme = f.read()
    h.check("--build" in readme and "test peers" in readme,
            "the README does not say which make target installs what")


MAN = os.path.join(SRC, "docs", "man")


def man_text(path):
    """The words of a man page source, roff escapes undone enough to
    find option names: \\- is -, font changes dropped."""
    with open(path) as f:
        t = f.read()
    t = re.sub(r"\\f[BIRP]", "", t).replace("\\-", "-").replace("\\&", "")
    return t


def build_dir():
    d = os.path.dirname(os.path.abspath(tern()))
    while d != "/" and not os.path.exists(os.path.join(d, "CMakeCache.txt")):
        d = os.path.dirname(d)
    h.check(d != "/", "no build directory above %s" % tern())
    return d


def test_man_pages():
    """tern(1) exists, renders without a warning (groff, as man(1) does),
    describes every flag each command's --help prints, and is installed
    with tern.ini(5); tern.ini(5) refers only to pages that exist; the
    README's curl example makes its message.txt (issue 8, item 32)."""
    groff = h.require_tool("groff")
    pages = [os.path.join(MAN, "tern.1"), os.path.join(MAN, "tern.ini.5"),
             os.path.join(MAN, "tern-queue.1")]
    for page in pages:
        h.check(os.path.exists(page), "%s is missing" % page)
        p = h.run([groff, "-man", "-Tutf8", "-ww", "-z", page], timeout=30,
                  check_rc=False)
        h.check(p.returncode == 0 and not p.stderr,
                "groff warns on %s: %r" % (page, p.stderr.decode()))
    text = man_text(pages[0])
    flag_re = re.compile(r"(?:^|[\s,(\[])(--?[A-Za-z][A-Za-z0-9-]*)")
    for cmd in ("serve", "send", "bench", "passwd"):
        rc, out, err = run([cmd, "--help"])
        h.check(rc == 0, "tern %s --help: %d %r" % (cmd, rc, err))
        flags = set(flag_re.findall(out))
        h.check(len(flags) >= 2 or cmd == "passwd",
                "tern %s --help lists no flags: %r" % (cmd, out))
        missing = sorted(f for f in flags
                         if not re.search(r"(?<![\w-])" + re.escape(f)
                                          + r"(?![\w-])", text))
        h.check(not missing, "tern.1 does not describe tern %s %s"
                % (cmd, " ".join(missing)))
    # tern queue has a page of its own
    rc, out, err = run(["queue", "--help"])
    h.check(rc == 0, "tern queue --help: %d %r" % (rc, err))
    qtext = man_text(os.path.join(MAN, "tern-queue.1"))
    flags = set(flag_re.findall(out))
    h.check(len(flags) >= 3, "tern queue --help lists no flags: %r" % out)
    missing = sorted(f for f in flags
                     if not re.search(r"(?<![\w-])" + re.escape(f)
                                      + r"(?![\w-])", qtext))
    h.check(not missing, "tern-queue.1 does not describe %s"
            % " ".join(missing))
    for word in ("list", "show", "flush", "delete", "hold", "release"):
        h.check(re.search(r"^\.B[IR]? %s\b" % word, qtext, re.M),
                "tern-queue.1 does not describe %s" % word)
    for page in pages:
        for name, sec in re.findall(r"^\.BR (tern[\w.-]*) \((\d)\)",
                                    man_text(page), re.M):
            h.check(os.path.exists(os.path.join(MAN, "%s.%s" % (name, sec))),
                    "%s refers to %s(%s), which does not exist"
                    % (page, name, sec))
    with open(os.path.join(SRC, "README.md")) as f:
        readme = f.read()
    use = readme.find("-T message.txt")
    h.check(use > 0 and "> message.txt" in readme[:use],
            "the README's curl example uses a message.txt it never makes")
    dest = h.tmpdir(prefix="tern-install-")
    h.run(["cmake", "--install", build_dir(), "--prefix", "/usr/local"],
          env=dict(os.environ, DESTDIR=dest), timeout=120)
    for rel in ("share/man/man1/tern.1", "share/man/man1/tern-queue.1",
                "share/man/man5/tern.ini.5"):
        h.check(os.path.exists(os.path.join(dest, "usr/local", rel)),
                "make install did not install %s" % rel)


def log_events_in_source():
    """Every event name tern serve writes (src/cli: log_kv/log_line_kv
    "event" values, event=NAME in logf_ formats, control.c's audit
    events) and the keys of the lines built with log_line_kv/kv."""
    events, keys = set(), set()
    for path in glob.glob(os.path.join(SRC, "src", "cli", "*.c")):
        with open(path) as f:
            t = f.read()
        t = re.sub(r"/\*.*?\*/", "", t, flags=re.S)  # not the comments
        events.update(re.findall(r'"event",\s*"([a-z-]+)"', t))
        for a, b in re.findall(r'"event",\s*[^;"]*\?\s*"([a-z-]+)"\s*:\s*'
                               r'"([a-z-]+)"', t):
            events.update((a, b))
        events.update(re.findall(r'event=([a-z-]+)', t))
        events.update(re.findall(r'\bevent = "([a-z-]+)"', t))
        events.update(re.findall(r'audit\(c, "([a-z-]+)"', t))
        keys.update(re.findall(r'\blog_line_kv\(&?l, "([a-z_]+)"', t))
        keys.update(re.findall(r'\bkv\(l, "([a-z_]+)"', t))
    return events, keys


def test_man_log_events():
    """tern(1) "Log" lists every event tern serve writes and every field
    of the delivery and queued lines, by name (review finding: queued,
    committed, delivery, bounce, delay-warning, removed, flush, reject
    and the delivery line's dest, mx, addr, tried, tls, cipher,
    verified, policy, tls_failure, dkim, retry were missing)."""
    events, keys = log_events_in_source()
    h.check(len(events) >= 30 and "delivery" in events and "flush" in events,
            "the scan of src/cli found too few events: %r" % sorted(events))
    h.check({"dest", "mx", "verified", "dkim", "retry"} <= keys,
            "the scan of src/cli found too few keys: %r" % sorted(keys))
    with open(os.path.join(MAN, "tern.1")) as f:
        page = f.read()
    log = page[page.index(".SS Log"):page.index(".SS systemd")]
    words = set(re.findall(r"[a-z_][a-z0-9_-]*",
                           log.replace("\\-", "-").replace("\\ ", " ")))
    missing = sorted(events - words)
    h.check(not missing, "tern(1) Log lacks the events %s" % " ".join(missing))
    missing = sorted(keys - words)
    h.check(not missing, "tern(1) Log lacks the fields %s" % " ".join(missing))


def test_systemd_unit():
    """packaging/systemd/tern.service: Type=notify, hardened so that
    `systemd-analyze security` rates it at most 3.0 ("OK"), and installed
    by make install (TERN_SYSTEMD_UNITDIR, default lib/systemd/system
    under the prefix) with ExecStart= pointing at the installed tern
    (issue 8, item 33)."""
    sa = h.require_tool("systemd-analyze")
    unit = os.path.join(SRC, "packaging", "systemd", "tern.service")
    with open(unit) as f:
        text = f.read()
    h.check(re.search(r"^Type=notify$", text, re.M), "not Type=notify")
    # the queue's default ./queue must land somewhere writable: with
    # ProtectSystem=strict and no WorkingDirectory= it was /queue
    h.check(re.search(r"^StateDirectory=tern$", text, re.M) and
            re.search(r"^WorkingDirectory=/var/lib/tern$", text, re.M),
            "WorkingDirectory= is not the state directory /var/lib/tern: "
            "the default spool ./queue would be on the read-only root")
    p = h.run([sa, "security", "--offline=true", "--no-pager", unit],
              timeout=60, check_rc=False)
    out = p.stdout.decode("utf-8", "replace")
    m = re.search(r"Overall exposure level for tern\.service: ([0-9.]+)", out)
    h.check(m, "no exposure level from systemd-analyze: %r %r"
            % (out[-500:], p.stderr))
    h.check(float(m.group(1)) <= 3.0, "exposure %s > 3.0:\n%s"
            % (m.group(1), out))
    dest = h.tmpdir(prefix="tern-install-units-")
    h.run(["cmake", "--install", build_dir(), "--prefix", "/opt/tern"],
          env=dict(os.environ, DESTDIR=dest), timeout=120)
    for u in ("tern.service", "tern.socket"):
        path = os.path.join(dest, "opt/tern/lib/systemd/system", u)
        h.check(os.path.exists(path), "make install did not install %s" % u)
    with open(os.path.join(dest, "opt/tern/lib/systemd/system",
                           "tern.service")) as f:
        installed = f.read()
    h.check("ExecStart=/opt/tern/bin/tern serve" in installed,
            "ExecStart= does not name the installed tern: %r" % installed)


if __name__ == "__main__":
    h.main([test_passwd, test_dispatch, test_bench, test_install_deps_sets,
            test_man_log_events,
            test_man_pages, test_systemd_unit])
