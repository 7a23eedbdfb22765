"""
An HTTPS origin for end-to-end tests of TLS to targets, run as its own process.

C{python tests/e2e/tlsorigin.py CERT KEY [CLIENT_CA]} serves HTTPS on a port
of 127.0.0.1 the OS picks and prints C{ready PORT} once it listens.  With
C{CLIENT_CA} it requires a client certificate signed by that CA (mutual
TLS).  Every answer is JSON: the path, the SNI name the client sent, and the
serial number (hex) and subject of the client's certificate, if any.  Each
response closes its connection (HTTP/1.0), so every request the gateway
forwards makes a new connection, with the TLS settings of that moment.

The standard library's C{ssl} and C{http.server}: an origin independent of
the Twisted TLS code under test.  Each connection's handshake runs in its
own thread, so a client that fails its handshake holds nobody up.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["TLSOrigin"]

class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        conn: Any = self.connection
        peer = conn.getpeercert()
        client = None
        if peer:
            subject = ", ".join(f"{k}={v}" for rdn in peer.get("subject", ()) for k, v in rdn)
            client = {"serial": peer.get("serialNumber", "").lower().lstrip("0"), "subject": subject}
        server: Any = self.server
        with server.lock:
            sni = server.sni.pop(id(conn), None)
        body = json.dumps({"path": self.path, "sni": sni, "client": client}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.context = context
        self.lock = threading.Lock()
        self.sni: dict[int, str | None] = {}  # the name each connection's client sent, by its socket
        context.sni_callback = self.remember

    def remember(self, sock: Any, name: str | None, context: ssl.SSLContext) -> None:
        with self.lock:
            self.sni[id(sock)] = name

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            print(f"handshake failed: {e}", flush=True)
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()


def main() -> None:
    cert, key = sys.argv[1], sys.argv[2]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if len(sys.argv) > 3:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(sys.argv[3])
    server = _Server(context)
    print("ready", server.server_address[1], flush=True)
    server.serve_forever()


class TLSOrigin:
    """The origin process, from a test: its certificate and key files, and optionally the CA of its clients."""

    def __init__(self, cert: Path, key: Path, clientCA: Path | None = None) -> None:
        self.args = [str(cert), str(key)] + ([str(clientCA)] if clientCA is not None else [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> TLSOrigin:
        import select

        from .harness import childEnv

        self.proc = subprocess.Popen([sys.executable, __file__, *self.args], env=childEnv(),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout is not None
        if not select.select([self.proc.stdout], [], [], 15)[0]:
            raise AssertionError("the TLS origin said nothing within 15s")
        first = self.proc.stdout.readline().decode(errors="replace")
        if not first.startswith("ready "):
            raise AssertionError(f"the TLS origin did not start: {first}")
        self.port = int(first.split()[1])
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


if __name__ == "__main__":
    main()
