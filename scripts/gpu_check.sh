#!/usr/bin/env bash
# The GPU goals in one pass, about 10 minutes on one H100-class GPU, so that scarce GPU minutes
# go to measuring, not to setting up (BENCHMARKS.md, "GPU"):
#   1. the crop stage (MTCNN) on the device, on a demo world drawn here;
#   2. `emogan bench train --compare-eager` at the thesis configuration (48 px, layers 5, conv 32,
#      batch 16, n_critic 5) in fp32, bf16 and compiled: the fast path against the official loop,
#      then a profile of the fast path (how busy the GPU is, the operators that take its time);
#   3. a short `emogan train` tracked in MLflow, stopped by SIGTERM after its first checkpoint and
#      rerun, which must resume from that checkpoint.
# Each check writes OUT/<check>.json (the command's own report); OUT/summary.txt times them.
#
#   bash scripts/gpu_check.sh [OUT]            on the GPU machine (OUT: gpu-check/)
#   SMOKE=1 bash scripts/gpu_check.sh [OUT]    the same steps, tiny, on a CPU (tests/test_gpu_check.py)
set -euo pipefail

out=$(realpath -m "${1:-gpu-check}")
mkdir -p "$out"
if [ "${SMOKE:-0}" = 1 ]; then
  world="photos_per_emotion: 2, faceless_photos: 1, fer_train_per_emotion: 12, fer_test_per_emotion: 4"
  layers=2 size=16 conv=4 timed=5 warmup=1 iterations=3000 checkpoint=50
else
  world="photos_per_emotion: 24, faceless_photos: 12, fer_train_per_emotion: 400, fer_test_per_emotion: 80"
  layers=5 size=48 conv=32 timed=300 warmup=20 iterations=3000 checkpoint=500
fi

# The thesis configuration over the demo preset: official losses and sampling, n_critic 5.
write_params() {  # write_params <file> <extra train keys>
  cat >"$1" <<PARAMS
layers: $layers
image_size: $size
demo: {$world}
collect: {manifest: $out/demo/manifest.csv}
review: {decisions: $out/decisions.csv}
fer2013: {path: $out/demo/fer2013.csv, ferplus: $out/demo/fer2013new.csv}
model: {g_conv_dim: $conv, d_conv_dim: $conv}
train: {num_iters: $iterations, num_iters_decay: $((iterations / 2)), batch_size: 16, n_critic: 5,
        lambda_id: 0.0, batch_sampling: images, log_step: $checkpoint,
        sample_step: $checkpoint, checkpoint_step: $checkpoint$2}
mlflow: {tracking_uri: "sqlite:///$out/mlflow.db"}
PARAMS
}
write_params "$out/fp32.yaml" ""
write_params "$out/bf16.yaml" ", precision: bf16"
write_params "$out/compiled.yaml" ", compile: true"

run() {  # run <check> <emogan args...>: its JSON report into OUT/<check>.json, timed
  local check=$1 start=$SECONDS
  shift
  emogan "$@" >"$out/$check.json"
  echo "$check: $((SECONDS - start)) s" | tee -a "$out/summary.txt"
}

: >"$out/summary.txt"
p=(--params "$out/fp32.yaml")
run demo "${p[@]}" demo --out "$out/demo"
run collect "${p[@]}" collect --out "$out/raw" --metrics "$out/collect_metrics.json"
run crop "${p[@]}" crop --raw "$out/raw" --out "$out/crops" --metrics "$out/crop_metrics.json"
run simulate_review "${p[@]}" simulate-review --demo "$out/demo" --raw "$out/raw" \
  --crops "$out/crops" --out "$out/decisions.csv" --metrics "$out/simulated_metrics.json"
run review "${p[@]}" review --crops "$out/crops" --out "$out/reviewed" \
  --metrics "$out/review_metrics.json"
run merge "${p[@]}" merge --reviewed "$out/reviewed" --out "$out/processed" \
  --metrics "$out/dataset_metrics.json"

for variant in fp32 bf16 compiled; do
  run "bench_$variant" --params "$out/$variant.yaml" bench train --data "$out/processed" \
    --iterations "$timed" --warmup "$warmup" --compare-eager --profile
done

train=(--data "$out/processed" --out "$out/stargan" --checkpoints "$out/checkpoints"
       --metrics "$out/train.json" --loss-log "$out/train_loss.csv")
emogan "${p[@]}" train "${train[@]}" >"$out/train_stopped.log" 2>&1 &
trainer=$!
until compgen -G "$out/checkpoints/*/checkpoint.pt" >/dev/null; do
  kill -0 "$trainer" 2>/dev/null || { echo "train ended before its first checkpoint" >&2; exit 1; }
  sleep 0.2
done
kill -TERM "$trainer"
if wait "$trainer"; then echo "train finished despite SIGTERM" >&2; exit 1; fi
echo "train_stopped: SIGTERM after the first checkpoint" | tee -a "$out/summary.txt"
run train_resumed "${p[@]}" train "${train[@]}"
