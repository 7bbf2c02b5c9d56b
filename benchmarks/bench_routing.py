"""Run the routing benchmark; the same as ``seqr bench routing`` with the same options.

Example: python benchmarks/bench_routing.py --setting table1 --no-layer --json
"""

from __future__ import annotations

import sys

from seqr.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", "routing", *sys.argv[1:]]))
