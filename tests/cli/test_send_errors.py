#!/usr/bin/env python3
"""`tern send` reports the reply that really failed (issue 8, item 29).

A sender refused by a PIPELINING server is reported as the sender's
refusal with the server's own reply and its exit code, not as each
recipient's "503 need MAIL"; a server that goes silent is reported as a
timeout (EX_TEMPFAIL), not as a closed connection."""

import harness as h
from sendpeer import CLOSE, Peer
from test_send import send, expect_rc

MSG = b"Subject: x\n\nx\n"
RCPTS = ["bob@example.org", "carol@example.org"]


def refusing_peer(mail):
    # what Postfix answers to the rest of a pipelined group
    return Peer(replies={"MAIL": mail,
                         "RCPT": b"503 5.5.1 Error: need MAIL command\r\n",
                         "DATA": b"503 5.5.1 Error: need RCPT command\r\n"})


def test_pipelined_sender_refused_5xx():
    with refusing_peer(b"554 5.7.1 <x@example.org>: Sender address "
                       b"rejected: Access denied\r\n") as p:
        rc, _, err = send(["--server", p.url, "--timeout", "10", "-f",
                           "x@example.org"] + RCPTS, stdin=MSG)
        expect_rc(rc, err, 69, "MAIL 554 with PIPELINING")
        h.check(err == "tern send: sender <x@example.org> refused: 554 "
                "5.7.1 <x@example.org>: Sender address rejected: Access "
                "denied\n", "stderr: %r" % err)
        cmds = p.commands()
        h.check(any(c.startswith("RCPT") for c in cmds),
                "the group was not pipelined: %r" % cmds)


def test_pipelined_sender_refused_4xx():
    with refusing_peer(b"450 4.7.1 <x@example.org>: Sender address "
                       b"rejected: try later\r\n") as p:
        rc, _, err = send(["--server", p.url, "--timeout", "10", "-f",
                           "x@example.org"] + RCPTS, stdin=MSG)
        expect_rc(rc, err, 75, "MAIL 450 with PIPELINING")
        h.check(err == "tern send: sender <x@example.org> refused: 450 "
                "4.7.1 <x@example.org>: Sender address rejected: try "
                "later\n", "stderr: %r" % err)


def test_pipelined_all_recipients_refused():
    """Every RCPT refused: the recipients' replies are what failed, not
    DATA's "no valid recipients"."""
    with Peer(replies={"RCPT": b"550 5.1.1 unknown user\r\n",
                       "DATA": b"554 5.5.1 Error: no valid recipients\r\n"}
              ) as p:
        rc, _, err = send(["--server", p.url, "--timeout", "10"] + RCPTS,
                          stdin=MSG)
        expect_rc(rc, err, 67, "every RCPT 550")
        h.check(err == "tern send: <bob@example.org> refused: 550 5.1.1 "
                "unknown user\ntern send: <carol@example.org> refused: 550 "
                "5.1.1 unknown user\n", "stderr: %r" % err)


def test_data_refused_after_recipients():
    """Recipients accepted, DATA refused: the DATA reply is reported."""
    with Peer(replies={"DATA": b"554 5.3.0 no thanks\r\n"}) as p:
        rc, _, err = send(["--server", p.url, "--timeout", "10"] + RCPTS,
                          stdin=MSG)
        expect_rc(rc, err, 69, "DATA 554")
        h.check(err == "tern send: message refused by 127.0.0.1:%d: 554 "
                "5.3.0 no thanks\n" % p.port, "stderr: %r" % err)


def test_rcpt_421_is_the_session():
    """421 to a RCPT closes the service (RFC 5321 §4.2.3): reported as
    the session's end, not as that recipient's refusal."""
    for caps in (["PIPELINING"], []):
        with Peer(caps=caps,
                  replies={"RCPT": b"421 4.3.2 shutting down\r\n"}) as p:
            rc, _, err = send(["--server", p.url, "--timeout", "10"] +
                              RCPTS, stdin=MSG)
            expect_rc(rc, err, 75, "RCPT 421 %r" % caps)
            h.check(err == "tern send: 127.0.0.1:%d closed the session: "
                    "421 4.3.2 shutting down\n" % p.port, "stderr: %r" % err)


def silent_case(verb, what):
    """`what`: words the timeout message must contain besides the
    endpoint (the runtime says what it waited for)."""
    with Peer(replies={verb: None}) as p:
        rc, _, err = send(["--server", p.url, "--timeout", "1"] + RCPTS,
                          stdin=MSG, timeout=20)
        expect_rc(rc, err, 75, "silent at %s" % verb)
        h.check(p.went_silent(), "the peer never went silent at " + verb)
        h.check("closed" not in err, "%s: a timeout reported as %r"
                % (verb, err))
        h.check(err.startswith("tern send: timed out") and
                "127.0.0.1:%d" % p.port in err and what in err and
                err.count("\n") == 1, "%s: stderr %r" % (verb, err))


def test_silent_after_mail():
    silent_case("MAIL", "waiting for a reply")


def test_silent_after_end_of_data():
    silent_case("END", "end of data")


def test_silent_after_ehlo():
    silent_case("EHLO", "waiting for")


def test_closed_is_closed():
    """The converse: a server that hangs up is reported as such."""
    with Peer(replies={"MAIL": CLOSE}) as p:
        rc, _, err = send(["--server", p.url, "--timeout", "5"] + RCPTS,
                          stdin=MSG)
        expect_rc(rc, err, 75, "server closes")
        h.check("timed out" not in err and "closed" in err and
                err.count("\n") == 1, "stderr: %r" % err)


def test_bad_helo_is_usage():
    """A --helo with CR/LF, a space or nothing is a usage error (64)
    before any connection, not a temporary failure of the session."""
    for bad in ["a\r\nRSET", "a b", ""]:
        rc, _, err = send(["--server", "smtp://127.0.0.1:1", "--helo", bad,
                           "bob@example.org"], stdin=MSG)
        expect_rc(rc, err, 64, "--helo %r" % bad)
        h.check("--helo" in err, "stderr does not name --helo: %r" % err)


if __name__ == "__main__":
    h.main([test_pipelined_sender_refused_5xx,
            test_pipelined_sender_refused_4xx,
            test_pipelined_all_recipients_refused,
            test_data_refused_after_recipients, test_rcpt_421_is_the_session,
            test_silent_after_mail, test_silent_after_end_of_data,
            test_silent_after_ehlo, test_closed_is_closed,
            test_bad_helo_is_usage])
