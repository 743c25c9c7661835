#!/usr/bin/env python3
"""Postfix smtp-source against capture_server --count-only: 10,000
messages of 1 KiB from 20 parallel sessions, a new connection per message
and (-d) connections kept; exactly 10,000 must arrive, none aborted."""

import re

import harness as h

N = 10000
SIZE = 1024


def smtp_source(port, *extra):
    exe = h.require_tool("smtp-source", ["/usr/sbin/smtp-source"])
    return h.run([exe, "-s", "20", "-m", str(N), "-l", str(SIZE),
                  "-f", "from@example.org", "-t", "to@example.org"]
                 + list(extra) + ["127.0.0.1:%d" % port], timeout=120)


def run_case(extra, workers="1"):
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0", "--count-only",
                          "--workers", workers]) as srv:
        p = smtp_source(srv.port, *extra)
        err = p.stderr.decode(errors="replace")
        h.check(not re.search(r"(?i)error|fatal|warning", err),
                "smtp-source complained:\n" + err[-3000:])
        srv.stop()
        s = srv.summary()
        h.check(s["messages"] == N, "%d messages received, expected %d"
                % (s["messages"], N))
        h.check(s["aborted"] == 0, "%d aborted" % s["aborted"])
        # each message carries at least the SIZE-octet body
        h.check(s["bytes"] >= N * SIZE, "only %d bytes" % s["bytes"])


def test_connection_per_message():
    run_case([])


def test_connections_kept():
    run_case(["-d"], workers="2")


if __name__ == "__main__":
    h.main([test_connection_per_message, test_connections_kept])
