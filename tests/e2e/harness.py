"""
End-to-end harness: the real C{twistd -n txgateway} process against real origin processes.

Tests here are synchronous: the test is the client, talking over real
sockets to processes with their own reactors, so they run the same under
trial and pytest.  Waiting is always "poll until a condition holds or a
deadline passes", never a sleep standing in for a timing assumption.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BACKEND = Path(__file__).resolve().parent / "backend.py"
GRPC_SERVER = Path(__file__).resolve().parent / "grpcserver.py"


_DEAD: list[socket.socket] = []
atexit.register(lambda: [s.close() for s in _DEAD])


def deadPort() -> int:
    """
    A loopback port that refuses connections for the rest of the test run.

    The port stays bound, never listening, by this process, so nothing else
    can start listening on it (a port merely found free can be taken by the
    time a test relies on it being dead).
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _DEAD.append(s)
    return int(s.getsockname()[1])


def namedPort() -> int:
    """
    A free loopback port for the few tests that must name a port before a
    process binds it (C{GATEWAY_PORT}); pair with a retry on bind failure.

    Chosen below the kernel's ephemeral range, which is where C{bind(0)} and
    every outgoing connection take their ports from: a port found free there
    is what the test suite's own connections grab next.
    """
    low = 32768
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    for _ in range(100):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below the ephemeral range")


_LISTENING = re.compile(r'txgateway listening on ([^\s"]+)')
_ADMIN_LISTENING = re.compile(r'admin listening on ([^\s"]+)')
_BIND_FAILED = re.compile(r"cannot listen|address already in use|EADDRINUSE", re.I)


def _portOf(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def listeningPort(logText: str) -> int | None:
    """The port in a gateway log's C{txgateway listening on HOST:PORT} line, if it has one yet."""
    m = _LISTENING.search(logText)
    return None if m is None else _portOf(m.group(1))


def waitFor(condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll C{condition} until it returns something true; fail after C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except (OSError, http.client.HTTPException):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def childEnv(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BACKEND_URL", "GATEWAY_PORT", "LOG_LEVEL", "REQUEST_TIMEOUT")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


class Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def headerList(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        import json

        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:200]!r}>"


def request(port: int, method: str = "GET", path: str = "/", headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
            body: bytes | None = None, timeout: float = 10.0) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        items = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
        if not any(k.lower() == "host" for k, _ in items):
            conn.putheader("Host", f"127.0.0.1:{port}")
        for k, v in items:
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, resp.getheaders(), data)
    finally:
        conn.close()


def readAll(s: socket.socket) -> bytes:
    """Everything the server sends until it closes or goes quiet; the socket is closed after."""
    chunks = []
    with s:
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError:
            pass
    return b"".join(chunks)


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes as they are; return everything read until the server closes or goes quiet."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    return readAll(s)


def echoed(response: Response | bytes) -> dict[str, Any]:
    """The JSON that tests/e2e/backend.py's /echo returns, plus C{h}: lower-cased name -> values."""
    data: dict[str, Any] = json.loads(response.body if isinstance(response, Response) else response)
    data["h"] = {}
    for k, v in data["headers"]:
        data["h"].setdefault(k.lower(), []).append(v)
    return data


_SHARED: dict[str, Any] = {}


def shared(key: str, start: Callable[[list[Any]], Any]) -> Any:
    """
    Processes started once per test run and stopped at exit.

    C{start(started)} appends each Backend or GatewayProcess to C{started} as
    it starts it; the cleanup is registered before, so a gateway that fails to
    come up does not leave its origins running.
    """
    if key not in _SHARED:
        started: list[Any] = []
        atexit.register(_stopAll, started)
        _SHARED[key] = start(started)
    return _SHARED[key]


def _stopAll(started: list[Any]) -> None:
    for thing in reversed(started):
        thing.stop()
        if isinstance(thing, GatewayProcess):
            thing.cleanup()


def readyPort(proc: subprocess.Popen[bytes], what: str) -> int:
    """The port a helper process names on its first line, C{ready PORT}, once it listens."""
    assert proc.stdout is not None
    if not select.select([proc.stdout], [], [], 15)[0]:
        raise AssertionError(f"{what} said nothing within 15s")
    first = proc.stdout.readline().decode(errors="replace")
    if not first.startswith("ready "):
        raise AssertionError(f"{what} did not start: {first}")
    return int(first.split()[1])


def stopOrigin(proc: subprocess.Popen[bytes] | None) -> None:
    """Kill an origin process started by L{startOrigin} (if still running) and close its pipe."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def startOrigin(args: Sequence[str], name: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start an origin script (C{python ARGS}) that prints C{ready PORT} once it listens: the process and port."""
    proc = subprocess.Popen([sys.executable, *args], env=childEnv(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        return proc, readyPort(proc, f"origin {name}")
    except AssertionError:
        proc.kill()
        raise


class GrpcServer:
    """A grpcio test service process (tests/e2e/grpcserver.py)."""

    def __init__(self, name: str = "g1") -> None:
        self.name = name
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GrpcServer:
        self.proc, self.port = startOrigin([str(GRPC_SERVER), "0", self.name], self.name)
        return self

    def stop(self) -> None:
        stopOrigin(self.proc)


class Backend:
    """One origin process (tests/e2e/backend.py), on a port the OS picks unless one is given."""

    def __init__(self, name: str = "b1", port: int | None = None, interface: str = "127.0.0.1") -> None:
        self.name = name
        self.port = port or 0
        self.interface = interface
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        assert self.port, "the backend's port is known once it has started"
        return f"http://{self.interface}:{self.port}"

    def start(self) -> Backend:
        self.proc, self.port = startOrigin([str(BACKEND), str(self.port), self.name, self.interface], self.name)
        waitFor(lambda: self.request("GET", "/count", timeout=1).status == 200, what=f"backend {self.name}")
        return self

    def stop(self) -> None:
        stopOrigin(self.proc)

    def request(self, method: str, path: str, timeout: float = 10.0) -> Response:
        conn = http.client.HTTPConnection(self.interface, self.port, timeout=timeout)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return Response(resp.status, resp.getheaders(), resp.read())
        finally:
            conn.close()

    def count(self) -> int:
        return int(self.request("GET", "/count").body)


class GatewayProcess:
    """The real gateway: C{twistd -n txgateway --config gw.yaml} in a temp dir."""

    def __init__(self, config: str, files: Mapping[str, str | bytes] | None = None,
                 env: Mapping[str, str] | None = None, args: Sequence[str] = (), port: int | None = None,
                 useConfigFile: bool = True, logFile: str | None = None) -> None:
        # "{port}" in the config becomes 0 (the OS picks) unless a port is
        # named; either way self.port is read back from the gateway's log
        # line "txgateway listening on HOST:PORT" once it has bound.
        # With logFile, twistd writes its log there (--logfile=FILE, in the
        # temp dir) as operators run it, rather than to stdout (--logfile=-);
        # self.log() reads that file, and stdout/stderr go to output.log.
        self.port = port or 0
        self.adminPort = 0
        self.config = config.replace("{port}", str(self.port))
        self.files = files or {}
        self.env = env
        self.args = list(args)
        self.useConfigFile = useConfigFile
        self.dir = Path(tempfile.mkdtemp(prefix="txgw-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._terminating = False
        self.logFile = logFile
        self.logPath = self.dir / (logFile or "gateway.log")

    @property
    def configPath(self) -> Path:
        return self.dir / "gw.yaml"

    def start(self, waitReady: bool = True) -> GatewayProcess:
        self.configPath.write_text(self.config)
        for name, content in self.files.items():
            p = self.dir / name
            if isinstance(content, bytes):
                p.write_bytes(content)
            else:
                p.write_text(content)
        # The twistd script beside this interpreter: exactly what operators run.
        logArg = f"--logfile={self.logPath}" if self.logFile else "--logfile=-"
        cmd = [str(Path(sys.executable).parent / "twistd"), "-n", "--pidfile=", logArg, "txgateway"]
        if self.useConfigFile:
            cmd += ["--config", str(self.configPath)]
        cmd += self.args
        self._log = open(self.dir / "output.log" if self.logFile else self.logPath, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=self.dir, env=childEnv(self.env), stdout=self._log, stderr=subprocess.STDOUT)
        if waitReady:
            self.waitReady()
        return self

    def waitListening(self) -> int:
        """Wait for the log line naming the bound address; the port (also in C{self.port})."""
        def bound() -> int | None:
            text = self.log()
            m = _LISTENING.search(text)
            if m is None and self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{text}")
            if m is None:
                return None
            admin = _ADMIN_LISTENING.search(text)
            if admin is not None:
                self.adminPort = _portOf(admin.group(1))
            return _portOf(m.group(1))

        self.port = waitFor(bound, what="the gateway's 'listening on' log line")
        return self.port

    def waitReady(self) -> None:
        self.waitListening()

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            return request(self.port, "GET", "/ready", timeout=1).status == 200

        waitFor(ready, what="gateway /ready")
        if re.search(r"^admin:", self.config, re.M) and not self.adminPort:
            self.adminPort = waitFor(lambda: (m := _ADMIN_LISTENING.search(self.log())) and _portOf(m.group(1)),
                                     what="the admin listener's log line")

    def request(self, method: str = "GET", path: str = "/", headers: Any = None, body: bytes | None = None,
                timeout: float = 10.0) -> Response:
        return request(self.port, method, path, headers, body, timeout)

    def log(self) -> str:
        """The gateway's log so far (with a logFile, what reached stdout/stderr after it)."""
        paths = [self.logPath] + ([self.dir / "output.log"] if self.logFile else [])
        texts = []
        for path in paths:
            try:
                texts.append(path.read_text(errors="replace"))
            except OSError:
                pass
        return "".join(texts)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        if sig == signal.SIGTERM:
            self._terminating = True
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait for exit, return the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            if not self._terminating:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def startOnNamedPort(make: Callable[[int], GatewayProcess], attempts: int = 5) -> tuple[GatewayProcess, int]:
    """
    Start C{make(port)} on a port named up front (see L{namedPort}); the
    gateway and that port.  Another port is tried when the gateway could not
    bind the one it was given.
    """
    for _ in range(attempts):
        port = namedPort()
        gw = make(port)
        try:
            return gw.start(), port
        except AssertionError:
            text = gw.log()
            gw.cleanup()
            if not _BIND_FAILED.search(text):
                raise
    raise AssertionError(f"no named port could be bound in {attempts} attempts")


def simpleConfig(targets: Sequence[str], extra: str = "", upstreamExtra: str = "", routeExtra: str = "") -> str:
    """A one-upstream, one-route config; C{extra} is appended at top level."""
    targetLines = "\n".join(f"      - {t}" for t in targets)
    return f"""\
server:
  listen: "tcp:{{port}}:interface=127.0.0.1"
  timeouts: {{drain: 10s}}
logging:
  level: info
upstreams:
  app:
    targets:
{targetLines}
{upstreamExtra}
routes:
  - name: all
    match: {{path_prefix: /}}
    upstream: app
{routeExtra}
{extra}
"""


def adminBlock(token: str | None = None) -> str:
    """An admin listener on a port the OS picks (the harness reads it back as C{adminPort})."""
    text = 'admin:\n  listen: "tcp:0:interface=127.0.0.1"\n'
    return text + (f"  token: {token}\n" if token else "")


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def headless(browser: str, profile: Path) -> list[str]:
    """The command line of a headless Chromium that fetches nothing of its own, with its profile in C{profile}."""
    return [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
            "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
            "--window-size=1280,1000", f"--user-data-dir={profile}", "--virtual-time-budget=4000"]


class Traffic:
    """Requests one after another from a thread; every answer is kept as (status, X-Backend)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.results: list[tuple[int, str | None]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                resp = request(self.port, "GET", "/echo", timeout=10)
                self.results.append((resp.status, resp.header("X-Backend")))
            except Exception as e:  # a client-side failure is a failed request too
                self.errors.append(repr(e))
                self.results.append((0, None))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def mark(self) -> int:
        return len(self.results)

    def settled(self) -> int:
        """
        A mark after which every request was sent after this call: the one
        that may be in flight now is answered (and skipped) first.
        """
        mark = self.mark() + 1
        waitFor(lambda: len(self.results) >= mark, what="the request in flight to finish")
        return mark

    def since(self, mark: int) -> list[tuple[int, str | None]]:
        return self.results[mark:]
