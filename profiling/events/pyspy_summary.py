"""Summarise a py-spy raw (collapsed stacks) file: self and inclusive samples per frame.

Usage: python profiling/events/pyspy_summary.py FILE [N] [--by-function]
"""

from __future__ import annotations

import collections
import re
import sys


def main() -> None:
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2].isdigit() else 40
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            count = int(count_text)
            frames = stack.split(";")
            if "--by-function" in sys.argv:
                frames = [re.sub(r":\d+\)$", ")", frame) for frame in frames]
            total += count
            threads[frames[0]] += count
            own[frames[-1]] += count
            for frame in set(frames[1:]):
                incl[frame] += count
    print(f"total samples {total}")
    for name, n in threads.most_common(8):
        print(f"  thread {n:6d} {100 * n / total:5.1f}% {name}")
    print("--- self")
    for name, n in own.most_common(top):
        print(f"{n:6d} {100 * n / total:5.1f}% {name}")
    print("--- inclusive")
    for name, n in incl.most_common(top):
        print(f"{n:6d} {100 * n / total:5.1f}% {name}")


if __name__ == "__main__":
    main()
