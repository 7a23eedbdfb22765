"""
A/B: the gateway of another revision against the working tree, interleaved.

On a shared machine the CPU cost of a request drifts by more than most single
optimisations save, so two runs minutes apart cannot tell them apart.  This
runs the gateway from REV (exported with git archive) and from the working
tree alternately, against the same origins, for several rounds, and prints
CPU microseconds per request for each run and the median of each side.

python bench/compare.py [--base HEAD~1] [--work REV] [--rounds 4] [--duration 6] [--connections 50] [--routes 20]
                       [--workers N]

With C{--workers N} both sides run C{server.workers: N}, unpinned, and the
CPU counted is the supervisor's and all its workers': what the workers'
sharing (the fleet's hub, leased rate-limit tokens) costs per request.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402


def export(rev: str, into: Path) -> None:
    # The plugin lived in a top-level twisted/ before it moved under src/: take whichever the revision has.
    present = subprocess.run(["git", "-C", str(run.REPO), "ls-tree", "--name-only", rev, "src", "twisted"],
                             capture_output=True, check=True, text=True).stdout.split()
    archive = subprocess.run(["git", "-C", str(run.REPO), "archive", rev, *present],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default="HEAD~1", help="the revision to compare with")
    parser.add_argument("--work", default=None, help="a revision instead of the working tree")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=int, default=6)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--routes", type=int, default=20)
    parser.add_argument("--size", type=int, default=13)
    parser.add_argument("--workers", type=int, default=1, help="server.workers on both sides (unpinned when > 1)")
    args = parser.parse_args()
    wrk = run.ensureWrk()
    base = Path(tempfile.mkdtemp(prefix="txgw-base-"))
    work = Path(tempfile.mkdtemp(prefix="txgw-work-"))
    results: dict[str, list[dict[str, float]]] = {"base": [], "work": []}
    try:
        export(args.base, base)
        if args.work is not None:
            export(args.work, work)
        trees = {"base": base, "work": work if args.work is not None else run.REPO}
        with run.origins(args.size, 0.0) as targets:
            for i in range(args.rounds):
                # Alternate which side goes first, so drift within a round cancels out.
                for side in (("base", "work") if i % 2 == 0 else ("work", "base")):
                    tmp = Path(tempfile.mkdtemp(prefix="txgw-bench-"))
                    try:
                        cpu = run.PROXY_CPU if args.workers == 1 else None
                        gw = run.Gateway(tmp, targets, args.routes, tree=trees[side], workers=args.workers, cpu=cpu)
                        try:
                            r = run.measure(wrk, gw, gw.url + run.PATH, args.connections, args.duration)
                        finally:
                            gw.stop()
                    finally:
                        shutil.rmtree(tmp, ignore_errors=True)
                    results[side].append(r)
                    print(f"round {i + 1} {side:4}  {r['cpu_us_per_request']:6.1f} us/request  "
                          f"{r['rps']:7.0f} req/s  p99 {r['p99_ms']:.2f} ms", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    med = {side: statistics.median(r["cpu_us_per_request"] for r in rs) for side, rs in results.items()}
    p99 = {side: statistics.median(r["p99_ms"] for r in rs) for side, rs in results.items()}
    name = args.work or "working tree"
    print(f"\nmedian CPU us/request: {args.base} {med['base']:.1f}, {name} {med['work']:.1f} "
          f"({med['work'] - med['base']:+.1f}, {100 * (med['work'] / med['base'] - 1):+.1f}%)")
    print(f"median p99 ms: {args.base} {p99['base']:.2f}, {name} {p99['work']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
