"""
A real authoritative DNS server for the end-to-end tests: C{twisted.names}
on 127.0.0.1, a free UDP port, answering from a zone file the test rewrites.

Run as C{python dnsserver.py ZONE.json [PORT]}; prints C{ready PORT} once it
listens.  The zone is read again for every query, so a test changes the
records by rewriting the file (atomically, see L{DNSServer.set}):
C{{"name": [["A", "127.0.0.2", ttl], ["SRV", "target", port, weight, ttl]]}}.
The gateway's C{discovery.nameservers} points at it, as at a cluster's DNS.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

if __package__:
    from .harness import Backend, childEnv
else:  # run as a script: the server process needs nothing of the harness
    Backend = object  # type: ignore[assignment,misc]

HERE = Path(__file__).resolve()


def _records(name: bytes, qtype: int, zone: dict[str, Any]) -> list[Any]:
    from twisted.names import dns

    out = []
    for entry in zone.get(name.decode().lower(), []):
        kind = entry[0]
        if kind == "A" and qtype == dns.A:
            out.append(dns.RRHeader(name, dns.A, dns.IN, entry[2], dns.Record_A(entry[1], entry[2]), auth=True))
        elif kind == "AAAA" and qtype == dns.AAAA:
            out.append(dns.RRHeader(name, dns.AAAA, dns.IN, entry[2], dns.Record_AAAA(entry[1], entry[2]), auth=True))
        elif kind == "SRV" and qtype == dns.SRV:
            _, target, port, weight, ttl = entry
            out.append(dns.RRHeader(name, dns.SRV, dns.IN, ttl, dns.Record_SRV(0, weight, port, target, ttl),
                                    auth=True))
    return out


def main() -> None:
    from twisted.internet import reactor
    from twisted.internet.defer import fail, succeed
    from twisted.names import common, dns, server
    from twisted.names.error import DomainError

    zonePath = Path(sys.argv[1])
    portNumber = int(sys.argv[2]) if len(sys.argv) > 2 else 0

    class Zone(common.ResolverBase):
        def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Any:
            zone = json.loads(zonePath.read_text())
            if name.decode().lower() not in zone:
                return fail(DomainError(name))
            return succeed((_records(name, type, zone), [], []))

    factory = server.DNSServerFactory(authorities=[Zone()])
    port = reactor.listenUDP(portNumber, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")  # type: ignore[attr-defined]
    print("ready", port.getHost().port, flush=True)
    reactor.run()  # type: ignore[attr-defined]


class DNSServer(Backend):
    """The server process, its zone file and its port; L{stop} (a Backend's) and L{start} again keep the port."""

    def __init__(self, directory: Path) -> None:
        super().__init__("dns")
        self.zonePath = directory / "zone.json"
        self.zone: dict[str, list[list[Any]]] = {}
        self.write()

    def write(self) -> None:
        tmp = self.zonePath.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.zone))
        os.replace(tmp, self.zonePath)

    def set(self, name: str, *records: list[Any]) -> None:
        self.zone[name] = [list(r) for r in records]
        self.write()

    def remove(self, name: str) -> None:
        self.zone.pop(name, None)
        self.write()

    def start(self) -> DNSServer:
        self.proc = subprocess.Popen([sys.executable, str(HERE), str(self.zonePath), str(self.port)], env=childEnv(),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout is not None
        if not select.select([self.proc.stdout], [], [], 15)[0]:
            raise AssertionError("the DNS server said nothing within 15s")
        first = self.proc.stdout.readline().decode(errors="replace")
        if not first.startswith("ready "):
            raise AssertionError(f"the DNS server did not start: {first}")
        self.port = int(first.split()[1])
        return self


if __name__ == "__main__":
    main()
