# -*- test-case-name: tests.test_tls_config -*-
"""
Parsing C{upstreams.NAME.tls}: a pure function returning the typed value
and its problems, as L{txgateway.config.parser_concurrency} does.

The YAML::

    upstreams:
      models:
        targets: [https://10.0.0.7:8443]
        tls:
          ca_file: /etc/txgateway/ca.crt      # private CA (else the system store)
          cert_file: /etc/txgateway/tls.crt   # client certificate, for mutual TLS
          key_file: /etc/txgateway/tls.key
          server_name: models.internal        # SNI and the name the certificate must carry
          verify: true                        # false: no verification (loud warning)
          min_version: "1.3"                  # or "1.2"

Every file is read and checked here, so a missing, unreadable or non-PEM
file, or a key that is not the certificate's, stops start-up (or a reload)
with the key that names it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from txgateway.config.errors import Invalid, Problem, keyPath
from txgateway.config.schema import Target
from txgateway.config.schema_tls import UpstreamTLS
from txgateway.config.source import lines
from txgateway.config.values import boolean, string

__all__ = ["TLS_KEYS", "parseUpstreamTLS"]

TLS_KEYS = ("ca_file", "cert_file", "key_file", "server_name", "verify", "min_version")
_VERSIONS = {"1.2": "1.2", "1.3": "1.3", "tlsv1.2": "1.2", "tlsv1.3": "1.3"}


def minVersion(value: Any) -> str:
    """C{"1.2"} or C{"1.3"} (YAML's unquoted C{1.2} reads as a number: taken too)."""
    text = str(value).strip().lower()
    if isinstance(value, bool) or text not in _VERSIONS:
        raise Invalid(f"must be \"1.2\" or \"1.3\", not {value!r}")
    return _VERSIONS[text]


def serverName(value: Any) -> str:
    """A host name for SNI: letters, digits, dots and dashes (IDNA names as their A-label)."""
    text = string(value).strip().rstrip(".")
    if not text or any(c.isspace() or c in "/:@" for c in text):
        raise Invalid(f"must be a host name, not {value!r}")
    try:
        text.encode("idna")
    except UnicodeError:
        raise Invalid(f"is not a valid host name: {value!r}") from None
    return text


def parseUpstreamTLS(value: Any, path: str, line: int | None, baseDir: Path,
                     targets: Sequence[Target] = (), hasSources: bool = False
                     ) -> tuple[UpstreamTLS | None, list[Problem]]:
    """C{upstreams.NAME.tls} at C{path}: its typed value (None when absent or broken) and its problems."""
    problems: list[Problem] = []
    if value is None:
        return None, problems
    if not isinstance(value, dict):
        return None, [Problem(path, line, f"must be a mapping of {', '.join(TLS_KEYS)}")]
    at = lines(value)
    for key in value:
        if key not in TLS_KEYS:
            problems.append(Problem(keyPath(path, key), at.get(key, line),
                                    f"unknown key (expected one of: {', '.join(sorted(TLS_KEYS))})"))

    def get(key: str, conv: Any, default: Any) -> Any:
        if value.get(key) is None:
            return default
        try:
            return conv(value[key])
        except Invalid as e:
            problems.append(Problem(keyPath(path, key), at.get(key, line), str(e)))
            return default

    def file(key: str) -> str | None:
        raw = get(key, string, None)
        if raw is None:
            return None
        p = Path(raw)
        return str(p if p.is_absolute() else baseDir / p)

    spec = UpstreamTLS(ca_file=file("ca_file"), cert_file=file("cert_file"), key_file=file("key_file"),
                       server_name=get("server_name", serverName, None), verify=get("verify", boolean, True),
                       min_version=get("min_version", minVersion, None))
    if (spec.cert_file is None) != (spec.key_file is None):
        given, missing = ("cert_file", "key_file") if spec.key_file is None else ("key_file", "cert_file")
        problems.append(Problem(keyPath(path, given), at.get(given, line),
                                f"needs {missing} too: a client certificate and its key go together"))
    if not spec.verify and spec.ca_file is not None:
        problems.append(Problem(keyPath(path, "ca_file"), at.get("ca_file", line),
                                "is unused with verify: false (nothing is verified); remove one of them"))
    if targets and not hasSources and all(t.scheme != "https" for t in targets):
        problems.append(Problem(path, line, "applies to https:// targets, and every target of this upstream is "
                                            "http://: write the targets as https://"))
    problems += _checkFiles(spec, path, at, line)
    return spec, problems


def _checkFiles(spec: UpstreamTLS, path: str, at: dict[str, int], line: int | None) -> list[Problem]:
    """Read every file now: a start-up (or reload) fails on a file it could not use later."""
    from txgateway.tls.pem import CertificateProblem, readCertificates, readKeyedCertificate

    problems: list[Problem] = []
    if spec.ca_file is not None:
        try:
            readCertificates(spec.ca_file, "CA file")
        except CertificateProblem as e:
            problems.append(Problem(keyPath(path, "ca_file"), at.get("ca_file", line), str(e)))
    if spec.cert_file is not None and spec.key_file is not None:
        try:
            readKeyedCertificate(spec.cert_file, spec.key_file)
        except CertificateProblem as e:
            which = "key_file" if "key file" in str(e) else "cert_file"
            problems.append(Problem(keyPath(path, which), at.get(which, line), str(e)))
    return problems
