#!/usr/bin/env bash
# The GPU check: everything only a CUDA machine can tell, in one command of about 8 minutes.
#   1. the tests marked cuda (pytest -m cuda): device augmentation, bf16 autocast, channels_last,
#      torch.compile, resume with deterministic kernels, two DDP processes on one GPU (gloo);
#   2. the throughput table of WRN-28-2 at B = 64, mu = 2: fp32, bf16, bf16 + torch.compile
#      (images/s, step / model-only floor, peak memory);
#   3. FixMatch and FixMatch + DebiasPL for $STEPS steps of WRN-28-2 on CIFAR-10-LT: test top-1 and
#      the pseudo-labels' KL to the truth.
#
# Before asking for a GPU, here (the JPEG copy of CIFAR-10 does not travel; this subset, ~20 MB, does):
#   python benchmarks/pack_cifar10lt.py experiments/cifar10lt_debiaspl.yaml data/cifar10lt-jpeg
# Then through the device tool: command "bash benchmarks/gpu_check.sh", carry ["data/cifar10lt-jpeg"].
# What comes back lies in $OUT (the device tool sets it; runs/gpu_check otherwise): gpu_check.log,
# cuda_tests.log, throughput_<row>.json and training.json. Exit status 1 if any part failed.
# On a CPU, for the script itself (EXTRA: settings added to every run; the small CNN keeps it short):
#   DEVICE=cpu STEPS=8 THROUGHPUT_STEPS=2 EXTRA="--set model.name=small_cnn" bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-runs/gpu_check}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-2000}
THROUGHPUT_STEPS=${THROUGHPUT_STEPS:-50}
DATA=${DATA:-data/cifar10lt-jpeg}
RUNS=${RUNS:-runs/gpu_check_runs}   # outside $OUT: only 8 files come back from the device machine
read -r -a EXTRA <<< "${EXTRA:-}"
mkdir -p "$OUT" "$RUNS"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec > >(tee "$OUT/gpu_check.log") 2>&1
failed=()

if [ ! -d "$DATA/train" ]; then
  echo "no $DATA/train: build it first with python benchmarks/pack_cifar10lt.py experiments/cifar10lt_debiaspl.yaml $DATA"
  exit 1
fi
"$PY" -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(),
          '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

echo; echo "== 1. tests marked cuda"
"$PY" -m pytest -q -m cuda tests -p no:cacheprovider 2>&1 | tee "$OUT/cuda_tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("cuda tests")

echo; echo "== 2. throughput, WRN-28-2, B = 64, mu = 2 (FixMatch; $THROUGHPUT_STEPS timed steps)"
COMMON=(--set data.dataset=imagefolder --set "data.root=$DATA" --set "train.device=$DEVICE" --set "hooks=[]"
        --set train.batch_size=64 --set train.unlabeled_ratio=2 "${EXTRA[@]}" --steps "$THROUGHPUT_STEPS" --warmup 10)
for row in "fp32|--set train.precision=fp32" "bf16|--set train.precision=bf16" \
           "bf16_compile|--set train.precision=bf16 --set train.compile=true"; do
  name=${row%%|*}
  read -r -a options <<< "${row#*|}"
  echo "-- $name"
  "$PY" benchmarks/throughput.py experiments/cifar10lt_fixmatch.yaml "${COMMON[@]}" "${options[@]}" \
    --json "$OUT/throughput_$name.json" || failed+=("throughput $name")
done
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
print(f"\n| row | ms / step | images / s | floor ms | step / floor | peak memory MiB |\n|---|---|---|---|---|---|")
for name in ("fp32", "bf16", "bf16_compile"):
    path = Path(sys.argv[1]) / f"throughput_{name}.json"
    if path.is_file():
        r = json.loads(path.read_text())
        print(f"| {name} | {1000 * r['step_seconds']:.1f} | {r['images_per_second']:.0f} | "
              f"{1000 * r['model_only_seconds']:.1f} | {r['step_over_floor']:.2f} | {r['peak_memory_mib']:.0f} |")
EOF

echo; echo "== 3. FixMatch and FixMatch + DebiasPL, WRN-28-2, $STEPS steps (m = 0.99, as the CPU-scale runs)"
for algorithm in fixmatch fixmatch+debiaspl; do
  "$PY" -m debiaspl train experiments/cifar10lt_debiaspl.yaml --set "algorithm.name=$algorithm" \
    --set data.dataset=imagefolder --set "data.root=$DATA" --set "train.device=$DEVICE" \
    --set "train.steps=$STEPS" --set "eval.interval=$(( STEPS / 4 > 0 ? STEPS / 4 : 1 ))" \
    --set "logging.checkpoint_interval=$STEPS" --set algorithm.marginal_momentum=0.99 \
    --set "logging.run_dir=$RUNS" --set "logging.run_name=$algorithm" --set logging.progress_bar=false \
    "${EXTRA[@]}" || failed+=("train $algorithm")
done
"$PY" - "$RUNS" "$OUT/training.json" <<'EOF'
import json, sys
from pathlib import Path
rows = {}
for name in ("fixmatch", "fixmatch+debiaspl"):
    path = Path(sys.argv[1]) / name / "results.json"
    if path.is_file():
        r = json.loads(path.read_text())
        rows[name] = {key: r.get(key) for key in ("step", "top1", "balanced_acc", "acc_many", "acc_medium", "acc_few",
                                                   "pseudo_acc", "pseudo_kl_to_true", "train_seconds_this_session")}
Path(sys.argv[2]).write_text(json.dumps(rows, indent=2) + "\n")
print("\n| algorithm | steps | top-1 | many | medium | few | pseudo-label KL | train s |\n|---|---|---|---|---|---|---|---|")
for name, r in rows.items():
    print(f"| {name} | {r['step']} | {r['top1']:.4f} | {r['acc_many']:.4f} | {r['acc_medium']:.4f} | "
          f"{r['acc_few']:.4f} | {r['pseudo_kl_to_true']:.4f} | {r['train_seconds_this_session']:.0f} |")
EOF

echo
if [ ${#failed[@]} -eq 0 ]; then echo "gpu_check: all parts passed"; else echo "gpu_check: FAILED: ${failed[*]}"; exit 1; fi
