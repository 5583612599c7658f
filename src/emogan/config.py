"""params.yaml -> typed, validated config. The only module that reads params.yaml.

Every key has its default here, and the defaults are the demo preset: what `make demo` trains.
params.yaml names only the keys that set one experiment apart from another (layers, filters,
iterations, image size, seeds, the data switches), so they are what `dvc exp show` lists; any
other key is added where an experiment needs it (`dvc exp run -S +train.g_lr=0.0002`) and then
shows as a column of that experiment. `emogan params` prints every key with its value.

Every section is a frozen pydantic model that forbids unknown keys, and numbers and flags are
strict (YAML `yes` or `"5"` is not an int), so a typo or a bad value fails before any work
starts, with one line naming the key.
"""

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from emogan.emotions import EMOTIONS
from emogan.errors import EmoganError

DEFAULT_PARAMS = Path("params.yaml")


def project_root() -> Path:
    """The DVC project's root: DVC sets DVC_ROOT for the commands it runs; else the cwd."""
    return Path(os.environ.get("DVC_ROOT", ".")).resolve()


# The thesis's synonyms per emotion, for `emogan collect search`.
THESIS_KEYWORDS = {
    "angry": ("angry", "enraged", "annoyed", "frustrated", "furious"),
    "disgust": ("disgusted", "grossed out", "repulsed", "revolted"),
    "fear": ("scared", "afraid", "frightened", "terrified"),
    "happy": ("happy", "joyful", "smiling", "laughing"),
    "sad": ("sad", "crying", "unhappy", "sorrowful"),
    "surprise": ("surprised", "shocked", "astonished", "amazed"),
    "neutral": ("neutral face", "expressionless", "calm face", "serious face"),
}

Int = Annotated[int, Field(strict=True)]
Float = Annotated[float, Field(strict=True)]  # an int is accepted and widened
Bool = Annotated[bool, Field(strict=True)]
Str = Annotated[str, Field(strict=True, min_length=1)]


class ConfigError(EmoganError):
    """A params.yaml problem; the message is one line that names the file and the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DemoConfig(Section):
    """The offline drawn world that stands in for web photos and FER2013."""

    seed: Int = Field(0, ge=0)
    photos_per_emotion: Int = Field(24, gt=0)
    faceless_photos: Int = Field(12, ge=0)  # photos with no face, spread over the emotion folders
    max_faces_per_photo: Int = Field(4, ge=1, le=8)
    # chance that an extra face shows another emotion than its photo's folder
    background_face_prob: Float = Field(0.35, ge=0.0, le=1.0)
    occlusion_prob: Float = Field(0.1, ge=0.0, le=1.0)  # chance of a hand over the mouth
    photo_width: Int = Field(640, ge=160, le=4096)
    photo_height: Int = Field(480, ge=160, le=4096)
    # mean per class; the classes keep FER2013's imbalance (disgust rare)
    fer_train_per_emotion: Int = Field(400, gt=0)
    fer_test_per_emotion: Int = Field(80, gt=0)
    # FER-format faces upright, evenly lit, on a plain background, close; false: as varied as the
    # scene photos (the GAN then learns far slower)
    fer_studio: Bool = True
    # share of FER-format rows written with a wrong label (the face keeps its true emotion), as
    # FER2013 is mislabelled; the FER+ votes beside it are drawn around the true emotion
    fer_label_noise: Float = Field(0.05, ge=0.0, le=1.0)
    # planted near-duplicates, so duplicate detection can be measured: this many FER2013 rows
    # that copy another row (half of them into another Usage), and a quarter as many each of
    # close-up web photos of a FER face and scene photos listed again at another size
    planted_duplicates: Int = Field(24, ge=0)


class SearchConfig(Section):
    api_url: Str = "https://api.openverse.org/v1"
    # queries "<keyword> <subject>" besides "<keyword>"
    subjects: tuple[Str, ...] = ("man", "boy", "woman", "girl", "family")
    license_type: tuple[Literal["all", "commercial", "modification"], ...] = ("all",)
    page_size: Int = Field(20, ge=1, le=20)  # Openverse refuses more without an API token
    pages: Int = Field(1, gt=0)
    min_interval_s: Float = Field(3.0, ge=0.0)  # between API requests (anonymous rate limit)
    out: Path = Path("data/sources/openverse_manifest.csv")


class CollectConfig(Section):
    manifest: Path | None = Path("data/demo/manifest.csv")  # real data: data/sources/manifest.csv
    from_dir: Path | None = None  # when set, one folder per emotion; used instead of manifest
    timeout_s: Float = Field(20.0, gt=0.0)
    max_bytes: Int = Field(25_000_000, gt=0)  # larger downloads are refused
    max_pixels: Int = Field(64_000_000, gt=0)  # decompression-bomb guard
    retries: Int = Field(3, ge=0, le=10)
    workers: Int = Field(8, ge=1, le=64)
    fail_on_error: Bool = False  # true: any failed image fails the stage (after the rest)
    keywords: dict[str, tuple[Str, ...]] = Field(default_factory=lambda: THESIS_KEYWORDS)
    search: SearchConfig = SearchConfig()

    @field_validator("keywords")
    @classmethod
    def _known_emotions(cls, keywords: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        unknown = sorted(set(keywords) - set(EMOTIONS))
        if unknown:
            raise ValueError(f"unknown emotion {unknown[0]!r}; use {', '.join(EMOTIONS)}")
        return keywords

    @model_validator(mode="after")
    def _has_source(self) -> "CollectConfig":
        if self.manifest is None and self.from_dir is None:
            raise ValueError("manifest and from_dir are both null; set one")
        return self


Share = Annotated[float, Field(strict=True, ge=-0.5, le=1.5)]  # of a frame's side


class AlignTemplate(Section):
    """Where (x, y) MTCNN's eye and nose landmarks sit on the FER-format faces, as shares of the
    frame's side; the defaults are measured on the demo world's (`emogan bench template`). The
    mouth corners are left out: they move with the expression, and the frame must not."""

    left_eye: tuple[Share, Share] = (0.328, 0.452)
    right_eye: tuple[Share, Share] = (0.697, 0.452)
    nose: tuple[Share, Share] = (0.510, 0.662)

    @model_validator(mode="after")
    def _eyes_apart(self) -> "AlignTemplate":
        if self.right_eye[0] - self.left_eye[0] < 0.05:
            raise ValueError("right_eye must lie at least 0.05 of the frame right of left_eye")
        return self


class CropConfig(Section):
    min_prob: Float = Field(0.9, ge=0.0, le=1.0)  # of MTCNN, for a face to be kept
    min_size: Int = Field(20, ge=12)  # shortest side of a kept face box, in pixels
    align: Bool = True  # rotate and scale each face onto the template; false: squares around boxes
    template: AlignTemplate = AlignTemplate()
    margin: Float = Field(0.2, ge=0.0, le=2.0)  # align false: context on each side, share of box
    device: Str = "auto"  # auto: CUDA, then MPS, then CPU
    batch_size: Int = Field(16, ge=1, le=1024)  # photos of equal size detected together


class ReviewConfig(Section):
    # keep / drop / relabel per crop (`emogan review serve` edits them); real data:
    # data/review/decisions.csv, in git
    decisions: Path = Path("data/interim/simulated_decisions.csv")
    unreviewed: Literal["keep", "drop"] = "keep"  # what happens to crops without a decision


Usage = Literal["Training", "PublicTest", "PrivateTest"]


FerPlusCategory = Literal["unknown", "NF", "contempt"]


class Fer2013Config(Section):
    path: Path = Path("data/demo/fer2013.csv")  # Kaggle CSV, or a folder of train|test/<emotion>/
    train_usage: tuple[Usage, ...] = ("Training",)
    test_usage: tuple[Usage, ...] = ("PublicTest", "PrivateTest")
    # Microsoft's FER+ votes (fer2013new.csv), joined to path's CSV rows by position; always a
    # file name, even with ferplus_mode original (which does not read it): DVC lists it in deps.
    ferplus: Path = Path("data/demo/fer2013new.csv")
    # majority: drop faces without a majority; plurality: the most votes; probability: the
    # plurality's label + the vote shares as the classifier's soft labels; original: FER2013's
    # own labels (data/ferplus.py)
    ferplus_mode: Literal["majority", "plurality", "probability", "original"] = "majority"
    # faces won by these are dropped; the votes of the others are removed before the vote
    # (contempt has no FER2013 class)
    ferplus_drop: tuple[FerPlusCategory, ...] = ("unknown", "NF", "contempt")

    @model_validator(mode="after")
    def _disjoint_usages(self) -> "Fer2013Config":
        shared = sorted(set(self.train_usage) & set(self.test_usage))
        if shared:
            raise ValueError(f"{shared[0]} is in both train_usage and test_usage")
        return self


class MergeConfig(Section):
    include_custom: Bool = True
    custom_test_fraction: Float = Field(0.15, ge=0.0, lt=1.0)  # reviewed crops held out for test
    channels: Literal[1, 3] = 1
    # near-duplicate faces (data/processed/duplicates.csv): keep them all; drop_cross_split: leave
    # out every test face with a near-duplicate in train; drop_all: keep one face per group
    duplicates: Literal["keep", "drop_cross_split", "drop_all"] = "drop_cross_split"
    # least similarity of two near-duplicates once one is registered onto the other: the
    # correlation of their coarse means (emogan.data.duplicates; measured in BENCHMARKS.md)
    duplicate_similarity: Float = Field(0.996, gt=0.0, le=1.0)
    # a larger group is a chain of look-alikes, not copies of one picture: listed as a crowd,
    # never dropped
    duplicate_max_group: Int = Field(8, ge=2)


class ModelConfig(Section):
    g_conv_dim: Int = Field(16, ge=1)  # filters of G's first layer (thesis: 32, official: 64)
    d_conv_dim: Int = Field(16, ge=1)
    g_layers: Int | None = Field(None, ge=1)  # residual blocks in G; null -> top-level layers
    d_layers: Int | None = Field(None, ge=1)  # strided convs in D; null -> top-level layers
    # unit_gradient: D starts where the gradient penalty wants it (model.py); pytorch: official
    d_init: Literal["unit_gradient", "pytorch"] = "unit_gradient"


class TrainConfig(Section):
    """The demo preset: visible translations of the drawn faces within make demo's 15 minutes on
    2 CPU cores (BENCHMARKS.md). The thesis preset is in the README."""

    num_iters: Int = Field(6000, ge=1)  # one iteration = one D update (thesis: 200,000)
    num_iters_decay: Int = Field(1500, ge=0)  # LR falls linearly to 0 over these last ones
    batch_size: Int = Field(8, ge=1)  # thesis and official: 16; 8 learns as well, 1.5x faster
    n_critic: Int = Field(1, ge=1)  # D updates per G update (official: 5; 1 buys 5x the G updates)
    g_lr: Float = Field(1e-4, gt=0.0)
    d_lr: Float = Field(1e-4, gt=0.0)
    beta1: Float = Field(0.5, ge=0.0, lt=1.0)
    beta2: Float = Field(0.999, ge=0.0, lt=1.0)
    # shuffle: the batch's own labels shuffled (the official code), so a rare emotion is rarely a
    # target; uniform: every emotion equally often.
    target_sampling: Literal["shuffle", "uniform"] = "shuffle"
    # images: every training image equally likely in a batch (the official code), so D sees a
    # rare emotion rarely; emotions: every emotion equally likely, its images drawn at random.
    batch_sampling: Literal["images", "emotions"] = "emotions"
    lambda_cls: Float = Field(1.0, ge=0.0)
    lambda_rec: Float = Field(10.0, ge=0.0)
    # |G(x, own emotion) - x|, not in the official losses (0): keeps G from hiding the face in noise
    lambda_id: Float = Field(10.0, ge=0.0)
    lambda_gp: Float = Field(10.0, ge=0.0)
    log_step: Int = Field(20, ge=1)
    sample_step: Int = Field(500, ge=1)
    checkpoint_step: Int = Field(500, ge=1)
    seed: Int = Field(0, ge=0)
    device: Str = "auto"  # auto: CUDA, then MPS, then CPU
    # bf16: the passes under bf16 autocast: the same eval metrics, 1.3-1.5x faster with
    # AVX512-BF16 or a GPU, 11x slower on other CPUs
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: Bool = False  # torch.compile G (D's gradient penalty needs double backward)

    @model_validator(mode="after")
    def _decay_within_run(self) -> "TrainConfig":
        if self.num_iters_decay > self.num_iters:
            raise ValueError(
                f"num_iters_decay {self.num_iters_decay} exceeds num_iters {self.num_iters}"
            )
        return self


class SampleConfig(Section):
    """Translation grids of fixed test faces."""

    rows: Int = Field(8, ge=1, le=64)  # test faces per grid
    seed: Int = Field(0, ge=0)


class ClassifierConfig(Section):
    epochs: Int = Field(12, ge=1)  # fixed; the best epoch on validation is kept
    batch_size: Int = Field(64, ge=1)
    lr: Float = Field(3e-3, gt=0.0)  # the peak of the one-cycle schedule
    width: Int = Field(32, ge=1)  # filters of the first block; each later block doubles them
    val_fraction: Float = Field(0.1, ge=0.0, lt=0.5)  # of each train class, to pick the epoch
    seed: Int = Field(0, ge=0)
    device: Str = "auto"


class CropJudgeConfig(Section):
    """The judge that orders the review queue: the classifier (its settings) on FER2013 alone."""

    # fewer than the classifier's: on the demo 8 order the review as well as 12 (BENCHMARKS.md)
    epochs: Int = Field(8, ge=1)


class EvaluateConfig(Section):
    batch_size: Int = Field(256, ge=1)  # test faces translated at once
    device: Str = "auto"
    inception_weights: Path | None = None  # torch-fidelity's FID Inception weights, local


class MlflowConfig(Section):
    experiment: Str = "emogan"
    tracking_uri: Str | None = None  # null -> $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db


class Params(Section):
    layers: Int = Field(3, ge=1, le=8)  # residual blocks in G = strided convs in D (thesis: 3-5)
    image_size: Int = Field(32, ge=16, le=512)  # side of the square grayscale faces (thesis: 48)
    demo: DemoConfig = DemoConfig()
    collect: CollectConfig = CollectConfig()
    crop: CropConfig = CropConfig()
    review: ReviewConfig = ReviewConfig()
    fer2013: Fer2013Config = Fer2013Config()
    merge: MergeConfig = MergeConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    crop_judge: CropJudgeConfig = CropJudgeConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    mlflow: MlflowConfig = MlflowConfig()

    @property
    def g_layers(self) -> int:
        return self.model.g_layers or self.layers

    @property
    def d_layers(self) -> int:
        return self.model.d_layers or self.layers


def _one_line(error: ValidationError, source: Path) -> str:
    first = error.errors(include_url=False)[0]
    key = ".".join(str(part) for part in first["loc"]) or "<top level>"
    if first["type"] == "extra_forbidden":
        return f"{source}: {key}: unknown key"
    message = first["msg"].removeprefix("Value error, ")
    got = "" if isinstance(first["input"], dict) else f" (got {first['input']!r})"
    return f"{source}: {key}: {message}{got}"


def parse_params(raw: object, source: Path = DEFAULT_PARAMS) -> Params:
    """Validate an already-loaded params mapping; raise ConfigError with one line."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_one_line(error, source)) from None


def params_yaml(params: Params) -> str:
    """Every key with its value, params.yaml's over the defaults, as a params.yaml would say it."""
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)


def load_params(path: Path = DEFAULT_PARAMS) -> Params:
    """Read and validate params.yaml; raise ConfigError with one line on any problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: not found (run from the project root or pass --params)"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark else ""
        raise ConfigError(f"{path}:{where} not valid YAML") from None
    return parse_params(raw or {}, path)
