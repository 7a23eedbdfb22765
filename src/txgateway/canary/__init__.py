# -*- test-case-name: tests.test_canary_config,tests.test_canary_split,tests.test_canary_mirror,tests.test_canary_compare,tests.test_canary_flow -*-
"""
Canary releases: weighted splits among upstreams, and shadow traffic with answer comparison (issue 23).

The parts here are plain and tested on their own: they import nothing of
the gateway (only Twisted, zope.interface and this package), so the
config package can import L{txgateway.canary.specs} without a cycle.  How
they are wired into the gateway is at the end of this docstring.

Modules
=======
  interfaces.py  L{ISplitter} (C{choose(request) -> Choice}, C{split},
                 C{setSplit}, C{counts}, C{report}) and L{IMirror}
                 (C{submit(request) -> ticket | None}, C{stop}, C{report});
                 the values they pass: L{RequestView} (what a choice reads
                 of a request; C{RequestContext} provides it as it is),
                 L{Choice} (upstream, reason), L{MirrorRequest},
                 L{Answer}, and C{MirrorSend} (the injected async send).
  specs.py       the frozen specs: L{CanaryRouteSpec} (upstreams, sticky,
                 override, mirror) and its parts.
  split.py       L{Split} (immutable names + integer weights; weighted
                 random pick over [0, total); sticky pick by weighted
                 rendezvous hashing), L{Splitter} (override -> sticky ->
                 weighted, per-upstream counts), L{updateSplit} (the
                 C{PUT /api/routes/{route}/split} body -> new Split, or
                 L{SplitRefused} with the message for a 400).
  mirror.py      L{Mirror}: percent sampling, max_body, bounded queue,
                 bounded concurrency, own timeout on the injected clock,
                 never a retry, counts; L{MirrorTicket} takes the primary's
                 answer for the comparison.
  compare.py     L{Comparer} (status, listed headers, JSON with ignore
                 paths and tolerances, or bytes), redaction, L{SampleRing},
                 L{mirrorsReport} (the C{GET /api/mirrors} body).
  jsonpath.py    the C{$.items[*].id} notation of ignore/redact paths and
                 reported differences.
  build.py       L{buildRouteCanary} (spec -> splitter and mirror) and
                 L{BodyKeeper} (the primary's first max_body bytes).

Dependency direction: everything here imports only Twisted,
zope.interface and this package (a test holds it to that); the parser of
the canary keys lives in C{config/parser_canary.py}, which imports
C{canary.specs} and C{canary.jsonpath}, so C{canary} sits below C{config}
in the import-linter layers.


Decisions taken here (and why)
==============================
- Sticky keys use weighted rendezvous hashing rather than a hashed point in
  [0, total) mapped onto cumulative intervals: with intervals, changing one
  weight shifts every later interval (v1 90, v2 5, v3 5 -> v3 25 moves all
  of v2's keys), with rendezvous hashing keys move only to or from the
  upstream whose weight changed, and with two upstreams exactly the keys
  that must move.  It is stateless (names + weights), so every worker and
  every gateway instance sends a key to the same upstream; the assignment
  is pinned by a test, as gateways of two releases must agree during a
  rolling upgrade.  The weighted (non-sticky) pick is the point in
  [0, total) drawn with the injected C{random.Random}.
- A request without the sticky key takes the weighted pick (hashing one
  shared "anonymous" value would send all of them to one upstream).
- C{X-Canary: always} names the route's canary, its last listed upstream
  (the new version, by convention and in every docs example), whatever
  its weight, 0 included; any upstream name works too.  An unknown value
  or an untrusted client is ignored, never refused: the header gains an
  outsider nothing and tells him nothing.
- Trust is an input (C{Splitter(trust=...)}), asked only when the header
  names an upstream.  Default from the spec: C{trusted_only: false} ->
  anyone; else a client address in C{trusted_clients} (default: loopback
  and private networks, L{INTERNAL_NETWORKS}) or a consumer in
  C{trusted_consumers} (C{"*"}: any authenticated consumer).  The two list
  keys are additions to the issue's names.
- Mirror counts: C{dropped} covers "queue full" and "waited in the queue
  for its whole timeout" (the mirror is slow: sending it late helps
  nobody); C{timed_out} and C{failed} are copies that were sent.  Samples
  are kept for mismatches only.
- Runtime weights survive a reload that leaves the route's C{upstreams}
  unchanged (L{Splitter.continueFrom}); a reload that changes them wins.


How it is wired in
==================
- Config: C{config/parser_canary.py} parses C{routes[].upstreams},
  C{sticky}, C{canary_override} and C{mirror}; the route parser calls it
  and puts the spec in C{RouteConfig.canary}; for a split route
  C{RouteConfig.upstream} is the first listed upstream (what
  single-upstream readers show).  C{cache} on a split route is refused
  (the cache is looked up before the split chooses).
- Run time: L{txgateway.splitting.attachCanaries} builds every route's
  splitter and mirror (taking over run-time weights and mirror counts
  over a reload); L{txgateway.splitting.routeForwarder} is the route's
  forwarder: L{txgateway.splitting.SplitForwarder} chooses the upstream
  once, before the first lease, and
  L{txgateway.mirroring.MirroringForwarder} offers the copy after the
  primary's request went out; L{txgateway.mirroring.mirrorSender} sends
  it on the mirror upstream's own cluster and client.  The drain stops
  every mirror.
- Observability: the C{upstream} label of the request metrics, the
  access log's C{upstream_choice}, C{txgateway_split_weight},
  C{txgateway_mirror_requests_total} and
  C{txgateway_mirror_mismatches_total}.
- Admin: L{txgateway.admin.canary} (C{GET|PUT /api/routes/{route}/split},
  C{GET /api/mirrors}, the status page's splits and samples).
- Not done yet: a cache key that includes the chosen upstream (so that
  C{cache} can be used on a split route), fanning C{PUT .../split} out to
  every worker (409 under C{server.workers > 1} until then), a
  C{txgateway_mirror_queue} gauge, and listing split changes beside
  C{/api/reloads} (they are logged).
"""

__all__: list[str] = []
