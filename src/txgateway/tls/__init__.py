# -*- test-case-name: tests.test_tls_client,tests.test_tls_server -*-
"""
TLS material the gateway holds: certificates and keys read from files,
checked, and read again when the files change on disk.

  - L{txgateway.tls.pem}: reading and checking PEM files (CA bundles,
    certificate chains, private keys) and the stat stamp that tells a
    rotated file from an unchanged one;
  - L{txgateway.tls.client}: an upstream's TLS policy, which makes the
    connection creator of each connection to a target (private CA, client
    certificate, SNI, minimum version, or no verification);
  - L{txgateway.tls.server}: a TLS listener's certificate, swapped for new
    connections when cert-manager rotates it;
  - L{txgateway.tls.failures}: why a connection's TLS failed, in words, for
    the log line of a 502 (without importing pyOpenSSL).

Importing this package costs nothing: pyOpenSSL (~15 MB per process) is
imported by the modules that need it, only when a config uses TLS.
"""

__all__: list[str] = []
