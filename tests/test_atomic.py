"""Atomic writes: a reader never sees a partial file, and a killed writer leaves no litter."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emogan import atomic


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    atomic.write_json(target, {"old": 1})
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as work:
        work.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == '{\n  "old": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_a_killed_writer_leaves_the_old_folder_and_the_next_write_clears_its_temp(
    tmp_path: Path,
) -> None:
    target = tmp_path / "demo"
    target.mkdir()
    (target / "old.txt").write_text("old")
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from emogan.atomic import atomic_path\n"
            "with atomic_path(Path(sys.argv[1])) as work:\n"
            "    work.mkdir(); (work / 'new.txt').write_text('new'); print('writing', flush=True)\n"
            "    time.sleep(60)\n",
            str(target),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout.readline() == "writing\n"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    time.sleep(0.1)
    assert (target / "old.txt").read_text() == "old"
    assert len(list(tmp_path.glob(".demo.*.tmp"))) == 1

    with atomic.atomic_path(target) as work:
        work.mkdir()
        (work / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
    assert [p.name for p in target.iterdir()] == ["new.txt"]
