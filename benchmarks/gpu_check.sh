#!/usr/bin/env bash
# GPU check of napari-derun (issue 21). Never a CI dependency: run it by hand on a machine with a CUDA GPU.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # default OUT_DIR: benchmarks/results/gpu
#
# 1. installs what it needs with pip (the package and pytest where missing, a CUDA build of torch if the
#    installed one has no CUDA: set TORCH_INDEX_URL, default https://download.pytorch.org/whl/cu124),
# 2. runs the CUDA tests (pytest -k cuda: tests/test_cuda.py),
# 3. runs the peer benchmark on the GPU (benchmarks/bench_peers.py --device cuda),
# 4. runs a short training run on the GPU (timed),
# and writes OUT_DIR/gpu_check.json (each step's status and seconds) beside the step outputs.
# Without a CUDA device it says so, writes the JSON with "skipped" and exits 0.
set -u
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results/gpu}"
mkdir -p "$OUT"
export GPU_CHECK_OUT="$OUT"
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
SUMMARY="$OUT/gpu_check.json"
declare -A STATUS SECS

step() {  # step NAME COMMAND...: run, record status and seconds, keep the log
    local name="$1"; shift
    local t0=$(date +%s%N)
    echo "== $name: $*"
    "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    STATUS[$name]=$rc
    SECS[$name]=$(awk "BEGIN{print ($(date +%s%N) - $t0) / 1e9}")
    tail -n 5 "$OUT/$name.log"
    echo "== $name: exit $rc in ${SECS[$name]} s"
}

write_summary() {
    "$PY" - "$SUMMARY" "$1" <<PYEOF
import json, sys, platform
steps = {$(for k in "${!STATUS[@]}"; do printf '"%s": {"exit": %s, "seconds": %s}, ' "$k" "${STATUS[$k]}" "${SECS[$k]}"; done)}
info = {"skipped": sys.argv[2] or None, "steps": steps, "python": platform.python_version()}
try:
    import torch
    info["torch"] = torch.__version__
    info["cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
except Exception as e:  # torch missing or broken: say so
    info["torch_error"] = repr(e)
json.dump(info, open(sys.argv[1], "w"), indent=1)
print("wrote", sys.argv[1])
PYEOF
}

# 1. install (only what is missing: the package and pytest)
if ! "$PY" -c "import napari_derun, pytest, safetensors" 2>/dev/null; then
    step install_package "$PY" -m pip install -q -e . pytest
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        step install_torch_cuda "$PY" -m pip install -q --force-reinstall torch \
            --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu124}"
    fi
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "no CUDA device visible to torch: nothing to check on a GPU (skipped)"
    write_summary "no CUDA device"
    exit 0
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

# 2. CUDA tests
step cuda_tests "$PY" -m pytest -q -k cuda tests/test_cuda.py

# 3. the peer benchmark on the GPU (IFCNN-MAX weights from ../shared/anchors/ifcnn or $IFCNN_WEIGHTS)
step bench_peers "$PY" benchmarks/bench_peers.py --device cuda --sizes 512 1024 2048 --threads 1 --repeats 10 \
    --stack-planes 20 --json "$OUT/peers_cuda.json"
step bench_perf "$PY" benchmarks/bench_perf.py --device cuda --bf16 --sizes 256 1024 2048 --repeats 5 \
    --json "$OUT/perf_cuda.json"

# 4. a short training run (timed): 2 epochs of 50 steps, batch 8 × 128², guided + restore, on the GPU
step train_short "$PY" - <<'PYEOF'
import json, os, time
import numpy as np
import torch
from napari_derun.core.model import DeRUN
from napari_derun.training.config import TrainConfig
from napari_derun.training.loop import train
from napari_derun.data.sample_data import gfp_pc

pairs = []
for seed in range(8):
    a, b = gfp_pc(size=384, seed=seed)
    pairs.append((a.astype(np.float32) / 255.0, b[..., 1].astype(np.float32) / 255.0))
cfg = TrainConfig(epochs=2, batch=8, patch=128, steps_per_epoch=50, device="cuda", seed=0, objective="fusion",
                  checkpointing=False)
torch.cuda.synchronize()
t0 = time.perf_counter()
res = train(pairs[:6], val_pairs=pairs[6:], init=DeRUN.from_hifm(guided=True, restore=12), config=cfg)
torch.cuda.synchronize()
dt = time.perf_counter() - t0
out = {"seconds": dt, "steps": 100, "seconds_per_step": dt / 100, "history": res.history,
       "gpu": torch.cuda.get_device_name(0), "peak_mib": torch.cuda.max_memory_allocated() / 2**20}
json.dump(out, open(os.path.join(os.environ["GPU_CHECK_OUT"], "train_cuda.json"), "w"), indent=1, default=str)
print(f"{dt / 100 * 1e3:.1f} ms per step (batch 8 x 128^2)")
PYEOF
write_summary ""
