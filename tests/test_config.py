"""params.yaml names what sets experiments apart, `emogan params` shows every key, and every kind
of mistake fails with one line naming the key."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from emogan.config import ConfigError, Params, load_params, parse_params
from emogan.emotions import EMOTIONS

ROOT = Path(__file__).resolve().parents[1]


def test_params_yaml_names_every_section_and_states_the_defaults() -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    # Every section is there, so that dvc.yaml's stages can depend on it and an experiment can
    # add a key to it (`-S +classifier.epochs=20`); its values are the defaults: the demo preset.
    assert set(raw) == set(Params.model_fields)
    assert load_params(ROOT / "params.yaml") == Params()


def test_emogan_params_prints_every_key_as_a_params_yaml_would() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "emogan", "--params", str(ROOT / "params.yaml"), "params"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    raw = yaml.safe_load(printed)
    assert parse_params(raw) == load_params(ROOT / "params.yaml")
    assert raw["train"]["lambda_gp"] == 10.0 and set(raw["collect"]["keywords"]) == set(EMOTIONS)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"layer": 4}, "params.yaml: layer: unknown key"),
        ({"demo": {"sed": 1}}, "params.yaml: demo.sed: unknown key"),
        ({"layers": "four"}, "params.yaml: layers: Input should be a valid integer (got 'four')"),
        ({"layers": True}, "params.yaml: layers: Input should be a valid integer (got True)"),
        ({"layers": 0}, "params.yaml: layers: Input should be greater than or equal to 1 (got 0)"),
        (
            {"demo": {"occlusion_prob": 1.5}},
            "params.yaml: demo.occlusion_prob: Input should be less than or equal to 1 (got 1.5)",
        ),
        (
            {"collect": {"fail_on_error": "yes"}},
            "params.yaml: collect.fail_on_error: Input should be a valid boolean (got 'yes')",
        ),
        (
            {"collect": {"search": {"license_type": ["free"]}}},
            "params.yaml: collect.search.license_type.0: Input should be 'all', 'commercial' or "
            "'modification' (got 'free')",
        ),
        (
            {"collect": {"keywords": {"joy": ["joyful"]}}},
            "params.yaml: collect.keywords: unknown emotion 'joy'; use angry, disgust, fear, happy,"
            " sad, surprise, neutral",
        ),
        (
            {"collect": {"manifest": None}},
            "params.yaml: collect: manifest and from_dir are both null; set one",
        ),
        ([1, 2], "params.yaml: expected a mapping of sections at the top level"),
    ],
)
def test_bad_values_name_the_key(raw: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_params(raw)
    assert str(caught.value) == message


def test_an_int_is_accepted_where_a_float_is_expected() -> None:
    assert parse_params({"collect": {"timeout_s": 5}}).collect.timeout_s == 5.0


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("layers: 5\ndemo:\n  seed: [1\n")
    with pytest.raises(ConfigError, match=r"params.yaml: line \d+: not valid YAML"):
        load_params(path)


def test_cli_refuses_bad_params_before_any_work(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("layers: 5\ndemo:\n  photos_per_emotion: -3\n")
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "emogan", "--params", str(params), "demo", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"emogan: error: {params}: demo.photos_per_emotion: Input should be greater than 0 (got -3)"
    ]
    assert not out.exists()
