"""Run every benchmark module of this package (each has `main(argv) -> int`), or the ones named.

  python -m bench            all
  python -m bench extract    one (options after the name go to the benchmark)
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import bench


def main(argv: list[str]) -> int:
    names = [m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_")]
    wanted = [a for a in argv if a in names] or names
    rest = [a for a in argv if a not in names]  # options for the benchmarks
    rc = 0
    for name in wanted:
        print(f"== bench {name} ==", flush=True)
        rc |= importlib.import_module(f"bench.{name}").main(rest)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
