"""Run every benchmark, or those named: python -m tests.benchmarks [queue kde ...]."""

from __future__ import annotations

import importlib
import pkgutil
import platform
import sys

import tests.benchmarks as package


def main(argv: list[str]) -> None:
    names = sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules(package.__path__)
        if m.name.startswith("bench_")
    )
    chosen = argv or names
    unknown = set(chosen) - set(names)
    if unknown:
        sys.exit(f"unknown benchmark(s) {sorted(unknown)}; choose from {names}")
    print(f"machine: {platform.machine()} {platform.processor() or ''} python {platform.python_version()}")
    for name in chosen:
        print(f"\n=== {name} ===", flush=True)
        importlib.import_module(f"tests.benchmarks.bench_{name}").main()


if __name__ == "__main__":
    main(sys.argv[1:])
