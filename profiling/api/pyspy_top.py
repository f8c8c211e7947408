"""Summarise a py-spy ``--format raw`` (collapsed stacks) file: self and inclusive share.

Usage::

    .venv/bin/py-spy record -p PID -d 20 -r 500 -f raw -o stacks.txt
    .venv/bin/python profiling/api/pyspy_top.py stacks.txt [--top 30] [--grep NAME]
"""

from __future__ import annotations

import argparse
import collections
import re


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    with open(args.path) as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            count = int(count_text)
            total += count
            frames = [re.sub(r":\d+\)$", ")", fr) for fr in stack.split(";")]
            own[frames[-1]] += count
            for fr in set(frames):
                incl[fr] += count
    print(f"{total} samples")
    print("-- self --")
    for name, count in own.most_common(args.top):
        print(f"{100 * count / total:5.1f}%  {name}")
    print("-- inclusive --")
    for name, count in incl.most_common(args.top):
        print(f"{100 * count / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
