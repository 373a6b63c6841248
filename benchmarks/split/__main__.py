"""``python -m benchmarks.split``: the benchmark (or, with ``--worker``, one device process)."""

from __future__ import annotations

import sys
import time

from .cli import main

if __name__ == "__main__":
    t0 = time.time()
    code = main()
    if not any(a == "--worker" for a in sys.argv):
        print(f"benchmark took {time.time() - t0:.0f} s")
    sys.exit(code)
