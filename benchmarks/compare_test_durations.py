"""Compare two test-suite runs from their ``pytest --durations=0`` output.

Tests are matched by name (the part after ``::``), so a test keeps its identity when its
file is renamed. Prints each run's total, the time of the tests both runs have, the time of
the tests only one has, and the largest differences.

    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python -m pytest -q --durations=0 > new.log
    (the same in a checkout of the older commit) > old.log
    python benchmarks/compare_test_durations.py old.log new.log
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from typing import Dict, Optional, Tuple

_ROW = re.compile(r"^([0-9.]+)s (call|setup|teardown)\s+(\S+)")
_TOTAL = re.compile(r"(\d+) passed.* in ([0-9.]+)s")


def read_durations(path: str) -> Tuple[Dict[str, float], Optional[Tuple[int, float]]]:
    """Seconds per test name, and (passed, wall seconds) from the summary line."""
    per_test: Dict[str, float] = defaultdict(float)
    total = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = _ROW.match(line)
            if m:
                node = m.group(3)
                per_test[node.split("::", 1)[1] if "::" in node else node] += float(m.group(1))
            m = _TOTAL.search(line)
            if m:
                total = (int(m.group(1)), float(m.group(2)))
    return dict(per_test), total


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args(argv)
    try:
        old, old_total = read_durations(args.old)
        new, new_total = read_durations(args.new)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not old or not new:
        print("error: no --durations rows found (run pytest with --durations=0)",
              file=sys.stderr)
        return 2
    shared = set(old) & set(new)
    only_new, only_old = set(new) - shared, set(old) - shared
    print(f"old: {old_total} (passed, wall s)   new: {new_total}")
    print(f"tests in both ({len(shared)} listed): old {sum(old[k] for k in shared):.1f} s, "
          f"new {sum(new[k] for k in shared):.1f} s")
    print(f"only new ({len(only_new)}): {sum(new[k] for k in only_new):.1f} s; "
          f"only old ({len(only_old)}): {sum(old[k] for k in only_old):.1f} s")
    print("largest changes among the tests in both:")
    for k in sorted(shared, key=lambda k: -abs(new[k] - old[k]))[:args.top]:
        print(f"  {old[k]:8.2f} -> {new[k]:8.2f}  {k}")
    print("slowest tests only in new:")
    for k in sorted(only_new, key=lambda k: -new[k])[:args.top]:
        print(f"  {new[k]:8.2f}  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
