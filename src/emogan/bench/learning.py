"""How fast a StarGAN config learns: a learning curve measured by an independent judge.

A judge (the classifier stage's network) is trained on the real training images of
data/processed. Every `every` iterations the generator translates every test face into every
emotion and the evaluate stage's metrics are computed (see emogan.evaluate: target accuracy over
changed pairs, keep L1, cycle L1, FID in the judge's features). A grid per evaluation (the samples
stage's layout) lets you see what the numbers mean.
"""

import time
from pathlib import Path

import torch

from emogan.bench.demo_world import train_judge
from emogan.config import Params
from emogan.data.processed import load_split
from emogan.device import resolve_device
from emogan.emotions import EMOTIONS
from emogan.evaluate import SCOPES, judge_faces, score_translations, translate_test_set
from emogan.stargan.grid import encode_png, pick_faces, translation_grid
from emogan.stargan.train import build_networks, sample_batch, train_iteration

C_DIM = len(EMOTIONS)
CURVE_METRICS = (
    "target_accuracy_changed", "per_target", "keep_l1", "cycle_l1", "distinctness", "fid_classifier"
)  # fmt: skip


def bench_learning(
    params: Params, data_dir: Path, iterations: int, every: int, grids_dir: Path | None
) -> dict:
    """Train params' StarGAN for `iterations` (LR decay as in params.train, rescaled to the
    shorter run) and score it every `every` iterations; returns the curve."""
    device = resolve_device(params.train.device, "train.device")
    train = load_split(data_dir, "train", device)
    test = load_split(data_dir, "test", device)
    judge = train_judge(train, seed=params.train.seed)
    real = judge_faces(judge, test, batch_size=256)
    decay = round(params.train.num_iters_decay * iterations / params.train.num_iters)
    cfg = params.train.model_copy(update={"num_iters": iterations, "num_iters_decay": decay})
    torch.manual_seed(cfg.seed)
    nets = build_networks(params, train)
    generator = torch.Generator(device).manual_seed(cfg.seed)
    faces, labels = pick_faces(test.images, test.labels, params.sample.rows, params.sample.seed)
    curve, train_s, segment = [], 0.0, time.perf_counter()
    for iteration in range(iterations):
        x_real, label_org = sample_batch(train, cfg.batch_size, generator, cfg.batch_sampling)
        train_iteration(nets, x_real, label_org, cfg, iteration, generator)
        if (iteration + 1) % every and iteration + 1 != iterations:
            continue
        if device.type == "cuda":
            torch.cuda.synchronize()  # the steps were only queued; time them, not the scoring
        train_s += time.perf_counter() - segment
        scores = score_translations(translate_test_set(nets.G, test, judge), real)
        curve.append(
            {"iteration": iteration + 1, "train_s": round(train_s, 1)}
            | {scope: {key: scores[scope][key] for key in CURVE_METRICS} for scope in SCOPES}
        )
        print(curve[-1], flush=True)
        if grids_dir is not None:
            grid = translation_grid(nets.G, faces, labels)
            Path(grids_dir).mkdir(parents=True, exist_ok=True)
            (Path(grids_dir) / f"iter_{iteration + 1}.png").write_bytes(encode_png(grid))
        segment = time.perf_counter()
    judge_accuracy = {scope: scores[scope]["judge_accuracy_real"] for scope in SCOPES}
    return {"device": str(device), "judge_accuracy_real": judge_accuracy,
            "chance": round(1 / C_DIM, 4), "curve": curve}  # fmt: skip
