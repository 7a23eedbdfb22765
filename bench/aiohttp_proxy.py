"""
The aiohttp + uvloop peer: the reverse proxy a Python team writes in an afternoon.

The shortest honest one: aiohttp's low-level server on uvloop, one pooled
ClientSession (keep-alive, no limit on connections, no decompression, no
default headers of its own), round robin over the targets, hop-by-hop fields
(and those the Connection field names) dropped both ways, X-Forwarded-For
added, request and response bodies streamed as they come.  No features.
bench/run.py measures it beside txgateway, the bare-Agent reference, nginx
and HAProxy; it is the Python figure users compare a gateway with.

python bench/aiohttp_proxy.py PORT TARGET_URL [TARGET_URL ...]
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import sys
from collections.abc import Awaitable, Callable

import uvloop
from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web
from multidict import CIMultiDict, MultiMapping
from yarl import URL

HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "trailers", "transfer-encoding",
                 "upgrade", "proxy-authenticate", "proxy-authorization"})


def endToEnd(headers: MultiMapping[str]) -> CIMultiDict[str]:
    """The fields a proxy passes on: hop-by-hop ones and those Connection names left out."""
    named = {t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(",")}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP and k.lower() not in named)


def makeHandler(session: ClientSession, targets: list[str]) -> Callable[[web.BaseRequest],
                                                                        Awaitable[web.StreamResponse]]:
    cycle = itertools.cycle(targets)

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        headers = endToEnd(request.headers)
        prior = request.headers.getall("X-Forwarded-For", ())
        headers["X-Forwarded-For"] = ", ".join([*prior, request.remote or ""])
        body = request.content if request.body_exists else None
        try:
            upstream = await session.request(request.method, URL(next(cycle) + request.raw_path, encoded=True),
                                             headers=headers, data=body, allow_redirects=False)
        except (TimeoutError, ClientError):
            return web.Response(status=502)
        # A body cut short raises here: aiohttp then drops the client connection, as a proxy must.
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                          headers=endToEnd(upstream.headers))
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    return handle


async def serve(port: int, targets: list[str]) -> None:
    connector = TCPConnector(limit=0, keepalive_timeout=60)
    async with ClientSession(connector=connector, auto_decompress=False, timeout=ClientTimeout(total=None),
                             skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding")) as session:
        runner = web.ServerRunner(web.Server(makeHandler(session, targets)), access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=2048).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()


def main() -> None:
    uvloop.run(serve(int(sys.argv[1]), sys.argv[2:]))


if __name__ == "__main__":
    main()
