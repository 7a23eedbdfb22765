"""
Status lines as a client reads them: a gateway-made answer carries its
reason phrase (#18 item 11: a 429 said "Unknown Status", twisted.web's phrase
for a code its table lacks).  Through L{txgateway.testing}, so the phrase is
the one parsed from the bytes the gateway wrote.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from txgateway.testing import GatewayFixture


class _Ok(Resource):
    isLeaf = True

    def render_GET(self, request: object) -> bytes:
        return b"ok"


class ReasonPhraseTests(SynchronousTestCase):
    def test_rateLimited429SaysTooManyRequests(self) -> None:
        fixture = GatewayFixture.fromYAML("""
upstreams:
  app: {targets: [http://app:8000]}
routes:
  - name: api
    match: {path_prefix: /}
    upstream: app
    rate_limit: {algorithm: token_bucket, rate: 1/m, burst: 1, key: client_ip}
""", origins={"http://app:8000": _Ok()})
        self.assertEqual(fixture.request(b"GET", b"http://gw.example/a").code, 200)
        refused = fixture.request(b"GET", b"http://gw.example/a")
        self.assertEqual((refused.code, refused.phrase), (429, b"Too Many Requests"))
