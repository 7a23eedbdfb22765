# -*- test-case-name: tests.test_pool,tests.test_upstream_response -*-
"""
The gateway's private HTTP/1.1 upstream client: parser, protocol, pool, agent.

These modules (with L{txgateway.http.channel} and L{txgateway.http.sending})
are the only ones that touch Twisted's private names; each lists the names
it uses in its docstring.  The rest of the gateway sees only
L{txgateway.interfaces.IUpstreamClient} (L{agent.UpstreamAgent}).
"""

__all__: list[str] = []
