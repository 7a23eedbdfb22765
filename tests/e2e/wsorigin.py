"""
A WebSocket origin for the end-to-end tests, run as its own process, on the
C{websockets} library (a real server, not the gateway's code).

C{python tests/e2e/wsorigin.py PORT [CERT KEY]} serves on 127.0.0.1:PORT (0:
the OS picks; with CERT and KEY, over TLS) and prints C{ready PORT}.  By path:

  /echo      every message sent back as it came
  /headers   one text message: JSON of the upgrade request's header fields, then echo
  /refuse    no upgrade: 403 with a small body (the gateway must relay it as it is)
  /die       echo, but the message "die" drops the TCP connection without a close frame
  /close     the message "close" closes with code 4000
  /flood     64 KiB binary messages, as fast as the connection takes them, until it closes
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection, serve


def refuse(connection: ServerConnection, request: Any) -> Any:
    if request.path.startswith("/refuse"):
        return connection.respond(HTTPStatus.FORBIDDEN, "no WebSocket here\n")
    return None


async def handle(ws: ServerConnection) -> None:
    path = ws.request.path if ws.request is not None else "/"
    if path.startswith("/headers") and ws.request is not None:
        await ws.send(json.dumps([[k, v] for k, v in ws.request.headers.raw_items()]))
    if path.startswith("/flood"):
        chunk = b"x" * 65536
        while True:
            await ws.send(chunk)
    async for message in ws:
        if path.startswith("/die") and message == "die":
            ws.transport.abort()
            return
        if path.startswith("/close") and message == "close":
            await ws.close(4000, "asked to")
            return
        await ws.send(message)


async def main(port: int, cert: str | None, key: str | None) -> None:
    context = None
    if cert and key:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
    async with serve(handle, "127.0.0.1", port, ssl=context, process_request=refuse, max_size=None) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        print(f"ready {bound}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(int(args[0]) if args else 0, args[1] if len(args) > 2 else None,
                     args[2] if len(args) > 2 else None))
