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


def setup(script_text, conf_text, **fields):
    """A fresh directory with the script (executable), an empty out/ and
    a tern.ini from conf_text (with port, script, out and fields filled
    in): (out, tern.ini path)."""
    d = h.tmpdir(prefix="tern-e2e-pipe-")
    out = os.path.join(d, "out")
    os.mkdir(out)
    script = h.write(os.path.join(d, "deliver.sh"), script_text, 0o755)
    conf = h.write(os.path.join(d, "tern.ini"), conf_text.format(
        port=h.free_ports(1)[0], script=script, out=out, **fields))
    return out, conf


def find_eml(out, local):
    return [os.path.join(out, f) for f in os.listdir(out)
            if f.startswith(local + ".") and f.endswith(".eml")]


def test_pipe_exit_codes():
    out, conf = setup(SCRIPT, CONF)
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
    out, conf = setup(SCRIPT, CONF)
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
    out, conf = setup(SCRIPT, CONF)
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


# ---- one command per recipient (issue 8 items 1, 7, 18) ---------------------

MULTI_SCRIPT = r"""#!/bin/sh
# deliver.sh OUTDIR RCPT: stores the message, exits 67 for nobody@,
# sleeps first for slow@ (so commands finish out of RCPT order), and
# logs "RCPT STATUS" to OUTDIR/ran.log.
out=$1
rcpt=$2
case "$rcpt" in slow@*) sleep 1 ;; esac
case "$rcpt" in hang@*) cat > /dev/null; echo $$ > "$out/hang.pid"
  sleep 1000 & echo $! > "$out/hang.child"; wait; exit 0 ;; esac
cat > "$out/$rcpt.$$.eml" || exit 74
case "$rcpt" in nobody@*) code=67 ;; *) code=0 ;; esac
echo "$rcpt $code" >> "$out/ran.log"
exit $code
"""

MULTI_CONF = """[listener {kind}]
url = {kind}://127.0.0.1:{port}

[server]
timeout_data = {timeout_data}

[domains]
accept = example.org

[delivery]
target = pipe
command = {script} {out} %r
"""


def multi_setup(kind, timeout_data="300s"):
    return setup(MULTI_SCRIPT, MULTI_CONF, kind=kind,
                 timeout_data=timeout_data)


def ran(out):
    """{recipient: [exit statuses]} from the script's own log."""
    p = os.path.join(out, "ran.log")
    got = {}
    if os.path.exists(p):
        for ln in h.read(p).decode().splitlines():
            r, code = ln.split()
            got.setdefault(r, []).append(int(code))
    return got


def stored(out, rcpt):
    return [h.read(os.path.join(out, f)) for f in os.listdir(out)
            if f.startswith(rcpt + ".") and f.endswith(".eml")]


def test_lmtp_three_recipients_one_refused():
    """Must-show: a pipe behind an LMTP listener, three recipients, the
    command exits 67 for one: each recipient's reply is what its own
    command did (checked against the command's log), every command got
    the message, and the trace names no recipient (several)."""
    out, conf = multi_setup("lmtp")
    rng = random.Random(11)
    rcpts = ["slow@example.org", "nobody@example.org", "carol@example.org"]
    m = h.make_message("lmtp-multi@e2e", 5000, rng)
    with h.Serve(["-c", conf], name="pipe-lmtp") as srv:
        with h.session(srv.port, "LHLO test.example") as r:
            replies = h.lmtp_send(r, "s@example.net", rcpts, m)
            r.cmd("QUIT", 221)
        srv.wait_log("event=message", count=3)
    did = ran(out)
    for t, (code, lines) in zip(rcpts, replies):
        h.check(did.get(t) is not None and len(did[t]) == 1,
                "the command for %s ran %r times (expected once); log %r"
                % (t, did.get(t), did))
        want = (250, "2.0.0") if did[t][0] == 0 else (550, "5.1.1")
        h.check(code == want[0] and lines[-1][4:].startswith(want[1]),
                "%s: the command exited %d, the client was told %r"
                % (t, did[t][0], lines))
        copies = stored(out, t)
        h.check(len(copies) == 1, "%s: %d stored copies" % (t, len(copies)))
        trace, rest = h.split_trace(copies[0], t)
        h.assert_bytes_equal(rest, m, "message given to the command for " + t)
        h.check(b"for <" not in trace,
                "a message to 3 recipients names one in its trace (Bcc "
                "leak): %r" % trace)


def test_lmtp_quit_pipelined_after_data():
    """QUIT sent with the end of data behind LMTP: the last recipient's
    reply lets the session read QUIT and close inside that reply, while
    its pipe commands report their outcomes: every recipient is answered,
    then 221, and the server lives on (no callback for a freed session;
    an ASan build catches one)."""
    out, conf = multi_setup("lmtp")
    rng = random.Random(12)
    rcpts = ["alice@example.org", "bob@example.org"]
    m = h.make_message("lmtp-quit@e2e", 3000, rng)
    with h.Serve(["-c", conf], name="pipe-lmtp-quit") as srv:
        for _ in range(3):
            r = h.Raw("127.0.0.1", srv.port, timeout=20)
            try:
                r.reply()
                r.cmd("LHLO test.example", 250)
                r.cmd("MAIL FROM:<s@example.net>", 250)
                for t in rcpts:
                    r.cmd("RCPT TO:<%s>" % t, 250)
                r.cmd("DATA", 354)
                r.send(h.dot_stuff(m) + b".\r\nQUIT\r\n")
                for t in rcpts:
                    code, lines = r.reply()
                    h.check(code == 250, "%s: %r" % (t, lines))
                code, lines = r.reply()
                h.check(code == 221, "QUIT: %r" % lines)
            finally:
                r.close()
        srv.wait_log("event=message", count=6)
        r = h.Raw("127.0.0.1", srv.port, timeout=20)
        try:
            r.reply()
            r.cmd("QUIT", 221)
        finally:
            r.close()


def test_smtp_one_recipient_per_transaction():
    """Behind an SMTP listener a pipe takes one recipient per message:
    the second RCPT gets 452 4.5.3 and the client sends it again in its
    own transaction; each recipient's final reply is its command's."""
    out, conf = multi_setup("smtp")
    rng = random.Random(12)
    m = h.make_message("smtp-multi@e2e", 3000, rng)
    with h.Serve(["-c", conf], name="pipe-smtp") as srv:
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as c:
            c.ehlo("pipe.client")
            c.mail("s@example.net")
            code, msg = c.rcpt("alice@example.org")
            h.check(code == 250, "first RCPT: %d %r" % (code, msg))
            code, msg = c.rcpt("nobody@example.org")
            h.check(code == 452 and msg.startswith(b"4.5.3"),
                    "second RCPT of a pipe message behind SMTP: expected "
                    "452 4.5.3, got %d %r" % (code, msg))
            code, msg = c.data(m)
            h.check(code == 250, "DATA for alice: %d %r" % (code, msg))
            c.mail("s@example.net")
            c.rcpt("nobody@example.org")
            code, msg = c.data(m)
            h.check(code == 550 and msg.startswith(b"5.1.1"),
                    "nobody's command exits 67: got %d %r" % (code, msg))
        srv.wait_log("event=message", count=2)
    did = ran(out)
    h.check(did == {"alice@example.org": [0], "nobody@example.org": [67]},
            "commands run: %r" % did)
    trace, rest = h.split_trace(stored(out, "alice@example.org")[0])
    h.check(b"\tfor <alice@example.org>;" in trace,
            "one recipient: the trace names it: %r" % trace)


def test_option_like_local_part_refused():
    """RCPT <-oQ/tmp/evil@...> (also quoted) never reaches a command
    line: 553 5.1.3 at RCPT time, and no command runs."""
    out, conf = multi_setup("smtp")
    with h.Serve(["-c", conf], name="pipe-dash") as srv:
        with h.session(srv.port, "EHLO test.example", timeout=10) as r:
            for t in ("-oQ/tmp/evil@example.org", '"-x"@example.org'):
                r.cmd("MAIL FROM:<s@example.net>", 250)
                code, lines = r.cmd("RCPT TO:<%s>" % t)
                h.check(code == 553 and lines[-1][4:].startswith("5.1.3"),
                        "RCPT %s: expected 553 5.1.3, got %r" % (t, lines))
                r.cmd("RSET", 250)
            r.cmd("QUIT", 221)
    h.check(ran(out) == {} and os.listdir(out) == [],
            "a command ran for an option-like recipient: %r"
            % os.listdir(out))


def test_lmtp_recipient_bound():
    """Behind LMTP a pipe message's commands run at once: at most 50
    recipients (the 51st RCPT gets 452 4.5.3), and nothing runs for a
    transaction that is reset."""
    out, conf = multi_setup("lmtp")
    with h.Serve(["-c", conf], name="pipe-lmtp-bound") as srv:
        with h.session(srv.port, "LHLO test.example", timeout=10) as r:
            r.cmd("MAIL FROM:<s@example.net>", 250)
            for i in range(50):
                r.cmd("RCPT TO:<u%d@example.org>" % i, 250)
            code, lines = r.cmd("RCPT TO:<u50@example.org>")
            h.check(code == 452 and lines[-1][4:].startswith("4.5.3"),
                    "51st RCPT: %r" % lines)
            r.cmd("RSET", 250)
            r.cmd("QUIT", 221)
    h.check(os.listdir(out) == [], "commands ran: %r" % os.listdir(out))


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent is dead too
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_hung_command_time_limit():
    """A command that never exits (it waits on a `sleep 1000` it started)
    is killed with its process group before the inbound data timeout:
    its recipient gets 451 4.3.0 in time, the others their 250, each
    outcome is logged, and no grandchild is left behind."""
    out, conf = multi_setup("lmtp", timeout_data="6s")
    rng = random.Random(12)
    rcpts = ["hang@example.org", "ok1@example.org", "ok2@example.org"]
    m = h.make_message("pipe-hang@e2e", 3000, rng)
    with h.Serve(["-c", conf], name="pipe-hang") as srv:
        with h.session(srv.port, "LHLO test.example", timeout=30) as r:
            replies = h.lmtp_send(r, "s@example.net", rcpts, m)
            r.cmd("QUIT", 221)
        srv.wait_log("event=message", count=3)
    codes = {t: (c, l[-1][4:9]) for t, (c, l) in zip(rcpts, replies)}
    h.check(codes["hang@example.org"] == (451, "4.3.0"),
            "the hung command's recipient: %r" % (replies[0],))
    for t in rcpts[1:]:
        h.check(codes[t] == (250, "2.0.0"), "%s: %r" % (t, codes[t]))
        h.check(len(stored(out, t)) == 1, "%s not stored" % t)
    child = int(h.read(os.path.join(out, "hang.child")).decode())
    h.wait_for(lambda: not alive(child), 10,
               "the hung command's own child (pid %d) killed" % child)


def test_option_like_sender_refused():
    """%s puts the sender on the command line: MAIL <-oQ/tmp/evil@...>
    gets 553 5.1.7, and the null sender is still fine."""
    out, conf = multi_setup("smtp")
    with h.Serve(["-c", conf], name="pipe-dash-sender") as srv:
        with h.session(srv.port, "EHLO test.example", timeout=10) as r:
            for f in ("-oQ/tmp/evil@example.net", '"-x"@example.net'):
                code, lines = r.cmd("MAIL FROM:<%s>" % f)
                h.check(code == 553 and lines[-1][4:].startswith("5.1.7"),
                        "MAIL %s: expected 553 5.1.7, got %r" % (f, lines))
            r.cmd("MAIL FROM:<>", 250)
            r.cmd("RSET", 250)
            r.cmd("QUIT", 221)
    h.check(ran(out) == {}, "a command ran: %r" % os.listdir(out))


if __name__ == "__main__":
    h.main([test_pipe_exit_codes, test_pipe_escapes,
            test_command_that_does_not_read,
            test_lmtp_three_recipients_one_refused,
            test_lmtp_quit_pipelined_after_data,
            test_smtp_one_recipient_per_transaction,
            test_option_like_local_part_refused,
            test_lmtp_recipient_bound, test_hung_command_time_limit,
            test_option_like_sender_refused])
