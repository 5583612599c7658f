"""The training benchmarks on a tiny dataset: what they report is consistent and complete."""

from pathlib import Path

from stargan_helpers import tiny_params, write_dataset

from emogan.bench.learning import bench_learning
from emogan.bench.train import THESIS_ITERATIONS, bench_train


def test_bench_train_reports_ms_per_iteration_and_the_thesis_projection(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "processed")
    params = tiny_params("sqlite:///unused.db")
    report = bench_train(params, data, iterations=3, warmup=1, compare_eager=True)
    assert report["device"] == "cpu" and report["layers"] == 1
    for path in ("", "eager_"):
        assert report[f"{path}ms_per_iteration"] > 0
        expected = report[f"{path}ms_per_iteration"] * THESIS_ITERATIONS / 60_000
        assert abs(report[f"{path}projected_200k_iterations_min"] - expected) < 0.1
    ratio = report["eager_ms_per_iteration"] / report["ms_per_iteration"]
    assert abs(report["speedup"] - ratio) < 0.01
    assert "eager_ms_per_iteration" not in bench_train(params, data, iterations=1, warmup=0)


def test_bench_learning_scores_every_step_and_writes_grids(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "processed", train_per_emotion=6)
    params = tiny_params("sqlite:///unused.db")
    report = bench_learning(params, data, iterations=5, every=2, grids_dir=tmp_path / "grids")
    assert [point["iteration"] for point in report["curve"]] == [2, 4, 5]
    for point in report["curve"]:
        assert set(point) == {"iteration", "train_s", "overall", "fer2013", "custom"}
        for scope in ("overall", "fer2013", "custom"):
            scores = point[scope]
            assert 0.0 <= scores["target_accuracy_changed"] <= 1.0
            assert scores["fid_classifier"] > 0.0 and scores["distinctness"] > 0.0
            assert 0.0 < scores["keep_l1"] <= 2.0 and 0.0 < scores["cycle_l1"] <= 2.0
    assert report["chance"] == round(1 / 7, 4)
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == [
        "iter_2.png", "iter_4.png", "iter_5.png"
    ]  # fmt: skip
