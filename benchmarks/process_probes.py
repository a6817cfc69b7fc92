"""What score_scale.py reads from /proc about the stack's processes: a process tree, its memory (VmRSS, VmHWM),
the peak RSS while something runs, and CPU shares with this run's PostgreSQL backends counted apart from other
processes (Linux only).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

from common import CpuWatch

TICK = os.sysconf("SC_CLK_TCK")


def tree_pids(pid: int) -> list[int]:
    """`pid` and its descendants (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo.extend(int(c) for c in task.read_text().split())
            except OSError:
                pass
    return out


def memory_kb(pids: list[int]) -> dict:
    """Summed VmRSS and VmHWM (kB) of `pids`."""
    total = {"rss_kb": 0, "hwm_kb": 0}
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                total["rss_kb" if key == "VmRSS" else "hwm_kb"] += int(value.split()[0])
    return total


class PeakRss(threading.Thread):
    """Samples the summed VmRSS of a process tree every `interval` s until stop(); keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.02):
        super().__init__(daemon=True)
        self.pids, self.interval = tree_pids(pid), interval
        self.before_kb = memory_kb(self.pids)["rss_kb"]
        self.peak_kb, self.samples = self.before_kb, 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak_kb = max(self.peak_kb, memory_kb(self.pids)["rss_kb"])
            self.samples += 1
            self._done.wait(self.interval)

    def stop(self) -> dict:
        self._done.set()
        self.join()
        after = memory_kb(self.pids)["rss_kb"]
        return {"pids": self.pids, "rss_before_mb": round(self.before_kb / 1024, 1),
                "rss_peak_mb": round(max(self.peak_kb, after) / 1024, 1), "rss_after_mb": round(after / 1024, 1),
                "peak_growth_mb": round((max(self.peak_kb, after) - self.before_kb) / 1024, 1),
                "retained_growth_mb": round((after - self.before_kb) / 1024, 1), "samples": self.samples}


class PhaseCpu:
    """common.CpuWatch, with the CPU of this run's PostgreSQL backends (pg_stat_activity of its database) taken
    out of "other processes": they work for the stack. A backend that exits during the phase is not counted."""

    def __init__(self):
        self.db_start = self.backend_cpu_s()
        self.watch = CpuWatch()

    @staticmethod
    def backend_cpu_s() -> dict[int, float]:
        from sqlalchemy import text

        from shared.core.db import session_scope

        with session_scope() as s:
            if s.get_bind().dialect.name != "postgresql":
                return {}
            pids = s.scalars(text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")).all()
        out = {}
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[pid] = (int(fields[11]) + int(fields[12])) / TICK  # utime + stime
        return out

    def stop(self) -> dict:
        out = self.watch.stop()
        end = self.backend_cpu_s()
        db = sum(cpu - self.db_start.get(pid, 0.0) for pid, cpu in end.items())
        db_pct = 100 * db / (out["wall_s"] * (os.cpu_count() or 1))
        return {**out, "database_cpu_pct": round(db_pct, 1),
                "background_incl_database_cpu_pct": out["background_cpu_pct"],
                "background_cpu_pct": round(max(0.0, out["background_cpu_pct"] - db_pct), 1)}

