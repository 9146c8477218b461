#!/usr/bin/env bash
# A few minutes on one GPU: does the CUDA side work, and how fast is it? JSON lines + a summary.
#   bash bench/gpu_check.sh            (needs torch with CUDA; nothing is downloaded)
# 1. a bf16-mixed training step (tiny model, demo data), plain and with DeepSpeed ZeRO-2 on one GPU;
# 2. the generation engine's CUDA path (bf16, bf16 + CUDA graphs) against transformers' step
#    (fp32, bf16), musicgen-small's shape, batch 1 and 8, wall clock.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MUSICGEN_TRAIN_HOME="${MUSICGEN_TRAIN_HOME:-$(mktemp -d)}"
export WANDB_MODE=offline HF_HUB_OFFLINE=1
status=0
python - <<'PY' || { echo '{"check": "cuda", "ok": false}'; exit 1; }
import json, torch
ok = torch.cuda.is_available()
print(json.dumps({"check": "cuda", "ok": ok, "device": torch.cuda.get_device_name(0) if ok else None,
                  "bf16": ok and torch.cuda.is_bf16_supported(), "torch": torch.__version__}))
raise SystemExit(0 if ok else 1)
PY
# the demo recipe's token cache, once (CPU, seconds)
timeout 300 python -m musicgen_train.cli prepare > "$MUSICGEN_TRAIN_HOME/prepare.log" 2>&1 \
  || { echo '{"check": "prepare", "ok": false}'; tail -5 "$MUSICGEN_TRAIN_HOME/prepare.log"; status=1; }
for strategy in auto deepspeed_stage_2; do
  start=$(date +%s.%N)
  if timeout 300 python -m musicgen_train.cli train model=tiny logger=csv strategy=$strategy \
      trainer.accelerator=gpu trainer.precision=bf16-mixed trainer.max_steps=3 \
      trainer.val_check_interval=3 eval.after_training=false > "$MUSICGEN_TRAIN_HOME/train-$strategy.log" 2>&1; then
    ok=true
  else
    ok=false; status=1
  fi
  echo "{\"check\": \"train_bf16\", \"strategy\": \"$strategy\", \"ok\": $ok, \"seconds\": $(echo "$(date +%s.%N) - $start" | bc)}"
  $ok || tail -5 "$MUSICGEN_TRAIN_HOME/train-$strategy.log"
done
timeout 600 python bench/generate.py --device cuda --quick --batches 1,8 --repeats 5 \
  --variants hf-fp32,hf-bf16,engine-fp32,engine-bf16,engine-bf16+graphs || status=1
# The engine against transformers' generate, end to end: same tokens at fp32 on the GPU?
timeout 300 python - <<'PY' || status=1
import json, torch
from musicgen_train.model.tiny import ensure_tiny_model
from musicgen_train.sources import load_musicgen
from musicgen_train.generation import GenerationEngine, GenerationParams
loaded = load_musicgen(str(ensure_tiny_model(seed=0)), device="cuda")
params = GenerationParams(duration=1.0, seed=3)
for precision, graphs in [("fp32", False), ("fp32", True), ("bf16", True)]:
    engine = GenerationEngine(loaded, precision=precision, cuda_graphs=graphs)
    ours = engine.generate(["a jazz tune"], params)
    inputs = loaded.processor(text=["a jazz tune"], return_tensors="pt").to("cuda")
    torch.manual_seed(3)
    ref = loaded.model.generate(**inputs, **engine._generate_kwargs(params)).float().cpu().numpy()
    print(json.dumps({"check": "engine_vs_generate_cuda", "precision": precision, "cuda_graphs": graphs,
                      "max_abs_diff": float(abs(ours - ref[..., : ours.shape[-1]]).max())}))
PY
exit $status
