"""scripts/gpu_check.sh, the one script a lent GPU runs, works before GPU minutes are spent on
it: its smoke mode runs every step on the CPU, tiny."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_runs_every_step_on_a_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "SMOKE": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # its `emogan`
    env.pop("MLFLOW_TRACKING_URI", None)
    out = tmp_path / "check"
    subprocess.run(["bash", ROOT / "scripts/gpu_check.sh", out], env=env, check=True)

    steps = [line.split(":")[0] for line in (out / "summary.txt").read_text().splitlines()]
    assert steps == ["demo", "collect", "crop", "simulate_review", "review", "merge",
                     "bench_fp32", "bench_bf16", "bench_compiled", "train_stopped",
                     "train_resumed"]  # fmt: skip
    for variant, precision, compiled in (("fp32", "fp32", False), ("bf16", "bf16", False),
                                         ("compiled", "fp32", True)):  # fmt: skip
        bench = json.loads((out / f"bench_{variant}.json").read_text())
        assert (bench["precision"], bench["compile"], bench["n_critic"]) == (precision, compiled, 5)
        assert bench["ms_per_iteration"] > 0 and bench["eager_ms_per_iteration"] > 0
        assert bench["profile"]["timed_on"] == "cpu"
        assert "aten::convolution_backward" in bench["profile"]["top_operators_ms_per_iteration"]
    assert "stopped by SIGTERM" in (out / "train_stopped.log").read_text()
    trained = json.loads((out / "train_resumed.json").read_text())
    assert 0 < trained["resumed_from"] < trained["iterations"] == 3000
    assert (out / "stargan" / "generator.pt").is_file()
