# -*- test-case-name: tests.test_canary_split,tests.test_canary_mirror -*-
"""
What the canary machinery promises, and the values it passes around.

Routing asks an L{ISplitter} which upstream a request goes to; the forward
path hands a copy of a request to an L{IMirror} once the primary's request
was sent.  Both are reached only through these interfaces, so the core can
be wired (and tested) against fakes, and the split or mirror can change
without the forward path knowing.

Kept apart from L{txgateway.interfaces} while the core is being
restructured (as L{txgateway.discovery.interfaces} is); the names stay when
it moves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

__all__ = ["Answer", "Choice", "IMirror", "ISplitter", "MirrorRequest", "MirrorSend", "RequestView"]


class RequestView(Protocol):
    """
    What choosing an upstream reads of a request.

    L{txgateway.context.RequestContext} provides it as it is: C{clientIP}
    (after the X-Forwarded-For walk), C{identity} (the consumer that auth
    established, or None) and C{header(name)} (the first value of a request
    header, name in lower case bytes).
    """

    clientIP: str
    identity: str | None

    def header(self, name: bytes) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class Choice:
    """
    The upstream chosen for one request and why: C{override} (a trusted
    client named it), C{sticky} (the request key's hash), C{weighted} (the
    weighted random pick).  The reason goes to the access log beside the
    upstream, so an operator can tell a tester's request from real traffic.
    """

    upstream: str
    reason: str


@dataclass(frozen=True, slots=True)
class MirrorRequest:
    """
    The copy of a request the mirror sends: what the primary was sent, after
    the route's rewrites and header rules, so both upstreams see the same
    request.  C{path} includes the query string.
    """

    method: bytes
    path: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes = b""
    requestId: str = ""


@dataclass(frozen=True, slots=True)
class Answer:
    """
    One upstream's answer, as far as comparing needs it.  C{truncated} is
    true when only the first bytes of the body were kept (more than the
    route's C{mirror.max_body}); such a body is not compared.
    """

    status: int
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    truncated: bool = False


#: Sends one mirror request to the mirror upstream and fires with its
#: answer; cancelling the Deferred abandons the request (the mirror's own
#: timeout does).  It must not retry: a mirror request is sent at most once.
MirrorSend = Callable[[MirrorRequest], "Deferred[Answer]"]


class ISplitter(Interface):
    """
    Chooses among a route's upstreams: by override, by sticky key, or by weight.

    The split (names and weights) is an immutable value replaced whole, so
    a weight change made through the admin API while requests are being
    routed is seen by each request either entirely or not at all.
    """

    route = Attribute("The route's name.")
    split = Attribute("The current L{txgateway.canary.split.Split}; replace it with L{setSplit}.")

    def choose(request: RequestView) -> Choice:
        """
        The upstream for C{request}, counted in L{counts}.  Never fails:
        an unusable override or a missing sticky key falls back to the
        weighted pick.
        """

    def setSplit(split: Any) -> None:
        """Replace the split whole (a reload or C{PUT /api/routes/{route}/split})."""

    def counts() -> dict[str, int]:
        """Requests chosen per upstream since start (monotonic; shares over a window are differences)."""

    def report() -> dict[str, Any]:
        """The split for the admin API and status page: weights, configured shares, chosen counts."""


class IMirror(Interface):
    """
    Sends copies of a route's requests to another upstream, off the request path.

    Nothing the mirror does can delay or fail the primary: copies wait in a
    bounded queue, a bounded number are in flight, each has its own
    timeout, none is retried, and whatever does not fit is dropped and
    counted.
    """

    route = Attribute("The route's name.")
    upstream = Attribute("The mirror upstream's name.")

    def sample() -> bool:
        """Whether the next request is in the mirrored percent (a random draw); C{submit(..., sampled=True)} then."""

    def submit(request: MirrorRequest, bodyLength: int | None = None, sampled: bool = False) -> Any:
        """
        Offer a copy of a request whose primary request was just sent.
        Returns a ticket (with C{primaryAnswered(answer)} and
        C{primaryFailed()}, for the comparison) or None when the request is
        not mirrored: not in the sampled percent, its body over
        C{max_body} (skipped), or the queue full (dropped).  C{bodyLength}
        is the body's size when the body was not read because it is too
        large; then C{request.body} may be empty.  C{sampled}: L{sample}
        already said yes for this request.
        """

    def stop() -> None:
        """Cancel what is in flight and forget what is queued (reload, shutdown); idempotent."""

    def report() -> dict[str, Any]:
        """This route's entry of C{GET /api/mirrors}: counts and the kept samples."""
