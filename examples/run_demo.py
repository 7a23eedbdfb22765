"""
`make run`: the bundled example gateway in front of four local demo backends.

Starts examples/demo_backend.py on 127.0.0.1:9101-9104 (the targets named in
examples/gw.yaml), then `twistd -n txgateway --config examples/gw.yaml` in
the foreground, prints what to try, and stops everything on Ctrl-C.  If a
Redis server is installed it is started too, so the shared rate limit of the
`batch` route is really shared; without one that route falls back to a local
limit, as it would in production with Redis down.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent

TRY = """
txgateway is up on http://127.0.0.1:8080 (admin and status page: http://127.0.0.1:8090/)

Try:
  curl -i http://127.0.0.1:8080/health
  curl -i -X POST http://127.0.0.1:8080/predict -H 'Content-Type: application/json' -d '{"text":"Twisted is fast!"}'
  curl -i -H 'Host: users.example.com' http://127.0.0.1:8080/api/v1/users     # cached, see Cache-Status
  curl -i -X POST http://127.0.0.1:8080/batch_predict -d '{"texts":["a"]}'     # 401: needs an API key
  curl -i -X POST http://127.0.0.1:8080/batch_predict -H 'X-API-Key: alice-demo-key' -d '{"texts":["a"]}'
  curl -s http://127.0.0.1:8080/metrics | grep txgateway_
  .venv/bin/txgateway check examples/gw.yaml --explain http://users.example.com/api/v1/x

Ctrl-C stops the gateway and the demo backends.
"""


def main() -> int:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]), PYTHONUNBUFFERED="1")
    children: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="txgw-demo-"))

    def stopAll(*_: object) -> None:
        for p in reversed(children):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in children:
            try:
                p.wait(35)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    def terminate(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    try:
        redis = shutil.which("redis-server")
        if redis and not _listening(6379):
            children.append(subprocess.Popen([redis, "--port", "6379", "--bind", "127.0.0.1", "--save", "",
                                              "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL))
        for port, name in ((9101, "inference-a"), (9102, "inference-b"), (9103, "users-a"), (9104, "users-b")):
            children.append(subprocess.Popen([sys.executable, str(HERE / "demo_backend.py"), str(port), name], env=env))
        gateway = subprocess.Popen([str(BIN / "twistd"), "-n", "--pidfile=", "--logfile=-", "txgateway",
                                    "--config", str(HERE / "gw.yaml")], env=env, cwd=HERE)
        children.append(gateway)
        if _waitReady(gateway):
            print(TRY, flush=True)
        return gateway.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stopAll()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _waitReady(gateway: subprocess.Popen[bytes], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and gateway.poll() is None:
        try:
            with urllib.request.urlopen("http://127.0.0.1:8080/ready", timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.1)
    return False


if __name__ == "__main__":
    raise SystemExit(main())
