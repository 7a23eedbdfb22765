# -*- test-case-name: tests.test_protection -*-
"""
Protecting slow backends in the forward path (issue 24).

The machinery (limits, the admission queue, the micro-batcher, single
flight) is in L{txgateway.concurrency}, below the config package; this
package puts it in the forward path as L{txgateway.interfaces.IForwarder}
wrappers, as the cache's flow is one.  Per route, outermost first:

    cache flow (caching/flow.py)     a hit never queues, never coalesces
    CoalescingForwarder              coalescing.py: identical requests share one fetch below
    BatchingForwarder                batching.py: many items, one fetch below
    AdmissionForwarder               admission.py: one permit per fetch below, before the lease
    ClusterForwarder (AttemptLoop)   retries; Cluster.choose -> Lease -> IUpstreamClient

memory.py holds the in-memory answers the batch and coalescing wrappers
hand out; build.py builds the chain per route and keeps controllers per
upstream across reloads; targets.py is C{per_target}: each target's own
limit (which C{Cluster.choose} consults), the upstream's limit their sum;
report.py is what the status page and admin API show.
"""

__all__: list[str] = []
