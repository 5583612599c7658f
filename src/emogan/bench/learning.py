"""How fast a StarGAN config learns: a learning curve measured by an independent judge.

A small CNN judge is trained on the real training images of data/processed. Every `every`
iterations the generator translates every test face into every other emotion, and we report
- target accuracy: the share of those translations the judge assigns to the target emotion;
- keep L1: mean |translation - input| in [-1, 1] units. A judge can be fooled by a G that
  paints class-specific noise over the face, so accuracy means little while keep L1 is large;
- cycle L1: mean |G(G(x, target), source) - x|.
A grid per evaluation (the samples stage's layout) lets you see what the numbers mean.
"""

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from emogan.bench.demo_world import train_judge
from emogan.config import Params
from emogan.data.processed import Dataset, load_split
from emogan.device import resolve_device
from emogan.emotions import EMOTIONS
from emogan.stargan.grid import encode_png, pick_faces, translation_grid
from emogan.stargan.train import build_networks, sample_batch, train_iteration

C_DIM = len(EMOTIONS)


@torch.no_grad()
def translation_scores(G: torch.nn.Module, test: Dataset, judge: torch.nn.Module) -> dict:
    hits = changed = keep = cycle = 0.0
    for target in range(C_DIM):
        other = test.labels != target
        faces, labels = test.images[other], test.labels[other]
        fakes = G(faces, F.one_hot(torch.full_like(labels, target), C_DIM).float())
        hits += (judge(fakes).argmax(1) == target).sum().item()
        keep += (fakes - faces).abs().mean((1, 2, 3)).sum().item()
        back = G(fakes, F.one_hot(labels, C_DIM).float())
        cycle += (back - faces).abs().mean((1, 2, 3)).sum().item()
        changed += len(labels)
    return {
        "target_accuracy": round(hits / changed, 4),
        "keep_l1": round(keep / changed, 4),
        "cycle_l1": round(cycle / changed, 4),
    }


def bench_learning(
    params: Params, data_dir: Path, iterations: int, every: int, grids_dir: Path | None
) -> dict:
    """Train params' StarGAN for `iterations` (LR decay as in params.train, rescaled to the
    shorter run) and score it every `every` iterations; returns the curve."""
    device = resolve_device(params.train.device, "train.device")
    train = load_split(data_dir, "train", device)
    test = load_split(data_dir, "test", device)
    judge = train_judge(train.images, train.labels, seed=params.train.seed)
    with torch.no_grad():
        judge_accuracy = (judge(test.images).argmax(1) == test.labels).float().mean().item()
    decay = round(params.train.num_iters_decay * iterations / params.train.num_iters)
    cfg = params.train.model_copy(update={"num_iters": iterations, "num_iters_decay": decay})
    torch.manual_seed(cfg.seed)
    nets = build_networks(params, train.images.size(1), device)
    generator = torch.Generator(device).manual_seed(cfg.seed)
    faces, labels = pick_faces(test.images, test.labels, params.sample.rows, params.sample.seed)
    curve, train_s, segment = [], 0.0, time.perf_counter()
    for iteration in range(iterations):
        x_real, label_org = sample_batch(train, cfg.batch_size, generator)
        train_iteration(nets, x_real, label_org, cfg, iteration, generator)
        if (iteration + 1) % every and iteration + 1 != iterations:
            continue
        if device.type == "cuda":
            torch.cuda.synchronize()  # the steps were only queued; time them, not the scoring
        train_s += time.perf_counter() - segment
        curve.append({"iteration": iteration + 1, "train_s": round(train_s, 1),
                      **translation_scores(nets.G, test, judge)})  # fmt: skip
        print(curve[-1], flush=True)
        if grids_dir is not None:
            grid = translation_grid(nets.G, faces, labels)
            Path(grids_dir).mkdir(parents=True, exist_ok=True)
            (Path(grids_dir) / f"iter_{iteration + 1}.png").write_bytes(encode_png(grid))
        segment = time.perf_counter()
    return {"device": str(device), "judge_test_accuracy": round(judge_accuracy, 4),
            "chance": round(1 / C_DIM, 4), "curve": curve}  # fmt: skip
