#!/usr/bin/env bash
# A few minutes on one GPU: does the CUDA side work, and how fast is it? JSON lines.
#   bash bench/gpu_check.sh            (needs torch with CUDA; nothing is downloaded)
# Most telling first, each part under its own time limit, so a slow or failing part leaves the
# others' figures:
# 1. the generation engine's step (fp32, bf16, bf16 + CUDA graphs) against transformers' step
#    (fp32, bf16), musicgen-small's shape, batch 1 and 8 (bench/generate.py --device cuda);
# 2. the engine against transformers' generate, same seed: the same tokens on the GPU?
# 3. 30 s of audio end to end, text to waveform (bench/gpu_figures.py clip), batch 1 then 8;
# 4. training through the CLI with bf16-mixed on the tiny model: plain, DeepSpeed ZeRO-2 (and
#    ZeRO-3 last) on one GPU, each checkpoint loaded back through sources/, generating on the GPU;
# 5. a training step of musicgen-small's shape, fp32 vs bf16-mixed, full and LoRA.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MUSICGEN_TRAIN_HOME="${MUSICGEN_TRAIN_HOME:-$(mktemp -d)}"
export WANDB_MODE=offline HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
LOGS="${GPU_CHECK_LOGS:-$MUSICGEN_TRAIN_HOME}"
status=0
python - <<'PY' || { echo '{"check": "cuda", "ok": false}'; exit 1; }
import json, torch, transformers
ok = torch.cuda.is_available()
print(json.dumps({"check": "cuda", "ok": ok, "device": torch.cuda.get_device_name(0) if ok else None,
                  "bf16": ok and torch.cuda.is_bf16_supported(), "torch": torch.__version__,
                  "transformers": transformers.__version__}))
raise SystemExit(0 if ok else 1)
PY

part() {  # part NAME SECONDS COMMAND...: run one part, its log kept, a JSON line if it fails
  local name=$1 limit=$2; shift 2
  local start=$(date +%s)
  timeout "$limit" "$@" > >(tee "$LOGS/$name.log") 2>"$LOGS/$name.err"
  local rc=$? ok=true
  [ $rc -eq 0 ] || { ok=false; status=1; }
  echo "{\"part\": \"$name\", \"ok\": $ok, \"rc\": $rc, \"seconds\": $(( $(date +%s) - start ))}"
  $ok || tail -3 "$LOGS/$name.err"
}

# CPU work the later parts need, in the background while the GPU parts run: the demo recipe's
# token cache and the saved musicgen-small-shape folder (random weights, written once)
OMP_NUM_THREADS=4 python -m musicgen_train.cli prepare > "$LOGS/prepare.log" 2>&1 &
prepare_pid=$!
OMP_NUM_THREADS=4 python -c "import sys; sys.path.insert(0, 'bench'); from train_step import small_shape_folder as f; f()" \
  > "$LOGS/small_folder.log" 2>&1 &
folder_pid=$!

part generate_step 120 python bench/generate.py --device cuda --quick --batches 1,8 --repeats 20 \
  --variants hf-fp32,hf-bf16,engine-fp32,engine-bf16,engine-bf16+graphs

part parity 60 python - <<'PY'
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
    print(json.dumps({"check": "engine_vs_generate_cuda", "precision": precision,
                      "cuda_graphs": graphs, "shape": list(ours.shape),
                      "max_abs_diff": float(abs(ours - ref[..., : ours.shape[-1]]).max())}))
PY

wait $folder_pid || { status=1; echo '{"check": "small_folder", "ok": false}'; }
part clip_batch1 150 python bench/gpu_figures.py clip --batches 1 \
  --variants engine-bf16+graphs,hf-fp32,engine-bf16,hf-bf16

wait $prepare_pid || { status=1; echo '{"check": "prepare", "ok": false}'; tail -3 "$LOGS/prepare.log"; }
train() {  # train STRATEGY: bf16-mixed through the CLI, then its checkpoint back on the GPU
  local run="gpu-$1"
  part "train_$1" 90 python -m musicgen_train.cli train model=tiny logger=csv strategy=$1 \
    run_name=$run trainer.accelerator=gpu trainer.precision=bf16-mixed trainer.max_steps=4 \
    trainer.val_check_interval=2 eval.after_training=false
  part "checkpoint_$1" 45 python bench/gpu_figures.py checkpoint "$MUSICGEN_TRAIN_HOME/runs/$run"
}
train auto
train deepspeed_stage_2
part clip_batch8 75 python bench/gpu_figures.py clip --batches 8 --variants engine-bf16+graphs,hf-bf16
part train_step 90 python bench/gpu_figures.py train-step --batch 8 --crop-seconds 10 --steps 3 \
  --warmup 1
train deepspeed_stage_3
exit $status
