"""
The sides bench/run.py measures, each a process (or nginx's master and worker)
pinned to PROXY_CPU in front of the same three origins:

  origin      a fourth bench origin, hit directly: the ceiling
  txgateway   twistd with the realistic config (every feature on, none triggering)
  reference   bench/reference_proxy.py, the bare Twisted Agent proxy
  aiohttp     bench/aiohttp_proxy.py, the hand-written aiohttp + uvloop proxy
  nginx       1 worker, proxy_pass to an upstream block with keepalive
  haproxy     1 thread (nbthread 1), http-reuse always

and, when named: txgateway-uvloop, the same gateway on Twisted's asyncio
reactor over uvloop (bench/uvloop_twistd.py).

The peers are configured as their users would for a fast reverse proxy and no
further: keep-alive both ways, no logging, X-Forwarded-For added, round robin.
Keep-alive request caps are lifted (nginx closes a client connection every
1,000 requests by default) because no Python side has one.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from procs import BIN, HERE, LOAD_CPU, PROXY_CPU, REPO, Proc, ensureDebian, ensurePython, freePort, waitFor200

PATH = "/svc7/item"
SIDES = ("origin", "txgateway", "reference", "aiohttp", "nginx", "haproxy")
# Measured only when named in --sides: the gateway on Twisted's asyncio reactor over uvloop.
OPTIONAL_SIDES = ("txgateway-uvloop",)


@contextmanager
def origins(size: int, delay: float, cpu: str | None = LOAD_CPU, json: bool = False) -> Iterator[list[str]]:
    """Three bench origins (answering JSON if C{json}); yields their URLs."""
    procs = []
    try:
        ports = [freePort() for _ in range(3)]
        for p in ports:
            procs.append(Proc([sys.executable, str(HERE / "backend.py"), str(p), "--size", str(size),
                               "--delay", str(delay), *(["--json"] if json else [])], cpu=cpu))
        for p, proc in zip(ports, procs, strict=True):
            waitFor200(p, "/", proc)
        yield [f"http://127.0.0.1:{p}" for p in ports]
    finally:
        for proc in procs:
            proc.stop()


class Origin(Proc):
    """One more origin, pinned where the proxies are: what the machine does with no proxy at all."""

    def __init__(self, size: int, delay: float, cpu: str | None = PROXY_CPU) -> None:
        self.port = freePort()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__([sys.executable, str(HERE / "backend.py"), str(self.port), "--size", str(size),
                          "--delay", str(delay)], cpu=cpu)
        self.coldStart = waitFor200(self.port, PATH, self)


def gatewayConfig(port: int, targets: list[str], routes: int, logFile: Path, workers: int = 1,
                  compress: bool = False) -> str:
    """The realistic config: every feature the issue names, none of them triggering."""
    lines = [
        "server:",
        f'  listen: "tcp:{port}:interface=127.0.0.1:backlog=2048"',
        f"  workers: {workers}",
        "  timeouts: {drain: 5s}",
        "  max_connections_per_ip: 0",  # 1,000 clients from one address are the point of the slow case
        "logging:",
        "  level: info",
        "  access_log: true",
        f"  access_log_file: {logFile}",
        "upstreams:",
        "  app:",
        "    balancer: least_connections",
        "    targets: [" + ", ".join(targets) + "]",
        "    pool: {max_per_target: 1000}",
        "routes:",
    ]
    for i in range(routes - 1):
        lines += [f"  - name: r{i}", f"    match: {{path_prefix: /svc{i}}}", "    upstream: app",
                  "    rate_limit: {rate: 1000000/s, burst: 1000000}"]
    lines += ["  - name: default", "    match: {path_prefix: /}", "    upstream: app",
              "    rate_limit: {rate: 1000000/s, burst: 1000000}"]
    if compress:  # gzip only, at its default level (5), as nginx is set up in the same case
        lines = [x + "\n    compress: {encodings: [gzip], types: [application/json]}" if x.startswith("    upstream:")
                 else x for x in lines]
    return "\n".join(lines) + "\n"


class Gateway(Proc):
    """txgateway under twistd with the realistic config, in its own temp directory."""

    def __init__(self, tmp: Path, targets: list[str], routes: int, workers: int = 1,
                 cpu: str | None = PROXY_CPU, tree: Path = REPO, compress: bool = False,
                 uvloop: bool = False) -> None:
        self.port = freePort()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "gw.yaml"
        self.workers = workers
        config.write_text(gatewayConfig(self.port, targets, routes, tmp / "access.log", workers, compress))
        twistd = [sys.executable, str(HERE / "uvloop_twistd.py")] if uvloop else [str(BIN / "twistd")]
        super().__init__([*twistd, "-n", "--pidfile=", "--logfile=/dev/null", "txgateway",
                          "--config", str(config)], cpu=cpu, cwd=tmp, tree=tree)
        self.coldStart = waitFor200(self.port, PATH, self)


class Reference(Proc):
    def __init__(self, targets: list[str], cpu: str | None = PROXY_CPU) -> None:
        self.port = freePort()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__([sys.executable, str(HERE / "reference_proxy.py"), str(self.port), *targets], cpu=cpu)
        self.coldStart = waitFor200(self.port, PATH, self)


class AiohttpProxy(Proc):
    def __init__(self, targets: list[str], cpu: str | None = PROXY_CPU) -> None:
        self.port = freePort()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__([sys.executable, str(HERE / "aiohttp_proxy.py"), str(self.port), *targets], cpu=cpu)
        self.coldStart = waitFor200(self.port, PATH, self)


def _hostPorts(targets: list[str]) -> list[str]:
    return [t.removeprefix("http://").rstrip("/") for t in targets]


# nginx's gzip as one would switch it on for a JSON API, at the level txgateway's gzip uses.
NGINX_GZIP = """\
  gzip on;
  gzip_comp_level 5;
  gzip_min_length 1024;
  gzip_proxied any;
  gzip_types application/json;
"""


def nginxConfig(tmp: Path, port: int, targets: list[str], gzip: bool = False) -> str:
    """One worker; 64 KiB responses fit its buffers (nothing goes through a temp file)."""
    servers = "".join(f"    server {t};\n" for t in _hostPorts(targets))
    temps = "".join(f"  {kind}_temp_path {tmp / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                         "scgi"))
    return f"""\
worker_processes 1;
daemon off;
master_process on;
pid {tmp / "nginx.pid"};
error_log {tmp / "error.log"} error;
worker_rlimit_nofile 16384;
events {{
  worker_connections 8192;
}}
http {{
  access_log off;
{NGINX_GZIP if gzip else ""}\
{temps}\
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  upstream app {{
{servers}\
    keepalive 1024;
    keepalive_requests 1000000;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=2048;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_buffer_size 16k;
      proxy_buffers 8 16k;
      proxy_max_temp_file_size 0;
    }}
  }}
}}
"""


class Nginx(Proc):
    def __init__(self, tmp: Path, targets: list[str], cpu: str | None = PROXY_CPU, gzip: bool = False) -> None:
        self.port = freePort()
        self.url = f"http://127.0.0.1:{self.port}"
        here = tmp / ("nginx-gzip" if gzip else "nginx")
        here.mkdir()
        for d in (tmp, here):
            d.chmod(0o755)  # the worker runs as nobody and may need its temp paths
        (here / "nginx.conf").write_text(nginxConfig(here, self.port, targets, gzip))
        binary = ensureDebian("nginx", ["nginx-light", "nginx"])
        super().__init__([binary, "-p", f"{here}/", "-c", str(here / "nginx.conf"), "-e", str(here / "error.log")],
                         cpu=cpu, cwd=here, errlog=here / "stderr.log")
        self.coldStart = waitFor200(self.port, PATH, self)


def haproxyConfig(port: int, targets: list[str]) -> str:
    servers = "".join(f"  server s{i} {t}\n" for i, t in enumerate(_hostPorts(targets)))
    return f"""\
global
  nbthread 1
  maxconn 8192

defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 75s
  option http-keep-alive
  option forwardfor
  http-reuse always

frontend gateway
  bind 127.0.0.1:{port}
  default_backend app

backend app
  balance roundrobin
{servers}"""


class Haproxy(Proc):
    def __init__(self, tmp: Path, targets: list[str], cpu: str | None = PROXY_CPU) -> None:
        self.port = freePort()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "haproxy.cfg"
        config.write_text(haproxyConfig(self.port, targets))
        binary = ensureDebian("haproxy", ["haproxy"])
        # -db: in the foreground, no daemon, so the pid is HAProxy's own.
        super().__init__([binary, "-db", "-f", str(config)], cpu=cpu, cwd=tmp, errlog=tmp / "haproxy.log")
        self.coldStart = waitFor200(self.port, PATH, self)


def ensureSides(names: list[str]) -> None:
    """Install what the chosen sides need, before any measurement starts."""
    if "aiohttp" in names:
        ensurePython(["aiohttp", "uvloop"])
    if "txgateway-uvloop" in names:
        ensurePython(["uvloop"])
    if "nginx" in names:
        ensureDebian("nginx", ["nginx-light", "nginx"])
    if "haproxy" in names:
        ensureDebian("haproxy", ["haproxy"])


def startSide(name: str, tmp: Path, targets: list[str], size: int, delay: float, routes: int) -> Proc:
    """Start side C{name} in front of C{targets}; it answers 200 for PATH on return."""
    if name == "origin":
        return Origin(size, delay)
    if name in ("txgateway", "txgateway-gzip", "txgateway-uvloop"):
        gwTmp = tmp / name
        gwTmp.mkdir()
        return Gateway(gwTmp, targets, routes, compress=name == "txgateway-gzip", uvloop=name == "txgateway-uvloop")
    if name == "reference":
        return Reference(targets)
    if name == "aiohttp":
        return AiohttpProxy(targets)
    if name == "nginx":
        return Nginx(tmp, targets)
    if name == "nginx-gzip":
        return Nginx(tmp, targets, gzip=True)
    if name == "haproxy":
        return Haproxy(tmp, targets)
    raise ValueError(name)
