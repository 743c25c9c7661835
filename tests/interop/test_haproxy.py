#!/usr/bin/env python3
"""HAProxy (mode tcp, send-proxy-v2 / send-proxy) in front of a
capture_server listener with --proxy: a client bound to 127.0.0.2 sends
a message through HAProxy and the stored envelope must name 127.0.0.2
(the original client), not HAProxy's 127.0.0.1."""

import os
import smtplib
import subprocess

import harness as h

CFG = """global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:{fport}
    default_backend be
backend be
    server tern 127.0.0.1:{bport} {send}
"""


def through_haproxy(send):
    exe = h.require_tool("haproxy", ["/usr/sbin/haproxy"])
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0", "--proxy"]) as srv:
        d = h.tmpdir(prefix="tern-haproxy-")
        fport = h.free_port()
        cfg = os.path.join(d, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(CFG.format(fport=fport, bport=srv.port, send=send))
        h.run([exe, "-c", "-f", cfg], timeout=20)
        with h.Child([exe, "-f", cfg, "-db"], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL) as hap:
            h.wait_for(lambda: h.listening(fport) or hap.proc.poll() is not None,
                       10, "haproxy to listen on %d" % fport)
            h.check(hap.proc.poll() is None, "haproxy exited: %s"
                    % hap.proc.returncode)
            m = (b"From: a@example.org\r\nTo: b@example.org\r\n"
                 b"Subject: via haproxy " + send.encode() + b"\r\n\r\nhi\r\n")
            with smtplib.SMTP("127.0.0.1", fport, timeout=10,
                              source_address=("127.0.0.2", 0)) as c:
                code, _ = c.ehlo()
                h.check(code == 250, "EHLO via haproxy: %d" % code)
                c.sendmail("a@example.org", ["b@example.org"], m)
            (s,) = srv.wait_messages(1)
            h.assert_bytes_equal(s.eml, m)
            h.check(s.env["peer"] == "127.0.0.2",
                    "peer is %r, expected the original client 127.0.0.2"
                    % s.env["peer"])
            h.check(s.env["peer_port"] != "0", s.env_text)
        # and a client that skips HAProxy gets nothing (no PROXY header)
        r = h.Raw("127.0.0.1", srv.port, timeout=3)
        try:
            r.send("EHLO direct.example\r\n")
            h.check(r.closed(timeout=15) and b"250" not in r.buf,
                    "direct connection to a --proxy listener was served: %r"
                    % r.buf)
        finally:
            r.close()


def test_send_proxy_v2():
    through_haproxy("send-proxy-v2")


def test_send_proxy_v1():
    through_haproxy("send-proxy")


if __name__ == "__main__":
    h.main([test_send_proxy_v2, test_send_proxy_v1])
