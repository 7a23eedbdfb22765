# -*- test-case-name: tests.test_caching -*-
"""
The response cache: the flow that wraps the upstream client (C{flow}), the
RFC 9111 rules (C{policy}) and where entries are kept (C{stores}).
"""

__all__: list[str] = []
