# -*- test-case-name: tests.test_layering -*-
"""
HTTP on the wire: the listening channel, the upstream HTTP/1.1 client and its
pool, header rules, path normalisation and address sets.

This package is the only place in txgateway that may touch a private name of
Twisted; each such use is named in its module's docstring.
"""

__all__: list[str] = []
