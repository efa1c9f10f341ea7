"""Run the benchmark modules of this package (each has `main(argv) -> int`), or the ones named.

  python -m bench            all but the long ones (a module with LONG = "why" runs only when named)
  python -m bench extract    one (options after the name go to the benchmark)
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import bench


def main(argv: list[str]) -> int:
    names = [m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_")]
    named = [a for a in argv if a in names]
    rest = [a for a in argv if a not in names]  # options for the benchmarks
    rc = 0
    for name in named or names:
        module = importlib.import_module(f"bench.{name}")
        if not named and getattr(module, "LONG", None):
            print(f"== bench {name}: not run ({module.LONG}); run it with: ./run bench {name} ==", flush=True)
            continue
        print(f"== bench {name} ==", flush=True)
        rc |= module.main(rest)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
