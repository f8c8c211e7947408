"""The soak's plot: gateway RSS and open fds, and p99 per flow, over time, faults shaded.

``python plot.py SUMMARY.json RECORDS.jsonl OUT.png`` redraws it from a run's files.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from soakcheck import Record, percentile

COLOURS = {"master-http": "tab:orange", "master-grpc": "tab:purple", "broker": "tab:green"}


def plot(summary: dict[str, Any], records: Sequence[Record], path: Path,
         bucket: float = 15.0) -> None:
    t0 = summary["t0"]
    samples = summary["samples"]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(11, 6.5))
    minutes = [(s["t"] - t0) / 60 for s in samples]
    top.plot(minutes, [s["rss_mib"] for s in samples], color="tab:blue", label="RSS (MiB)")
    top.set_ylabel("gateway RSS (MiB)")
    fds = top.twinx()
    fds.plot(minutes, [s["fds"] for s in samples], color="tab:gray", lw=0.8, label="open fds")
    fds.set_ylabel("open fds")
    top.set_ylim(0, max((s["rss_mib"] for s in samples), default=1) * 1.3)
    fds.set_ylim(0, max((s["fds"] for s in samples), default=1) * 1.6)
    by_flow: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        if record.ok:
            by_flow[record.flow][int((record.t - t0) // bucket)].append(record.elapsed * 1000)
    for flow, buckets in sorted(by_flow.items()):
        keys = sorted(buckets)
        bottom.plot([(k + 0.5) * bucket / 60 for k in keys],
                    [percentile(buckets[k], 0.99) for k in keys], label=f"{flow} p99")
    bottom.set_yscale("log")
    bottom.set_ylabel(f"p99 per {bucket:g} s (ms, log)")
    bottom.set_xlabel("minutes")
    seen: set[str] = set()
    for window in summary["windows"]:
        for axis in (top, bottom):
            axis.axvspan(window["start_s"] / 60, (window["end_s"] + summary["grace_s"]) / 60,
                         color=COLOURS.get(window["service"], "red"), alpha=0.2,
                         label=None if window["service"] in seen or axis is bottom
                         else f"{window['service']} down")
        seen.add(window["service"])
    lines, labels = top.get_legend_handles_labels()
    more, more_labels = fds.get_legend_handles_labels()
    top.legend(lines + more, labels + more_labels, loc="lower right", fontsize=8)
    bottom.legend(loc="upper right", fontsize=8)
    top.set_title(f"eventgw soak: {summary['minutes']:g} min, {summary['idle']} idle TLS "
                  "connections, upstreams killed in the shaded windows (+ grace)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    summary_path, records_path, out = sys.argv[1:4]
    plot(json.loads(Path(summary_path).read_text()),
         [Record(**json.loads(line)) for line in Path(records_path).read_text().splitlines()
          if line], Path(out))
