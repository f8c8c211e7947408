"""Child processes of the rig: start pinned to CPUs, wait for ports, read CPU time, stop.

Every process runs in its own session, so stopping it signals exactly its own process
group (its workers included) and nothing else on the machine.
"""

from __future__ import annotations

import fcntl
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

# How long a server may take to start listening (twistd with grpcio imports ~2 s).
START_TIMEOUT_S: Final = 20.0
# How long a server gets between SIGTERM and SIGKILL when the rig tears down.
STOP_GRACE_S: Final = 5.0

_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pinned(cpus: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run under ``taskset -c cpus`` (children inherit the affinity)."""
    return ["taskset", "-c", cpus, *argv]


@dataclass
class Server:
    """One long-running child process of the rig and the ports it must open."""

    name: str
    argv: list[str]
    ports: tuple[int, ...]
    log_path: Path
    cwd: Path | None = None
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not running"
        return self.process.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            env=self.env,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Return once every port accepts connections; raise if the process died first."""
        deadline = time.monotonic() + timeout
        for port in self.ports:
            while not _accepts(port):
                if self.process is None or self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited early; see {self.log_path}:\n"
                                       + self.log_tail())
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not listen on {port} within "
                                       f"{timeout:.0f} s; see {self.log_path}")
                time.sleep(0.05)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after the grace time."""
        if self.process is None:
            return
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        # Workers may outlive a master that exited; the group id is still ours.
        _signal_group(self.process.pid, signal.SIGKILL)
        try:
            self.process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        if self._log is not None:
            self._log.close()
            self._log = None


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; everything after its ')' is fixed.
    return raw[raw.rindex(")") + 2 :].split()


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children = _children_map()
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, ()))
    return tree


def cpu_seconds(roots: Iterable[int]) -> float:
    """utime+stime of each process under ``roots``, plus the reaped children's (cutime+cstime).

    A reaped child's time moves into its parent's cutime/cstime, so summing all four
    fields over the live tree counts every worker exactly once, dead or alive.
    """
    ticks = 0
    for root in roots:
        for pid in process_tree(root):
            fields = _stat_fields(pid)
            if fields is not None:
                # Fields 14-17 of /proc/PID/stat; the slice starts at field 3.
                ticks += sum(int(value) for value in fields[11:15])
    return ticks / _CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU time all CPUs spent busy (not idle or waiting for I/O) since boot, from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    assert fields[0] == "cpu"
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


def own_cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the load generators)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN
    )
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


class RunLock:
    """One benchmark at a time: two runs on the same CPUs would each measure the other.

    ``flock`` on a file under ``bench/out``; the kernel drops it if the holder dies.
    The file names the holder, so a second run can say whom it waits for.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a+")

    def holder(self) -> str:
        self._file.seek(0)
        return self._file.read().strip() or "another run"

    def try_acquire(self) -> bool:
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()}: {' '.join(sys.argv)}\n")
        self._file.flush()
        return True

    def release(self) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
