"""
What a gateway loads depends on what its config uses.

A feature's code (and its libraries: pyjwt for auth, treq for active health
checks, the cache's policy and stores) stays out of a process whose config
does not use it, so a plain gateway's resident memory is not paid for
features it does not run.  Each check builds a whole gateway service in a
fresh interpreter and lists what it imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

SRC = Path(__file__).resolve().parent.parent / "src"

PLAIN = """
server: {listen: "tcp:0:interface=127.0.0.1"}
upstreams:
  app: {targets: [http://127.0.0.1:9101, http://127.0.0.1:9102]}
routes:
  - name: api
    match: {path_prefix: /api}
    upstream: app
    rate_limit: {rate: 100/s, burst: 10}
  - {name: default, match: {path_prefix: /}, upstream: app}
"""

FEATURES = """
server: {listen: "tcp:0:interface=127.0.0.1"}
upstreams:
  app:
    targets: [http://127.0.0.1:9101]
    health: {active: {path: /health, interval: 5s}}
routes:
  - name: api
    match: {path_prefix: /api}
    upstream: app
    auth: {jwt: {algorithms: [HS256], secret: s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t}}
    cors: {allow_origins: ["https://app.example.com"]}
    cache: {}
"""

# Builds the service as twistd's plugin does (minus running the reactor) and
# prints the loaded modules of interest.
SCRIPT = """
import json, sys
from twisted.internet import reactor
from txgateway.config import parseConfig
from txgateway.service import GatewayService
service = GatewayService(parseConfig(sys.stdin.read()), reactor)
service.startService()
prefixes = ("txgateway.", "jwt", "treq", "OpenSSL")
print(json.dumps(sorted(m for m in sys.modules if m.startswith(prefixes))))
"""

OPTIONAL = {"txgateway.auth", "txgateway.cors", "txgateway.caching.flow", "txgateway.caching.policy",
            "txgateway.caching.stores", "txgateway.admin", "txgateway.workers", "jwt", "treq"}


def loadedModules(config: str) -> set[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", SCRIPT], input=config, capture_output=True, text=True,
                         env=env, timeout=60, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


class LoadedModulesTests(SynchronousTestCase):
    def test_plainConfigLeavesUnusedFeaturesUnloaded(self) -> None:
        """Without auth, CORS, caching, active checks, admin or workers, none of their code is imported."""
        loaded = loadedModules(PLAIN)
        self.assertIn("txgateway.limiting", loaded)  # a route has a rate limit
        self.assertEqual(sorted(OPTIONAL & loaded), [])

    def test_featuresLoadTheirModulesWhenConfigured(self) -> None:
        """A config that uses auth, CORS, caching and active checks loads what they need."""
        loaded = loadedModules(FEATURES)
        for module in ("txgateway.auth", "txgateway.cors", "txgateway.caching.flow", "jwt", "treq"):
            self.assertIn(module, loaded)
        self.assertNotIn("txgateway.limiting", loaded)
