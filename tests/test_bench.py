"""The benchmarks on tiny inputs: what they report is consistent and complete."""

from pathlib import Path

import pytest
from stargan_helpers import tiny_params, write_dataset

from emogan.bench.learning import bench_learning
from emogan.bench.template import bench_template
from emogan.bench.train import THESIS_ITERATIONS, bench_train
from emogan.config import AlignTemplate, DemoConfig, Fer2013Config
from emogan.data.demo import _fer_rows, _write_fer, fer_counts
from emogan.emotions import EMOTIONS


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


def test_bench_template_finds_the_default_template_on_the_demo_faces(tmp_path: Path) -> None:
    # Without planted label noise or copies, so that the faces per written label are fer_counts'.
    cfg = DemoConfig(
        fer_train_per_emotion=40, fer_test_per_emotion=2, fer_label_noise=0.0, planted_duplicates=0
    )
    _write_fer(cfg, _fer_rows(cfg), tmp_path)
    report = bench_template(Fer2013Config(path=tmp_path / "fer2013.csv"), per_emotion=6)
    assert report["faces"] == 7 * 6 - (6 - fer_counts(cfg)["disgust"]["Training"])
    assert report["found"] >= 0.8 * report["faces"]
    default = AlignTemplate()
    for name in AlignTemplate.model_fields:  # 6 faces per emotion: near the 210 of the defaults
        assert report["template"][name] == pytest.approx(getattr(default, name), abs=0.015), name
    assert set(report["per_emotion"]) == set(EMOTIONS)
