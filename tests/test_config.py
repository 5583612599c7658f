"""params.yaml is complete, and every kind of mistake in it fails with one line naming the key."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from emogan.config import ConfigError, Params, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            keys |= _keys(kind, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def _yaml_keys(raw: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, value in raw.items():
        if isinstance(value, dict) and name != "keywords":
            keys |= _yaml_keys(value, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def test_params_yaml_spells_out_every_key_so_dvc_can_override_it() -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert _yaml_keys(raw) == _keys(Params)
    params = load_params(ROOT / "params.yaml")
    assert set(params.collect.keywords) == {
        "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"
    }  # fmt: skip


# params.yaml trains the demo preset; the code's defaults are the thesis's (official) values.
DEMO_PRESET = {"layers": True, "image_size": True, "model": {"g_conv_dim", "d_conv_dim"},
               "train": {"num_iters", "num_iters_decay", "n_critic", "lambda_id", "log_step",
                         "sample_step", "checkpoint_step", "batch_sampling"}}  # fmt: skip


def test_params_yaml_values_are_the_code_defaults_but_the_demo_preset() -> None:
    params = load_params(ROOT / "params.yaml")
    defaults = Params()
    exclude = {"collect": {"keywords"}} | DEMO_PRESET
    assert params.model_dump(exclude=exclude) == defaults.model_dump(exclude=exclude)


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
