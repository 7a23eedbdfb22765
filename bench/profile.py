"""
Profile txgateway under the benchmark's load with py-spy.

Starts the bench origins and the gateway with the realistic config (the
same one bench/run.py measures), drives it with wrk and records the
gateway with py-spy for the whole run.  Writes collapsed stacks (and a
flame graph when asked) and prints the functions with the most samples,
self and inclusive, so a profile can be read in a terminal.

python bench/profile.py [--duration 10] [--connections 50] [--routes 20] [--out stacks.txt]
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402

_LINE = re.compile(r":\d+\)$")


def summarise(stacks: Path, top: int) -> None:
    selfCount: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        total += count
        # One entry per function, not per line: "f (file.py:12)" -> "f (file.py)".
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        selfCount[frames[-1]] += count
        for f in set(frames):
            inclusive[f] += count
    print(f"{total} samples")
    print("\n-- self")
    for f, n in selfCount.most_common(top):
        print(f"{100 * n / total:5.1f}%  {f}")
    print("\n-- inclusive")
    for f, n in inclusive.most_common(top):
        print(f"{100 * n / total:5.1f}%  {f}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--routes", type=int, default=20)
    parser.add_argument("--size", type=int, default=13)
    parser.add_argument("--out", default="bench/results/profile.txt", help="collapsed stacks")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--native", action="store_true", help="include native (C) frames")
    args = parser.parse_args()
    pyspy = shutil.which("py-spy") or str(run.BIN / "py-spy")
    wrk = run.ensureWrk()
    tmp = Path(tempfile.mkdtemp(prefix="txgw-profile-"))
    with run.origins(args.size, 0.0) as targets:
        gw = run.Gateway(tmp, targets, args.routes)
        try:
            url = gw.url + run.PATH
            run.wrkRun(wrk, url, args.connections, 2)
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            cmd = [pyspy, "record", "--format", "raw", "-o", str(out), "--pid", str(gw.pid),
                   "--duration", str(args.duration), "--rate", "250"]
            if args.native:
                cmd.append("--native")
            spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            result = run.wrkRun(wrk, url, args.connections, args.duration)
            _, err = spy.communicate(timeout=args.duration + 30)
            if spy.returncode:
                print(err, file=sys.stderr)
                return 1
            print(f"{result['rps']:.0f} req/s under the profiler (sampling slows it down)")
        finally:
            gw.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    summarise(out, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
