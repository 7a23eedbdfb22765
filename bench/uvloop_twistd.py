"""
twistd on Twisted's asyncio reactor, over uvloop's event loop.

Issue #25 asks whether another reactor or event loop is faster for the
request path, measured the same way.  twistd's C{--reactor=asyncio} makes its
loop with C{asyncio.new_event_loop()}, which asks the current event loop
policy: setting uvloop's policy first puts the reactor on uvloop (libuv's
epoll loop, written in Cython) while every transport, protocol and timer
stays Twisted's.  bench/run.py's C{txgateway-uvloop} side runs the gateway
this way; arguments are twistd's.
"""

import asyncio
import sys

import uvloop
from twisted.scripts.twistd import run

if __name__ == "__main__":
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.argv[1:1] = ["--reactor=asyncio"]
    run()
