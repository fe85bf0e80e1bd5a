#!/usr/bin/env bash
# The one prepared script for a lent CUDA machine (see docs/benchmarks.md). Writes to $OUT.
# Runs from the repository root without installing: the machine's python3 has torch.
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
nvidia-smi -L; python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"
echo "== GPU tests"
timeout 120 python3 -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tail -n 5
echo "== one-GPU nccl run under torchrun"
python3 -c "from charlstm.data import bundled_text; open('/tmp/small.txt','w').write(bundled_text()[:200000])"
timeout 120 torchrun --standalone --nproc-per-node 1 -m charlstm train /tmp/small.txt --hidden-size 64 \
    --num-layers 1 --dropout 0 --batch-size 8 --seq-len 32 --max-steps 50 --seed 3 --out /tmp/ddp_gpu \
    --quiet 2>&1 | tail -n 2
tail -n 1 /tmp/ddp_gpu/metrics.jsonl
python3 -m charlstm sample /tmp/ddp_gpu --length 80 --seed 1
echo "== benchmark"
timeout 420 python3 benchmarks/bench_gpu.py --minutes "${MINUTES:-1.5}" --out-json "$OUT/gpu_h200.json" \
    > "$OUT/bench_gpu.json" 2> "$OUT/bench_gpu.err"
echo "bench_gpu exit $?  (copy \$OUT/gpu_h200.json to docs/bench/, then run python benchmarks/report.py)"
tail -n 5 "$OUT/bench_gpu.err"
python3 - "$OUT/bench_gpu.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(json.dumps(d["peak_tflops"]))
for row in d["throughput"]:
    print(json.dumps(row))
for q in d["time_to_quality"]:
    print(json.dumps({k: v for k, v in q.items() if k != "curve"}))
print(json.dumps(d.get("sampling", {}))[:600])
PY
