"""
Print setup.cfg's requirements (install_requires and the test extra) without
their version bounds, one argument each: `make test-latest` installs the
newest release of each, whatever setup.cfg allows.
"""

import configparser
import re
from pathlib import Path

config = configparser.ConfigParser()
config.read(Path(__file__).resolve().parents[1] / "setup.cfg")
lines = config["options"]["install_requires"].splitlines() + config["options.extras_require"]["test"].splitlines()
print(" ".join(re.split(r"[<>=!~;\s]", line.strip(), maxsplit=1)[0] for line in lines if line.strip()))
