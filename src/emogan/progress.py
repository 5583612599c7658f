"""What a long stage tells the person waiting for it, on stderr (stdout is the stage's report).

- `print_stage_header`: the stage's expected duration, quoted from the previous run's metrics
  file only when that run was timed on this machine; `stage_timing` records what it needs.
- `progress_bar`: a tqdm bar on a terminal. In a log (CI, DVC's queue logs) a bar's carriage
  returns would pile up into one line of thousands of redraws, so there it writes a plain line
  each time another tenth of the work is done, with the time elapsed and the time left.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from tqdm import tqdm

STAGE_TIMING = "stage_timing"  # the metrics key: {"wall_s": ..., "machine": ...}
LOG_LINES = 10  # the most lines a bar writes to a log: one per tenth of its total


@functools.cache
def machine_identity() -> str:
    """This machine as far as a stage's speed goes: the CPU model, the cores this process may
    use and the NVIDIA GPUs, e.g. "AMD EPYC 7B13, 16 cores; NVIDIA H200". Read without torch,
    which the header would otherwise wait seconds for."""
    return "; ".join([f"{_cpu_model()}, {_usable_cores()} cores", *_nvidia_gpus()])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    if sys.platform == "darwin":  # platform.processor() says only "arm" or "i386" there
        try:
            brand = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
            if brand:
                return brand
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _usable_cores() -> int:
    # A container or taskset may give this process fewer cores than the machine has.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _nvidia_gpus() -> list[str]:
    """The NVIDIA driver's model name of every GPU, e.g. ["2 x NVIDIA H200"]; [] without one.
    The driver's /proc files, also mounted into containers, answer without initialising CUDA."""
    models: Counter[str] = Counter()
    for information in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            text = information.read_text(encoding="utf-8")
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model" and value.strip():
                models[value.strip()] += 1
    return [name if count == 1 else f"{count} x {name}" for name, count in models.items()]


def stage_timing(started: float) -> dict[str, dict[str, float | str]]:
    """The key to add to a stage's metrics so that its next run's header can quote it: the
    seconds since `started` (a time.perf_counter() reading) and the machine they were taken on."""
    wall_s = round(time.perf_counter() - started, 1)
    return {STAGE_TIMING: {"wall_s": wall_s, "machine": machine_identity()}}


def stage_header(stage: str, metrics_path: Path) -> str:
    """The line a stage starts with: how long its last run on this machine took, according to
    metrics_path as that run left it, or that there is none."""
    timing = _recorded_timing(Path(metrics_path))
    if timing is None:
        return f"emogan {stage}: no previous run on this machine"
    wall_s, machine = timing
    if machine != machine_identity():
        # A colleague's GPU box's time, committed with the metrics, would mislead here.
        return (
            f"emogan {stage}: no previous run on this machine ({metrics_path} was timed on "
            f"{machine})"
        )
    return f"emogan {stage}: expect about {format_duration(wall_s)} (the last run on this machine)"


def print_stage_header(stage: str, metrics_path: Path) -> None:
    """Write stage_header to stderr; under torchrun, rank 0's alone, as every rank runs the
    command."""
    if os.environ.get("RANK", "0") == "0":
        print(stage_header(stage, metrics_path), file=sys.stderr, flush=True)


def _last_metrics_text(metrics_path: Path) -> str | None:
    """metrics_path as the last run left it: `dvc repro` deletes a stage's outs before running
    it, metrics files included, so then the committed copy is the last run's."""
    try:
        return metrics_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        pass
    except OSError:
        return None
    if not metrics_path.parent.is_dir():
        return None
    committed = subprocess.run(
        ["git", "-C", str(metrics_path.parent), "show", f"HEAD:./{metrics_path.name}"],
        capture_output=True,
        text=True,
    )
    return committed.stdout if committed.returncode == 0 else None


def _recorded_timing(metrics_path: Path) -> tuple[float, str] | None:
    text = _last_metrics_text(metrics_path)
    try:
        metrics = json.loads(text) if text is not None else None
    except ValueError:
        return None  # a file the stage will rewrite anyway
    timing = metrics.get(STAGE_TIMING) if isinstance(metrics, dict) else None
    if not isinstance(timing, dict):
        return None
    wall_s, machine = timing.get("wall_s"), timing.get("machine")
    if not isinstance(wall_s, int | float) or not isinstance(machine, str):
        return None
    return float(wall_s), machine


def format_duration(seconds: float) -> str:
    """Seconds for a person: "4.2s", "38s", "2m 05s", "1h 03m"."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    if not minutes:
        return f"{rest}s"
    if minutes < 60:
        return f"{minutes}m {rest:02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"


def _rate(per_s: float, unit: str) -> str:
    """Units a second, e.g. "1234 it/s" or "12.3 it/s"; for slow work seconds a unit, e.g.
    "4.5 s/epoch"."""
    if per_s >= 100:
        return f"{per_s:.0f} {unit}/s"
    return f"{per_s:.3g} {unit}/s" if per_s >= 1 else f"{1 / per_s:.3g} s/{unit}"


class LogProgress:
    """A progress bar for a log: one plain line each time another tenth of total is done, and
    at close one for where the work stopped, if that is between two tenths. Offers the part of
    tqdm's interface the stages use: update, set_postfix, close, n, and `with`."""

    def __init__(
        self, total: int, desc: str, unit: str, initial: int, stream: TextIO, lines: int = LOG_LINES
    ) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self._initial, self._stream, self._lines = initial, stream, lines
        self._started = time.perf_counter()
        self._postfix = ""
        # A resumed run's first line is at its next tenth, not at the one it resumed in.
        self._written_tenth, self._written_n = self._tenth(initial), initial

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._tenth(self.n) > self._written_tenth:
            self._write()

    def set_postfix(self, values: Mapping[str, Any], refresh: bool = True) -> None:
        """Values to end the next lines with, as tqdm shows them beside the bar. Only update
        and close write lines, so `refresh` (tqdm's redraw now) changes nothing here."""
        self._postfix = ", ".join(f"{name}={value}" for name, value in values.items())

    def close(self) -> None:
        if self.n != self._written_n:
            self._write()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def line(self) -> str:
        """The line for where the work is now."""
        elapsed = time.perf_counter() - self._started
        done = self.n - self._initial
        percent = math.floor(100 * self.n / self.total) if self.total else 100
        text = f"{self.desc}: {percent}% {self.n}/{self.total} {self.unit}"
        if self.n >= self.total:
            text += f" in {format_duration(elapsed)}"
        else:
            text += f", {format_duration(elapsed)} elapsed"
            if done > 0 and elapsed > 0:
                text += f", about {format_duration((self.total - self.n) * elapsed / done)} left"
        if done > 0 and elapsed > 0:
            text += f" ({_rate(done / elapsed, self.unit)})"
        return f"{text}; {self._postfix}" if self._postfix else text

    def _tenth(self, n: int) -> int:
        return math.floor(n * self._lines / self.total) if self.total else 0

    def _write(self) -> None:
        self._stream.write(self.line() + "\n")
        self._stream.flush()
        self._written_tenth, self._written_n = self._tenth(self.n), self.n


def progress_bar(
    total: int,
    desc: str,
    unit: str,
    *,
    initial: int = 0,
    show: bool = True,
    stream: TextIO | None = None,
) -> tqdm | LogProgress:
    """A bar for `total` units of work, `initial` of them already done, on stream (stderr): a
    tqdm bar where stream is a terminal, else a LogProgress; nothing when show is False."""
    stream = sys.stderr if stream is None else stream
    if not show:
        return tqdm(total=total, disable=True)
    if _is_terminal(stream):
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream)
    return LogProgress(total, desc, unit, initial, stream)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # not a file, or a closed one
        return False
