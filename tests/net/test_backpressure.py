#!/usr/bin/env python3
"""Backpressure through TLS: an application that pauses after DATA chunks
(capture_server --pause-data 0 --pause-every N: on_data answers
TERN_PENDING for every Nth chunk, a timer resumes the session on the next
loop iteration) must still get the whole message, whatever the transport.

The regression (issue 8, item 4): the client sends the whole message at
once and then waits for the reply. While the session was paused, the
runtime stopped reading; on resume it fed the plaintext it had held back
but not the records still buffered inside the TLS engine, and started
reading the socket again. Those records never raise a read event of
their own, so once the client had nothing more to send the session
waited for input it had already received: no 250, the client times out
(in the field: STARTTLS + LMTP forwarding to Dovecot, 1–6 MB messages).

Each case sends the message in one sendall() and waits a bounded time for
the reply; the stored copy must be byte-exact. Plaintext, STARTTLS and
implicit TLS (smtps) listeners; several message sizes; messages in a row
on one connection, alternately DATA and BDAT.
"""

import random
import socket
import ssl

import harness as h

REPLY_TIMEOUT = 20.0  # a message takes well under a second here


def message(rng, size, n):
    hdr = ("From: <a@example.org>\r\nTo: <b@example.org>\r\n"
           "Subject: backpressure %d\r\nMessage-ID: <bp-%d@example.org>\r\n"
           "\r\n" % (n, n)).encode()
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789 .-"
    table = bytes(alphabet[i % len(alphabet)] for i in range(256))
    lines, total, i = [], len(hdr), 0
    while total < size:
        ln = rng.randbytes(rng.randint(0, 200)).translate(table)
        if i % 13 == 0:
            ln = b"." + ln  # dot-stuffed on the wire
        lines.append(ln)
        total += len(ln) + 2
        i += 1
    return hdr + b"".join(ln + b"\r\n" for ln in lines)


def tls_ctx():
    return ssl.create_default_context(cafile=h.cert("ca.pem"))


def run_case(args, mode, sizes, seed, every):
    """Send one message per size on one connection; return nothing, fail
    with what was seen."""
    rng = random.Random(seed)
    sent = []
    with h.CaptureServer(["--listen", args[0]] + args[1:] + h.tls_args() +
                         ["--pause-data", "0", "--pause-every", str(every),
                          "--timeout-ms", "60000"],
                         name="bp") as srv:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        if mode == "smtps":
            s = tls_ctx().wrap_socket(s, server_hostname="localhost")
        r = h.Raw(sock=s, timeout=REPLY_TIMEOUT)
        try:
            code, lines = r.reply()
            h.check(code == 220, "greeting: %r" % lines)
            r.cmd("EHLO bp.example", 250)
            if mode == "starttls":
                r.cmd("STARTTLS", 220)
                r = h.Raw(sock=tls_ctx().wrap_socket(
                    r.s, server_hostname="localhost"), timeout=REPLY_TIMEOUT)
                r.cmd("EHLO bp.example", 250)
            for i, size in enumerate(sizes):
                m = message(rng, size, i)
                r.cmd("MAIL FROM:<a@example.org>", 250)
                r.cmd("RCPT TO:<b@example.org>", 250)
                if i % 2:  # RFC 3030 CHUNKING: one BDAT LAST, all at once
                    r.send(b"BDAT %d LAST\r\n" % len(m) + m)
                else:
                    r.cmd("DATA", 354)
                    r.send(h.dot_stuff(m) + b".\r\n")  # all at once
                try:
                    code, lines = r.reply()
                except (socket.timeout, TimeoutError):
                    h.fail("%s, message %d of %d bytes: no reply within "
                           "%.0f s after its last byte (input stalled "
                           "behind a paused session)"
                           % (mode, i, len(m), REPLY_TIMEOUT))
                h.check(code == 250, "%s, message %d: %r" % (mode, i, lines))
                sent.append(m)
            r.cmd("QUIT", 221)
        finally:
            r.close()
        msgs = srv.wait_messages(len(sent))
        for i, (got, want) in enumerate(zip(msgs, sent)):
            h.assert_bytes_equal(got.eml, want,
                                 "%s: stored message %d" % (mode, i))
            if mode != "plain":
                h.check(got.env["tls"].startswith("TLSv1."), got.env_text)
        h.check(not srv.aborted(), "aborted: %r" % srv.aborted())


# On 5df0288 a pause every 3rd or 8th chunk stalled 9 or 10 of 10 such
# messages over TLS; each connection sends five in a row.
SIZES = [300, 150_000, 1_000_000, 2_500_000, 400_000]
PLAIN = ["smtp://127.0.0.1:0"]
STARTTLS = ["smtp://127.0.0.1:0", "--starttls"]
SMTPS = ["smtps://127.0.0.1:0"]


def test_paused_app_plain():
    run_case(PLAIN, "plain", SIZES, 1, every=3)


def test_paused_app_starttls():
    for every in (1, 3, 8):
        run_case(STARTTLS, "starttls", SIZES, 10 + every, every)


def test_paused_app_smtps():
    for every in (1, 3, 8):
        run_case(SMTPS, "smtps", SIZES, 20 + every, every)


if __name__ == "__main__":
    h.main([test_paused_app_plain, test_paused_app_starttls,
            test_paused_app_smtps])
