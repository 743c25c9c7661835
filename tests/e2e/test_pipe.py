#!/usr/bin/env python3
"""Pipe target: the command is a script that copies stdin to a file and
exits with the status named by the recipient's local part ("exit75@..."
exits 75). Exit 0 → 250, 75 → 451 4.3.0, 67 → 550 5.1.1 (and a few more
sysexits); the command receives the message byte-exact after the trace
lines; the documented command-line escapes (%s %u %d %r %a) and the
environment (SENDER, RECIPIENT) reach it."""

import os
import random
import smtplib

import e2e as h

SCRIPT = r"""#!/bin/sh
# deliver.sh OUTDIR SENDER LOCAL DOMAIN RCPT ADDR
out=$1
name=$3.$$
case "$RECIPIENT" in noread*) exit 67 ;; esac   # exits without reading
printf '%s\n' "$@" > "$out/$name.args"
printf 'SENDER=%s\nRECIPIENT=%s\nORIGINAL_RECIPIENT=%s\n' "$SENDER" \
  "$RECIPIENT" "$ORIGINAL_RECIPIENT" > "$out/$name.env"
cat > "$out/$name.tmp" || exit 74
mv "$out/$name.tmp" "$out/$name.eml"
case "$RECIPIENT" in
  exit[0-9]*@*) code=${RECIPIENT%%@*}; exit "${code#exit}" ;;
esac
exit 0
"""

CONF = """[listener mx]
url = smtp://127.0.0.1:{port}

[domains]
accept = example.org

[delivery]
target = pipe
command = {script} {out} %s %u %d %r %a
"""

CASES = [  # local part, expected code, expected enhanced code prefix
    ("exit0", 250, b"2.0.0"),
    ("exit75", 451, b"4.3.0"),
    ("exit67", 550, b"5.1.1"),
    ("exit64", 554, b"5.3.0"),
    ("exit77", 554, b"5.7.1"),
    ("exit1", 554, b"5.3.0"),
    ("plain", 250, b"2.0.0"),
]


def find_eml(out, local):
    return [os.path.join(out, f) for f in os.listdir(out)
            if f.startswith(local + ".") and f.endswith(".eml")]


def test_pipe_exit_codes():
    d = h.tmpdir(prefix="tern-e2e-pipe-")
    out = os.path.join(d, "out")
    os.mkdir(out)
    script = h.write(os.path.join(d, "deliver.sh"), SCRIPT, 0o755)
    conf = h.write(os.path.join(d, "tern.ini"), CONF.format(
        port=h.free_ports(1)[0], script=script, out=out))
    rng = random.Random(9)
    with h.Serve(["-c", conf], name="pipe") as srv:
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as c:
            c.ehlo("pipe.client")
            for i, (local, want, enh) in enumerate(CASES):
                m = h.make_message("pipe-%s@e2e" % local, 1000 + 3000 * i, rng)
                c.mail("sender@example.net")
                code, msg = c.rcpt("%s@example.org" % local)
                h.check(code == 250, "RCPT %s: %d" % (local, code))
                code, msg = c.data(m)
                h.check(code == want and msg.startswith(enh),
                        "exit status of %s: expected %d %s, got %d %r"
                        % (local, want, enh.decode(), code, msg))
                files = find_eml(out, local)
                h.check(len(files) == 1, "the command ran %d times for %s"
                        % (len(files), local))
                trace, rest = h.split_trace(h.read(files[0]), files[0])
                h.assert_bytes_equal(rest, m, "pipe input for " + local)
                env = h.read(files[0][:-4] + ".env").decode()
                h.check(env == "SENDER=sender@example.net\nRECIPIENT=%s"
                        "@example.org\nORIGINAL_RECIPIENT=%s@example.org\n"
                        % (local, local), "environment: %r" % env)
        lines = srv.wait_log("event=message", count=len(CASES))
        for (local, want, _), ln in zip(CASES, lines):
            h.check("status=%d" % want in ln, "log %r lacks status %d"
                    % (ln, want))


def test_pipe_escapes():
    """command = script OUT %s %u %d %r %a (docs/configuration.md)."""
    d = h.tmpdir(prefix="tern-e2e-pipe-")
    out = os.path.join(d, "out")
    os.mkdir(out)
    script = h.write(os.path.join(d, "deliver.sh"), SCRIPT, 0o755)
    conf = h.write(os.path.join(d, "tern.ini"), CONF.format(
        port=h.free_ports(1)[0], script=script, out=out))
    with h.Serve(["-c", conf], name="pipe-escapes") as srv:
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as c:
            c.sendmail("s@example.net", ["someone@example.org"],
                       b"Subject: escapes\r\n\r\nhi\r\n")
    args = [os.path.join(out, f) for f in os.listdir(out)
            if f.endswith(".args")]
    h.check(len(args) == 1, "args files: %r" % args)
    got = h.read(args[0]).decode().splitlines()
    want = [out, "s@example.net", "someone", "example.org",
            "someone@example.org", "someone@example.org"]
    h.check(got == want, "command arguments: got %r, expected %r (the "
            "escapes %%s %%u %%d %%r %%a of docs/configuration.md)"
            % (got, want))


def test_command_that_does_not_read():
    """A command that exits 67 without reading a 1 MiB message: the
    client gets the mapped 550 5.1.1 (not a generic error), and the
    daemon goes on serving."""
    d = h.tmpdir(prefix="tern-e2e-pipe-")
    out = os.path.join(d, "out")
    os.mkdir(out)
    script = h.write(os.path.join(d, "deliver.sh"), SCRIPT, 0o755)
    conf = h.write(os.path.join(d, "tern.ini"), CONF.format(
        port=h.free_ports(1)[0], script=script, out=out))
    rng = random.Random(10)
    with h.Serve(["-c", conf], name="pipe-noread") as srv:
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as c:
            c.ehlo("pipe.client")
            c.mail("s@example.net")
            c.rcpt("noread@example.org")
            code, msg = c.data(h.make_message("noread@e2e", 1 << 20, rng))
            h.check(code == 550 and msg.startswith(b"5.1.1"),
                    "command exiting 67 without reading: %d %r" % (code, msg))
            m = h.make_message("after-noread@e2e", 2000, rng)
            c.mail("s@example.net")
            c.rcpt("exit0@example.org")
            code, msg = c.data(m)
            h.check(code == 250, "next message: %d %r" % (code, msg))


if __name__ == "__main__":
    h.main([test_pipe_exit_codes, test_pipe_escapes,
            test_command_that_does_not_read])
