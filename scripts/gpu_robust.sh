#!/usr/bin/env bash
# The GPU runs of the robust-model work (issue 18), as one command on a lent GPU machine (the `device` tool), which
# carries .devdata (scripts/device_data.py; or .devpack/data.tgz, the same as one file) and .whl (ImageHash and PyWavelets, which that machine's Python lacks):
#
#   bash scripts/gpu_robust.sh            # OUT (default ./gpu-out) gets each run's model.pt and a tar of the rest
#
# Four trainings share the GPU, each for MINUTES of epochs (--max-minutes), on the two-source data split as
# two-site-1 was (scripts/device_data.py writes it in `--split given` layout). PLAN=framing (the default): robust-3's
# preprocessing on both sources (see below). PLAN=scratch, the 2026-12-04 lease: 256-px input (twice the release's),
# the acquisition recipe, with and without the second site's fracture boxes as supervision, with and without
# histogram equalisation, and a 320-px one. Each run's checkpoint is complete (threshold, detector, card); a run
# cut off by the deadline leaves its last epoch's averaged weights instead.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
MINUTES=${MINUTES:-6}
DEADLINE=${DEADLINE:-530}
PY=${PY:-python3}
RUNS=${RUNS:-/tmp/gpuruns}
# Each run's augmentation in this many processes beside its training (the 2026-12-04 lease ran it on one core per run
# and the GPU waited): 4 runs x (1 + 3) fills the device machine's 16 cores.
LOADER_WORKERS=${LOADER_WORKERS:-3}
mkdir -p "$OUT"
if [ -d .whl ] && [ "$PY" = python3 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
if [ ! -d .devdata ] && [ -f .devpack/data.tgz ]; then tar xzf .devpack/data.tgz; fi  # carried as one file
sed "s#@ROOT@#$PWD/.devdata#g" .devdata/spec.json.in > /tmp/spec.json
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.log"
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.is_available())" | tee -a "$OUT/gpu.log"

PLAN=${PLAN:-framing}
if [ "$PLAN" = framing ]; then  # two-site-3's preprocessing (frame trimmed, grey levels equalised on the decoded
  # image, the acquisition changes drawn before that) on both sources, from scratch: the release's width and a wider
  # network at 128 px, and 256 px with and without the boxes; the boxed runs at output stride 16 (a 16x16 map at
  # 256 px: the pointing game's reach, 0.37 of the second site's locked boxes with a 4x4 map at 128 px, 0.85 with 8x8)
  common=(--data-spec /tmp/spec.json --split given --seed 0 --augment acquisition --framing trim
          --intensity equalize-full
          --epochs 100 --max-minutes "$MINUTES" --threads 1 --loader-workers "$LOADER_WORKERS" --no-progress
          --batch-size 64 ${EXTRA:-})
  names=(fr128w24 fr128w48 fr256box fr256)
  opts=("--image-size 128 --width 24" "--image-size 128 --width 48"
        "--image-size 256 --width 32 --output-stride 16 --boxes .devdata/boxes.csv --box-weight 0.5 --select auc-pointing"
        "--image-size 256 --width 32")
elif [ "$PLAN" = scratch ]; then  # from scratch at 256 and 320 px: 14-22 epochs fit in 6 minutes (2026-12-04)
  common=(--data-spec /tmp/spec.json --split given --seed 0 --augment acquisition --width 32 --epochs 60
          --max-minutes "$MINUTES" --threads 1 --loader-workers "$LOADER_WORKERS" --no-progress --batch-size 64 ${EXTRA:-})
  names=(box256 plain256 boxeq256 box320)
  opts=("--image-size 256 --boxes .devdata/boxes.csv" "--image-size 256"
        "--image-size 256 --boxes .devdata/boxes.csv --intensity equalize" "--image-size 320 --boxes .devdata/boxes.csv")
else  # PLAN=finetune: robust-1 fine-tuned at its own 128 px, with and without the boxes as supervision
  common=(--data-spec /tmp/spec.json --split given --seed 0 --augment acquisition --width 24 --image-size 128
          --init fracture/release/robust/model.pt --lr 1e-3 --select last --epochs 60
          --max-minutes "$MINUTES" --threads 1 --loader-workers "$LOADER_WORKERS" --no-progress --batch-size 64 ${EXTRA:-})
  names=(ftbox03 ftbox1 ftplain)
  opts=("--boxes .devdata/boxes.csv --box-weight 0.3" "--boxes .devdata/boxes.csv --box-weight 1" "")
fi
run() {  # name, then extra options
  local name=$1; shift
  timeout "$DEADLINE" "$PY" -c 'import sys; from trainer.cli import train; train(sys.argv[1:])' \
    "${common[@]}" --out "$RUNS/$name" "$@" > "$RUNS/$name.log" 2>&1
  echo "$name exit $?" >> "$OUT/gpu.log"
}
mkdir -p "$RUNS"
for i in "${!names[@]}"; do
  # shellcheck disable=SC2086  # the options are words
  run "${names[$i]}" ${opts[$i]} &
done
wait
for name in "${names[@]}"; do
  dir=$RUNS/$name
  if [ -f "$dir/model.pt" ]; then
    cp "$dir/model.pt" "$OUT/$name.pt"
  elif [ -f "$dir/last.pt" ]; then  # cut off: the averaged weights and history of its last epoch
    "$PY" -c 'import sys, torch; s = torch.load(sys.argv[1], weights_only=True); torch.save({"ema": s["ema"], "history": s["history"], "epoch": s["epoch"], "epochs": s.get("epochs")}, sys.argv[2])' \
      "$dir/last.pt" "$OUT/$name-last.pt"
  fi
  cp "$RUNS/$name.log" "$dir/train.log" 2>/dev/null
  tail -4 "$RUNS/$name.log" >> "$OUT/gpu.log"
done
cp "$OUT/gpu.log" $RUNS/
tar czf "$OUT/runs.tgz" -C "$RUNS" --exclude '*.pt' --exclude cache "${names[@]}" gpu.log
cat "$OUT/gpu.log"
