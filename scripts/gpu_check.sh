#!/usr/bin/env bash
# GPU checks, one script for a lent GPU machine (no package index there: the packages its image lacks
# travel as wheels in .whl/, made here by `bash scripts/gpu_wheels.sh`). Run from the repository root
# after `make demo` (demo_out/world, pairs, prompts) and `python scripts/rl_table.py` (runs/rl_table/world):
#
#   OUT=gpu_out bash scripts/gpu_check.sh
#
# 1. bench/dpo_vs_trl.py --size 0.5b (the GPU table + MFU of issue 5), 2. the same seeded DPO run on CPU and
# on the GPU in fp32 (losses must agree) and in bf16, 3. GRPO on the arithmetic world, 4. best-of-16 and
# args decoding, 5. the whole demo. Every part has its own time limit; the log and the JSON results go to $OUT.
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
part() { echo; echo "=== $* ($(date +%T))"; }

part versions
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "
import importlib
for m in ['torch', 'transformers', 'accelerate', 'peft', 'datasets', 'trl', 'tokenizers', 'pyarrow']:
    try: print(m, importlib.import_module(m).__version__)
    except Exception as e: print(m, 'MISSING', type(e).__name__, e)
import torch; print('cuda', torch.version.cuda, torch.cuda.get_device_name())"

part "1. bench/dpo_vs_trl.py --size 0.5b"
timeout 300 env BENCH_PYTHON=python3 python3 bench/dpo_vs_trl.py ${BENCH_ARGS:---size 0.5b --rounds 1} --work /tmp/bench05
cp /tmp/bench05/results.json "$OUT/bench_results.json" 2>/dev/null
tail -n 30 /tmp/bench05/logs/*.log > "$OUT/bench_worker_logs.txt" 2>/dev/null

part "2. the same DPO run on CPU and GPU"
dpo="objective=dpo model=demo_out/world/pretrain/final data=demo_out/pairs.jsonl max_steps=6 batch_size=16 lr=5e-4 seed=0"
CUDA_VISIBLE_DEVICES="" timeout 60 python3 -m alignkit.cli train $dpo output_dir=/tmp/dpo_cpu mixed_precision=no
timeout 60 python3 -m alignkit.cli train $dpo output_dir=/tmp/dpo_gpu mixed_precision=no
timeout 60 python3 -m alignkit.cli train $dpo output_dir=/tmp/dpo_bf16
python3 - <<'EOF' | tee "$OUT/cpu_vs_gpu.txt"
import json
def load(d):
    return [json.loads(l) for l in open(f"/tmp/{d}/metrics.jsonl") if '"loss"' in l]
try:
    cpu, gpu, bf16 = load("dpo_cpu"), load("dpo_gpu"), load("dpo_bf16")
    for name, other in (("gpu fp32", gpu), ("gpu bf16", bf16)):
        d = max(abs(a["loss"] - b["loss"]) for a, b in zip(cpu, other))
        print(f"{name}: steps {len(other)}, max |loss - cpu loss| = {d:.3g}")
    print("cpu losses", [round(r["loss"], 6) for r in cpu])
    print("gpu losses", [round(r["loss"], 6) for r in gpu])
    print("bf16 losses", [round(r["loss"], 6) for r in bf16])
except Exception as e:
    print("compare failed:", type(e).__name__, e)
EOF

part "3. GRPO on the arithmetic world, 30 steps on the GPU"
timeout 90 python3 -m alignkit.cli train objective=grpo model=runs/rl_table/world/pretrain/final \
  prompts=runs/rl_table/prompts.jsonl reward=rule:exact_answer num_samples=8 max_new_tokens=4 unfinished_penalty=0 \
  batch_size=16 max_steps=30 lr=1e-3 log_every=5 output_dir=/tmp/grpo_gpu
cp /tmp/grpo_gpu/metrics.jsonl "$OUT/grpo_metrics.jsonl" 2>/dev/null

part "4. inference-time methods on the GPU"
head -n 64 demo_out/train_prompts.txt > /tmp/p64.txt
timeout 60 python3 -m alignkit.cli generate --model demo_out/world/pretrain/final --prompts /tmp/p64.txt \
  --method bon --n 16 --reward alignkit.worlds.reviews:reward --out /tmp/bon16.jsonl
timeout 60 python3 -m alignkit.cli generate --model demo_out/world/pretrain/final --prompts /tmp/p64.txt \
  --method args --reward alignkit.worlds.reviews:reward --out /tmp/args.jsonl

part "5. the quick demo on the GPU"
timeout 120 python3 -m alignkit.cli demo --quick --out /tmp/demo_gpu
cp /tmp/demo_gpu/results.json "$OUT/demo_results.json" 2>/dev/null
part done
