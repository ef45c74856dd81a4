#!/usr/bin/env bash
# darkraw's GPU checks in one call, for a session that is lent a GPU machine.
#
# Why one script: a session has 15 minutes of device time in all, a machine takes a minute or
# more to start, and each call must stay under 10 minutes. So everything that needs a GPU runs
# here in order of importance, each step under its own time limit, within BUDGET_S in all; a step
# that fails does not stop the later ones, and the summary at the end says what each returned.
#
#   here first:  bash benchmarks/gpu/build_device_site.sh   # packages the device image lacks
#   the call:    run(command="bash benchmarks/gpu/run_checks.sh", carry=[".device-site"],
#                    timeout_s=600)
#   try it here, in an environment like the device image's (no GPU steps then):
#     DEVICE_PYTHON=3.11 bash benchmarks/gpu/build_device_site.sh /tmp/site311
#     ACCELERATOR=cpu BUDGET_S=900 DEVICE_SITE=/tmp/site311 PYTHON=<python> OUT=/tmp/checks \
#         bash benchmarks/gpu/run_checks.sh
#
# Steps: (1) inference latency on the GPU, fp32/bf16, CUDA-stream encoders against sequential
# (benchmarks/speed.py -> speed_cuda.{json,md,png}), with training throughput in fp32 and
# bf16-mixed; (2) the inference tests, whose CUDA-stream tests skip on a CPU; (3) the quickstart
# trained on the GPU in bf16-mixed (the learning-health alarms stop it with exit 1 if it does not
# learn); (4) DDP through NCCL, one rank; (5) the latency of torch.compile'd forms (compiling
# takes minutes, hence last).
set -uo pipefail
cd "$(dirname "$0")/../.."

OUT=${OUT:-benchmarks/results/gpu_checks}
ACCELERATOR=${ACCELERATOR:-gpu}
BUDGET_S=${BUDGET_S:-540}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
LOG="$OUT/gpu_checks.log"
: >"$LOG"
DEVICE_SITE=${DEVICE_SITE:-$PWD/.device-site}  # from build_device_site.sh
export PYTHONPATH="$DEVICE_SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline HYDRA_FULL_ERROR=1
export DARKRAW_ROOT=${DARKRAW_ROOT:-$(mktemp -d /tmp/darkraw_gpu_checks.XXXX)}
if [ "$ACCELERATOR" = gpu ]; then
    DEVICE=cuda SPEED_SIZES=()
else  # a try-out on a CPU: the full sizes would take most of an hour there
    DEVICE=cpu SPEED_SIZES=(--quick)
fi

SUMMARY=()
step() {  # step NAME LIMIT_S COMMAND...: run it with its output in the log, unless time is short
    local name=$1 limit=$2 left rc started=$SECONDS
    shift 2
    left=$((BUDGET_S - SECONDS))
    if ((left < 30)); then
        SUMMARY+=("$name: skipped, ${left}s of the budget left")
        return
    fi
    ((limit > left)) && limit=$left
    echo "=== $name (at most ${limit}s): $*" | tee -a "$LOG"
    timeout --signal=TERM --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    SUMMARY+=("$name: exit $rc after $((SECONDS - started))s$( ((rc == 124)) && echo ' (timed out)')")
}

run_dir() {  # the newest run folder of an experiment name under DARKRAW_ROOT's outputs
    find "$DARKRAW_ROOT/outputs/$1" -name metrics.csv -printf '%T@ %h\n' 2>/dev/null \
        | sort -n | tail -1 | cut -d' ' -f2
}

step "environment" 60 "$PYTHON" -c "
import torch, lightning, sys
print('python', sys.version.split()[0], 'torch', torch.__version__, 'lightning', lightning.__version__)
print('cuda', torch.version.cuda, 'available', torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else '')
import hydra, rawpy, ptflops, pytorch_msssim, pidng  # what .device-site brings
print('hydra', hydra.__version__, 'rawpy', rawpy.__version__)"

step "speed (eager)" 200 "$PYTHON" benchmarks/speed.py --device "$DEVICE" --skip-onnx \
    --skip-compile --repeats 20 "${SPEED_SIZES[@]}" --out "$OUT"

step "inference tests" 180 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_inference.py

PRECISION=$([ "$DEVICE" = cuda ] && echo bf16-mixed || echo 32)
step "train on $DEVICE, $PRECISION" 200 "$PYTHON" train.py name=gpu_check \
    trainer.accelerator="$ACCELERATOR" trainer.precision="$PRECISION" logger=csv
metrics=$(run_dir gpu_check)
[ -n "$metrics" ] && cp "$metrics/metrics.csv" "$OUT/train_${DEVICE}_metrics.csv"

step "DDP, 1 rank" 150 "$PYTHON" train.py name=ddp_check trainer=ddp trainer.devices=1 \
    trainer.accelerator="$ACCELERATOR" trainer.max_steps=50 trainer.val_check_interval=50 \
    logger=csv
backend=$(grep -o 'distributed_backend=[a-z]*' "$LOG" | tail -1)
SUMMARY+=("DDP backend: ${backend:-not reported}")

step "speed (compiled)" 300 "$PYTHON" benchmarks/speed.py --device "$DEVICE" --skip-onnx \
    --repeats 10 "${SPEED_SIZES[@]}" --out "$OUT/compiled"

{
    echo "=== summary (${SECONDS}s of ${BUDGET_S}s)"
    printf '%s\n' "${SUMMARY[@]}"
} | tee -a "$LOG"
