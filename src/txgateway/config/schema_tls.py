# -*- test-case-name: tests.test_tls_config -*-
"""
The typed configuration of C{upstreams.NAME.tls} (issue #21): how the
gateway speaks TLS to an upstream's C{https://} targets.  Re-exported by
L{txgateway.config.schema}.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["UpstreamTLS"]


@dataclass(frozen=True)
class UpstreamTLS:
    """
    C{upstreams.NAME.tls}.  File paths are absolute (relative ones are taken
    from the config file's directory when it is parsed); the files were
    readable and valid then, and are read again whenever they change on disk.
    """

    ca_file: str | None = None  # None: the system's trust store
    cert_file: str | None = None  # the client certificate (mutual TLS), with key_file
    key_file: str | None = None
    server_name: str | None = None  # SNI and the name checked in the certificate; None: the target's host
    verify: bool = True  # False: no check of the target's certificate at all (development only)
    min_version: str | None = None  # "1.2" or "1.3"; None: Twisted's default (TLS 1.2)
