"""
CPU instructions per request, counted by valgrind: an A/B a busy machine does not disturb.

bench/inproc.py times the request path in one process; on a shared machine
its best-of figure still moves by a few percent, more than most single
changes.  This runs the same in-process load under valgrind's callgrind
twice, with C{--small} and C{--large} requests, and divides the difference
in instructions executed by the difference in requests: start-up, imports
and warm-up cancel out, and the count does not depend on what else the
machine is doing.  Instructions are not time (a cache miss costs more than
an add), but a change that removes work shows as fewer of them, reliably to
about 0.5 %.

python bench/instructions.py [--src PATH ...] [--side gateway|reference] [--small 500] [--large 1500]

Each C{--src} is a tree's C{src} directory (another revision's, exported
with C{git archive}); without one, this checkout's.  Needs valgrind
(C{apt-get install valgrind}); each tree takes about a minute.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
_COLLECTED = re.compile(r"Collected : (\d+)")


def instructions(src: Path, side: str, requests: int) -> int:
    """Instructions valgrind counted for one whole inproc run of C{requests} requests (one round)."""
    env = dict(os.environ, PYTHONPATH=str(src))
    run = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         str(HERE / "inproc.py"), "--side", side, "--rounds", "1", "--requests", str(requests)],
        env=env, capture_output=True, text=True, check=True)
    found = _COLLECTED.search(run.stderr)
    if found is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{run.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--src", action="append", type=Path, help="a tree's src directory (repeatable)")
    parser.add_argument("--side", default="gateway", choices=("gateway", "reference"))
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--large", type=int, default=1500)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    for src in args.src or [HERE.parent / "src"]:
        small = instructions(src, args.side, args.small)
        large = instructions(src, args.side, args.large)
        print(f"{src}: {(large - small) / (args.large - args.small):,.0f} instructions a request ({args.side})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
