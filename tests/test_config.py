"""Config loading: the example loads, every mistake is named by key path and line, env overrides."""

from __future__ import annotations

import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from txgateway.config import (
    ConfigError,
    Rate,
    applyEnvironment,
    configFromEnvironment,
    duration,
    loadConfig,
    parseConfig,
    rate,
    size,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO.parent / "shared" / "gw.example.yaml"
BUNDLED = REPO / "examples" / "gw.yaml"

MINIMAL = """\
upstreams:
  api:
    targets: [http://127.0.0.1:9000]
routes:
  - match: {path_prefix: /}
    upstream: api
"""


def problems(text: str) -> list[str]:
    try:
        parseConfig(text, "gw.yaml")
    except ConfigError as e:
        return [str(p) for p in e.problems]
    raise AssertionError("config was accepted")


class ExampleTests(SynchronousTestCase):
    def test_bundledExampleLoadsAndMeansWhatItsCommentsSay(self) -> None:
        """The example config users copy loads unchanged, with the values its comments describe."""
        for path in (BUNDLED, EXAMPLE):
            if not path.exists():
                continue
            c = loadConfig(path, environ={})
            self.assertEqual(c.server.listen, "tcp:8080")
            self.assertEqual(c.server.max_request_body, 10 * 1024 * 1024)
            self.assertEqual(c.server.max_header_bytes, 64 * 1024)
            self.assertEqual(c.server.timeouts.request_header, 15.0)
            self.assertEqual(c.server.timeouts.drain, 30.0)
            inference = c.upstreams["inference"]
            self.assertEqual(inference.balancer, "least_connections")
            self.assertEqual(inference.retries.on, ("connect_failure", 502, 503, 504))
            self.assertEqual(inference.retries.budget, 0.2)
            self.assertEqual(inference.retries.backoff, 0.025)
            assert inference.health.active is not None
            self.assertEqual(inference.health.active.interval, 5.0)
            self.assertEqual([t.weight for t in c.upstreams["users"].targets], [5, 1])
            self.assertEqual(c.upstreams["sessions"].hash_on, "header:X-User-ID")
            batch = next(r for r in c.routes if r.name == "batch")
            assert batch.rate_limit is not None and batch.auth is not None
            self.assertEqual(batch.rate_limit.rate, Rate(600, 60.0))
            self.assertEqual(batch.rate_limit.key, ("consumer",))
            self.assertTrue(batch.rate_limit.shared)
            self.assertEqual(batch.auth.forward_identity, "X-Consumer")
            staff = c.auth_policies["staff"]
            assert staff.basic is not None
            self.assertEqual(staff.basic.users[0][0], "bob")
            services = c.auth_policies["services"]
            assert services.jwt is not None
            self.assertEqual(services.jwt.secret, b"example-hs256-secret-change-me-0123456789abcdef")
            users = next(r for r in c.routes if r.name == "users-api")
            self.assertEqual(users.strip_prefix, "/api")
            assert users.cache is not None
            self.assertEqual(users.cache.max_ttl, 60.0)


class ProblemTests(SynchronousTestCase):
    def test_badTargetURLNamesKeyPathAndLine(self) -> None:
        """A bad URL is reported as upstreams.NAME.targets[i] with its line."""
        text = MINIMAL.replace("targets: [http://127.0.0.1:9000]",
                               "targets:\n      - http://127.0.0.1:9000\n      - not a url")
        self.assertEqual(problems(text), ["line 5: upstreams.api.targets[1]: not a URL: 'not a url' (write e.g. http://10.0.0.5:8000)"])

    def test_everyProblemIsReportedAtOnce(self) -> None:
        """Several mistakes give several problems, in file order, not just the first."""
        text = "server:\n  max_request_body: lots\n  colour: blue\n" + MINIMAL.replace("upstream: api", "upstream: nope")
        got = problems(text)
        self.assertEqual(len(got), 3)
        self.assertIn("server.max_request_body: not a size", got[0])
        self.assertIn("server.colour: unknown key", got[1])
        self.assertIn("routes[0].upstream: no upstream named 'nope'", got[2])

    def test_yamlSyntaxErrorHasALine(self) -> None:
        """Broken YAML is reported with the line where the parser gave up."""
        got = problems("upstreams:\n  api: [unclosed\n")
        self.assertEqual(len(got), 1)
        self.assertTrue(got[0].startswith("line "), got[0])
        self.assertIn("not valid YAML", got[0])

    def test_yamlSyntaxErrorNamesLineAndColumn(self) -> None:
        """A mis-indented key is reported at its own line and column."""
        text = "upstreams:\n  api:\n    targets: [http://127.0.0.1:9000]\n   bad: 1\n"
        got = problems(text)
        self.assertEqual(len(got), 1)
        self.assertTrue(got[0].startswith("line 4, column 4: not valid YAML"), got[0])

    def test_unclosedBracketIsReportedWhereItOpens(self) -> None:
        """An unclosed [ or quote points at where it was opened, and says where YAML gave up."""
        got = problems("upstreams:\n  api: [unclosed\nroutes: []\n")
        self.assertEqual(len(got), 1)
        self.assertTrue(got[0].startswith("line 2, column 8: not valid YAML: a flow sequence opened here"), got[0])
        self.assertIn("on line 3, column 7", got[0])
        got = problems('upstreams:\n  api: "unclosed\n')
        self.assertTrue(got[0].startswith("line 2, column 8: not valid YAML: a quoted scalar opened here"), got[0])

    def test_tabIndentationNamesLineAndColumn(self) -> None:
        """A tab where YAML wants spaces is named by line and column."""
        got = problems("upstreams:\n\tapi: {}\n")
        self.assertEqual(got, ["line 2, column 1: not valid YAML: found character '\\t' that cannot start any token"])

    def test_controlCharacterNamesLineAndColumn(self) -> None:
        """A control character YAML refuses is a problem at its line and column, not a crash."""
        self.assertEqual(problems("upstreams:\n  a: \x07\n"), [
            "line 2, column 6: not valid YAML: special characters are not allowed"])

    def test_secondDocumentIsNamed(self) -> None:
        """A second YAML document (---) is refused where it starts, with the whole reason."""
        self.assertEqual(problems(MINIMAL + "---\nserver: {}\n"), [
            "line 7, column 1: not valid YAML: expected a single document in the stream, but found another document"])

    def test_repeatedKeyNamesItsPathAndBothLines(self) -> None:
        """A key written twice is an error naming the key path and both lines, not last-one-wins."""
        text = MINIMAL.replace("    upstream: api\n", "    name: api-route\n    upstream: api\n    upstream: api\n")
        self.assertEqual(problems(text), [
            "line 8, column 5: routes[0](api-route).upstream: is written twice, on line 7 and on line 8 "
            "(remove one: YAML would silently keep only the last)"])

    def test_repeatedTopLevelKeyAndNestedKeys(self) -> None:
        """Repeats are found at any depth, every one of them, beside the parser's own problems."""
        text = MINIMAL + "server:\n  timeouts: {idle: 5s, idle: 6s}\nserver: {}\n"
        got = problems(text)
        self.assertEqual(len(got), 2, got)
        self.assertIn("line 8, column 24: server.timeouts.idle: is written twice, on line 8 and on line 8", got[0])
        self.assertIn("line 9, column 1: server: is written twice, on line 7 and on line 9", got[1])

    def test_mergedValuesAreOverriddenByWrittenOnes(self) -> None:
        """A key beside a << merge overrides the merged one, as YAML says: not a repeat."""
        text = """\
upstreams:
  a:
    targets: [http://127.0.0.1:9000]
    timeouts: &t {connect: 1s, response: 2s}
  b:
    targets: [http://127.0.0.1:9001]
    timeouts: {<<: *t, response: 3s}
routes:
  - match: {path_prefix: /}
    upstream: a
"""
        b = parseConfig(text).upstreams["b"]
        self.assertEqual((b.timeouts.connect, b.timeouts.response), (1.0, 3.0))

    def test_namedRouteKeyPathsCarryTheName(self) -> None:
        """Every problem inside a named route is written routes[i](name).key, unknown keys included."""
        text = MINIMAL.replace("  - match: {path_prefix: /}\n    upstream: api\n",
                               "  - name: a\n    match: {path_prefix: /}\n    upstream: api\n    colour: blue\n"
                               "  - name: a\n    match: {path: /x, methd: [GET]}\n    upstream: api\n")
        got = problems(text)
        self.assertEqual(len(got), 3, got)
        self.assertIn("line 8: routes[0](a).colour: unknown key", got[0])
        self.assertIn("line 9: routes[1](a).name: route name 'a' is used twice", got[1])
        self.assertIn("line 10: routes[1](a).match.methd: unknown key", got[2])

    def test_unnamedRouteKeyPathIsTheIndex(self) -> None:
        """A route without a name is routes[i]."""
        self.assertIn("routes[0].upstream: no upstream named 'nope'",
                      problems(MINIMAL.replace("upstream: api", "upstream: nope"))[0])

    def test_listenPortIsChecked(self) -> None:
        """tcp:abc or tcp:80000 is refused by the parser, not by twistd at start-up."""
        for listen, port in (("tcp:abc", "abc"), ("tcp:80000:interface=127.0.0.1", "80000"),
                             ("ssl:port=99999:privateKey=k.pem", "99999")):
            got = problems(f"server:\n  listen: '{listen}'\n" + MINIMAL)
            self.assertEqual(len(got), 1, got)
            self.assertIn(f"line 2: server.listen: not a port number: '{port}'", got[0])
        got = problems("admin:\n  listen: tcp:99999:interface=127.0.0.1\n" + MINIMAL)
        self.assertIn("admin.listen: not a port number: '99999'", got[0])
        for listen in ("tcp:0", "tcp:8080:interface=127.0.0.1", "tcp6:8080:interface=\\:\\:1", "unix:/tmp/gw.sock",
                       "tcp:interface=127.0.0.1:port=8080"):
            parseConfig(f"server:\n  listen: '{listen}'\n" + MINIMAL)

    def test_listenOptionsAndTLSFilesAreChecked(self) -> None:
        """A listen string Twisted could not build (bad option, missing TLS key) is refused before start-up."""
        got = problems("server:\n  listen: 'tcp:8080:backlog=x'\n" + MINIMAL)
        self.assertEqual(len(got), 1, got)
        self.assertIn("line 2: server.listen: cannot listen on 'tcp:8080:backlog=x'", got[0])
        got = problems("server:\n  listen: 'ssl:8443:privateKey=/nonexistent/key.pem'\n" + MINIMAL)
        self.assertEqual(len(got), 1, got)
        self.assertIn("server.listen: cannot listen on 'ssl:8443:privateKey=/nonexistent/key.pem': "
                      "No such file or directory: /nonexistent/key.pem", got[0])

    def test_missingRequiredSections(self) -> None:
        """An empty file says upstreams and routes are required."""
        got = problems("")
        self.assertIn("upstreams: is required: at least one upstream", got)
        self.assertIn("routes: is required: at least one route", got)

    def test_upstreamsMayBeLeftOutOnlyWhenEveryRouteAnswersItself(self) -> None:
        """A redirector (every route a redirect or respond) needs no upstreams; one forwarding route does."""
        answers = ("routes:\n  - {name: https, match: {path_prefix: /}, redirect: {scheme: https}}\n"
                   "  - {name: robots, match: {path: /robots.txt}, respond: {body: x}}\n")
        config = parseConfig(answers)
        self.assertEqual((len(config.upstreams), [r.name for r in config.routes]), (0, ["https", "robots"]))
        forwarding = answers + "  - {name: api, match: {path_prefix: /api}, upstream: api}\n"
        got = problems(forwarding)
        self.assertIn("line 1: upstreams: is required: at least one upstream", got)

    def test_sharedRateLimitNeedsRedis(self) -> None:
        """shared: true without stores.redis is an error, not a silent local limit."""
        text = MINIMAL + "    rate_limit: {rate: 10/s, shared: true}\n"
        self.assertIn("routes[0].rate_limit.shared: needs stores.redis", problems(text)[0])

    def test_adminBeyondLoopbackNeedsAToken(self) -> None:
        """An admin listener on every interface without a token is refused."""
        self.assertIn("admin.listen", problems(MINIMAL + "admin:\n  listen: tcp:8090\n")[0])
        parseConfig(MINIMAL + "admin:\n  listen: tcp:8090\n  token: s3cret\n")
        self.assertIn("admin.token: is empty", problems(MINIMAL + "admin:\n  listen: tcp:8090\n  token: ' '\n")[0])

    def test_missingSecretFileIsNamed(self) -> None:
        """A secret_file that cannot be read is an error naming the key."""
        text = MINIMAL + "auth_policies:\n  p:\n    jwt: {algorithms: [HS256], secret_file: /nonexistent/secret}\n"
        self.assertIn("auth_policies.p.jwt.secret_file: cannot read", problems(text)[0])

    def test_yamlBooleanWordsStayKeys(self) -> None:
        """`on:` under retries is the key 'on', not YAML 1.1's True."""
        c = parseConfig(MINIMAL.replace("targets:", "retries: {on: [503], attempts: 1}\n    targets:"))
        self.assertEqual(c.upstreams["api"].retries.on, (503,))


class UnitTests(SynchronousTestCase):
    def test_durations(self) -> None:
        """250ms, 5s, 1m, 1h and bare seconds."""
        self.assertEqual([duration(x) for x in ("250ms", "5s", "1m", "1h", 3, "1.5s")], [0.25, 5, 60, 3600, 3, 1.5])

    def test_sizes(self) -> None:
        """KiB/MiB are binary, KB/MB decimal."""
        self.assertEqual([size(x) for x in ("512KiB", "10MiB", "1KB", 42)], [524288, 10485760, 1000, 42])

    def test_rates(self) -> None:
        """100/s and 600/m."""
        self.assertEqual(rate("100/s"), Rate(100, 1.0))
        self.assertEqual(rate("600/m").perSecond, 10.0)


class EnvironmentTests(SynchronousTestCase):
    def test_environmentAloneGivesOneUpstream(self) -> None:
        """BACKEND_URL, GATEWAY_PORT, LOG_LEVEL, REQUEST_TIMEOUT make a whole gateway."""
        c = configFromEnvironment({"BACKEND_URL": "http://10.1.2.3:3000", "GATEWAY_PORT": "9000",
                                   "LOG_LEVEL": "debug", "REQUEST_TIMEOUT": "10s"})
        self.assertEqual(c.server.listen, "tcp:9000")
        self.assertEqual(c.logging.level, "debug")
        up = c.upstreams["backend"]
        self.assertEqual(up.targets[0].url, "http://10.1.2.3:3000")
        self.assertEqual(up.timeouts.response, 10.0)
        assert up.health.active is not None
        self.assertEqual(up.health.active.path, "/health")

    def test_badEnvironmentNamesTheVariable(self) -> None:
        """A bad BACKEND_URL is reported under that name."""
        with self.assertRaises(ConfigError) as cm:
            configFromEnvironment({"BACKEND_URL": "nope"})
        self.assertIn("BACKEND_URL", str(cm.exception))

    def test_environmentOverridesAFile(self) -> None:
        """GATEWAY_PORT keeps the listen options; LOG_LEVEL and REQUEST_TIMEOUT override too."""
        base = parseConfig("server:\n  listen: tcp:8080:interface=127.0.0.1\n" + MINIMAL)
        c = applyEnvironment(base, {"GATEWAY_PORT": "9999", "LOG_LEVEL": "warning", "REQUEST_TIMEOUT": "3s"})
        self.assertEqual(c.server.listen, "tcp:9999:interface=127.0.0.1")
        self.assertEqual(c.logging.level, "warn")
        self.assertEqual(c.upstreams["api"].timeouts.response, 3.0)

    def test_badGatewayPortNamesTheVariable(self) -> None:
        """GATEWAY_PORT=abc or 80000 is a config error naming the variable, with or without a file."""
        base = parseConfig(MINIMAL)
        for value in ("abc", "80000", "-1", ""):
            with self.assertRaises(ConfigError) as cm:
                configFromEnvironment({"GATEWAY_PORT": value})
            self.assertEqual([str(p) for p in cm.exception.problems],
                             [f"GATEWAY_PORT: not a port number: {value!r} (write a number from 0 to 65535)"])
            with self.assertRaises(ConfigError) as cm:
                applyEnvironment(base, {"GATEWAY_PORT": value})
            self.assertIn("GATEWAY_PORT: not a port number", str(cm.exception))

    def test_everyBadVariableIsNamedAtOnce(self) -> None:
        """A bad port and a bad backend are both reported."""
        with self.assertRaises(ConfigError) as cm:
            configFromEnvironment({"GATEWAY_PORT": "abc", "BACKEND_URL": "nope"})
        self.assertEqual(sorted(p.path for p in cm.exception.problems), ["BACKEND_URL", "GATEWAY_PORT"])

    def test_relativePathsAreRelativeToTheConfigFile(self) -> None:
        """secret_file is read from the config file's folder, not the working directory."""
        with tempfile.TemporaryDirectory() as d:
            Path(d, "s.secret").write_text("topsecret\n")
            Path(d, "gw.yaml").write_text(MINIMAL + "auth_policies:\n  p:\n    jwt: {algorithms: [HS256], secret_file: s.secret}\n")
            c = loadConfig(Path(d, "gw.yaml"), environ={})
            jwt = c.auth_policies["p"].jwt
            assert jwt is not None
            self.assertEqual(jwt.secret, b"topsecret")
