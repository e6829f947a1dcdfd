#!/usr/bin/env bash
# One command for a GPU session (issue #18): the CUDA tests, then both GPU benchmarks, each under a timeout,
# the whole under GPU_CHECK_BUDGET_S (default 450 s: < 8 min on one H100-class GPU). A step that fails or
# times out is recorded and the next one runs. Run from anywhere; no venv needed (python3 with torch, timm,
# torchvision, pytest).
#
#   benchmarks/gpu_check.sh                                   # on the GPU machine
#   GPU_CHECK_DEVICE=cpu benchmarks/gpu_check.sh              # tiny dry run on the CPU (< 3 min)
#
# Steps, in the order GPU_CHECK_STEPS names them (default: tests eager data compiled; the compile step takes what
# is left of the budget):
#   info       nvidia-smi -L, torch.cuda.get_device_name, versions             -> gpu_check.log
#   tests      pytest tests -k "cuda or <the CPU tests that failed on the first H100 run>" (tests/test_cuda.py and
#              every test with cuda in its name; the module name matches -k, so the whole file runs)                               -> pytest.xml (junit), log
#   eager      train_throughput.py --device cuda, ConvNeXt-T, 224 px, batch 128, bf16, drop path 0.1, the six
#              eager loops (ours NCHW/channels_last vs timm plain ... fused AdamW + channels_last)
#                                                                                -> train_throughput_eager.json
#   data       data_pipeline.py --device cuda, Fashion-MNIST 64 px             -> data_pipeline.json
#   compiled   train_throughput.py --compile both: ours_channels_last and timm_fused_adamw_channels_last, eager
#              and compiled, interleaved                                         -> train_throughput_compiled.json
#   fmnist     benchmarks/recipes/sweep.py gpu (or GPU_CHECK_FMNIST_GROUP): three Fashion-MNIST runs sharing the
#              GPU (issue #15's GPU row), held-out validation, then the test split once for the run it chose
#                                                                                -> fmnist_GROUP.json,
#              fmnist_GROUP_runs.tar.gz (metrics, configs, logs); it leaves RESERVE_AFTER_FMNIST s (70) to later steps
#   study      benchmarks/study/step_speed.py: all 17 roadmap networks at each size:width of GPU_CHECK_STUDY_SHAPES
#              (default "128:1 64:1 128:0.5"; batch 128, bf16, channels_last), one at a time (issue #16), each shape
#              a step of its own                                                 -> study_step_speed.json
#   roadmap    issue #16's GPU study: convnext study roadmap --budget gpu (the 17 networks at 64 px, width / 8, 30 passes over
#              the 60,000 training images, data on the GPU), one seed, GPU_CHECK_ROADMAP_JOBS (8) runs sharing the GPU;
#              beside it the first and last steps at 60 passes (a second study), and plateau_check.py comparing them
#                                                                                -> roadmap_gpu.json, roadmap_gpu.tar.gz
#                                                                                   (results, records, logs, figures)
#   memory     grad_checkpointing.py --device cuda: ConvNeXt-T, 224 px, batch 128, bf16, channels_last, a step's peak
#              memory and img/s with the blocks checkpointed (--runtime.grad_checkpointing) and without
#                                                                                -> grad_checkpointing.json
#   wait       wait for the steps started in the background (NAME& in GPU_CHECK_STEPS)
#   summary    rc, seconds and the headline ratios of every step                -> summary.json
#
# Environment:
#   OUT                  output folder (default benchmarks/results/gpu); at most 8 files are written there
#   PYTHON               interpreter (default python3)
#   GPU_CHECK_DEVICE     cuda (default) or cpu (dry run: tiny models and sizes, aot_eager instead of inductor)
#   GPU_CHECK_BUDGET_S   seconds for the whole script (default 450)
#   GPU_CHECK_STEPS      steps to run, space-separated (default "tests eager data compiled"); NAME& starts one in
#                        the background, e.g. "eager fmnist& tests wait study" (the tests beside the training runs)
#   FASHION_MNIST_ROOT   the IDX files; else .data/fashion-mnist, shared/fashion-mnist or
#                        /usr/share/datasets/fashion-mnist, the first that exists. A GPU machine has none of its
#                        own: carry a copy. Here, once, in the repo root:
#                          mkdir -p .data && cp -r /usr/share/datasets/fashion-mnist .data/
#                          echo /.data/ >> .git/info/exclude
#                        then run it with the device tool as: command "bash benchmarks/gpu_check.sh",
#                        carry [".data"], timeout_s 540 (the tool sets OUT; 7 files come back)
#
# What ran, and what the next GPU session should run (15 minutes of device time in all; a start costs 1-2):
#   2026-11-27, one H100: GPU_CHECK_BUDGET_S=480 GPU_CHECK_STEPS="eager fmnist& tests wait study", 438 s, then
#   `pytest -k cuda -n 6` alone (13 passed); results in benchmarks/results/gpu/. Still to take: the six former CPU
#   failures on a GPU machine (the tests step now names a slow one), the compiled and data steps, the study's
#   other shapes, and #15's gpu_60ep group. Each fits one call (timeout_s 540), not both:
#     GPU_CHECK_BUDGET_S=480 GPU_CHECK_FMNIST_GROUP=gpu_60ep RESERVE_AFTER_FMNIST=20 GPU_CHECK_STEPS="fmnist& tests wait"
#     (or "fmnist& tests memory wait": gradient checkpointing's peak memory on the GPU, ~30 s beside the runs)
#     GPU_CHECK_BUDGET_S=480 GPU_CHECK_STEPS="tests study data"          (#16's sizing, the tests, the data path)
#   Issue #16's GPU study itself needs ~10 minutes alone: a session that runs it should run little else:
#     GPU_CHECK_BUDGET_S=560 GPU_CHECK_STEPS="roadmap"   (timeout_s 590; its cost is an estimate, not yet measured:
#     the networks are small enough that eager PyTorch's per-step overhead, not the GPU, sets their speed; if it
#     times out, the records of the finished runs still come back; committed in results/roadmap-gpu, a rerun
#     trains only the others)
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
DEV=${GPU_CHECK_DEVICE:-cuda}
OUTDIR=${OUT:-benchmarks/results/gpu}
BUDGET=${GPU_CHECK_BUDGET_S:-450}
STEPS=${GPU_CHECK_STEPS:-tests eager data compiled}
# e.g. GPU_CHECK_STEPS="eager fmnist& tests wait study": fmnist in the background while the tests run
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
LOG="$OUTDIR/gpu_check.log"
STEPLOG="$OUTDIR/.steps.tsv"
: >"$LOG"
: >"$STEPLOG"
T0=$(date +%s)

if [ -z "${FASHION_MNIST_ROOT:-}" ]; then
  for d in .data/fashion-mnist shared/fashion-mnist /usr/share/datasets/fashion-mnist; do
    if [ -d "$d" ]; then FASHION_MNIST_ROOT=$d; break; fi
  done
fi
export FASHION_MNIST_ROOT=${FASHION_MNIST_ROOT:-/usr/share/datasets/fashion-mnist}

if [ "$DEV" = cpu ]; then  # dry run: every step's code path, at sizes a shared 2-core CPU runs in seconds
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1  # a crowded CPU: one thread each beats oversubscribed spinning
  TT_COMMON=(--device cpu --model convnext_atto --size 32 --batch 2 --amp bf16 --drop-path 0.1
             --rounds 1 --steps 1 --warmup 1)
  TT_COMPILED=(--compile both --compile-backend aot_eager)
  DP_ARGS=(--device cpu --batch 8 --steps 2 --rounds 1 --warmup 1 --workers 1 --settle 1 --limit-train 512)
  SS_ARGS=(--device cpu --amp bf16 --formats channels_last --batch 4 --steps all --rounds 1 --iters 1)
  STUDY_SHAPES=${GPU_CHECK_STUDY_SHAPES:-32:0.0625}
  FMNIST_EXTRA="--runtime.device cpu --runtime.amp none --opt.epochs 1 --opt.warmup_epochs 0.2 --data.limit_train 1024
                --data.holdout 512 --runtime.threads 1 --set model.overrides.depths=[1,1,1]
                --set model.overrides.dims=[16,32,64]"
  CAP_TESTS=120; CAP_EAGER=60; CAP_DATA=60; CAP_STUDY=60
  GC_ARGS=(--device cpu --model convnext_atto --size 32 --batch 2 --rounds 1 --steps 1 --threads 1)
  ROADMAP_ARGS=(--image-size 32 --width-mult 0.0625 --batch-size 8 --train-images 32 --val-images 16 --threads 1)
  ROADMAP_EPOCHS=2 ROADMAP_STEPS=resnet50,roadmap_patchify,roadmap_separate_downsampling ROADMAP_JOBS=2
  ROADMAP_OUT=${TMPDIR:-/tmp}/gpu_check_sweeps/roadmap-gpu  # never the repo's results/
else
  TT_COMMON=(--device cuda --model convnext_tiny --size 224 --batch 128 --amp bf16 --drop-path 0.1
             --rounds 10 --steps 5 --warmup 3)
  TT_COMPILED=(--compile both)
  DP_ARGS=(--device cuda)
  SS_ARGS=(--device cuda --amp bf16 --formats channels_last --batch 128 --steps all --rounds 2 --iters 10)
  # size:width pairs: the GPU budget's (128 px, unscaled; 2026-11-27: ~49 GPU-minutes at 10 passes), and the two
  # cheaper ways to a plateau in issue #16's 10 minutes
  STUDY_SHAPES=${GPU_CHECK_STUDY_SHAPES:-128:1 64:1 128:0.5}
  FMNIST_EXTRA=""
  CAP_TESTS=150; CAP_EAGER=75; CAP_DATA=90; CAP_STUDY=80
  GC_ARGS=(--device cuda --model convnext_tiny --size 224 --batch 128 --amp bf16 --channels-last --rounds 3 --steps 5)
  ROADMAP_ARGS=(--threads 1)  # each run's host side is one Python thread issuing small kernels
  ROADMAP_EPOCHS=$("$PY" -c "from convnext.study import get_budget; print(get_budget('gpu').epochs)")
  ROADMAP_STEPS="" ROADMAP_JOBS=${GPU_CHECK_ROADMAP_JOBS:-8}
  ROADMAP_OUT=results/roadmap-gpu  # issue #16's output folder: a partial study committed from a timed-out run resumes
fi
FMNIST_GROUP=${GPU_CHECK_FMNIST_GROUP:-gpu}  # the sweep.py group the fmnist step runs (gpu, gpu_60ep)
SWEEP_DIR=${TMPDIR:-/tmp}/gpu_check_sweeps  # the runs' folders (their weights stay on the machine)
RESERVE_AFTER_FMNIST=${RESERVE_AFTER_FMNIST:-70}  # seconds of the budget the fmnist step leaves to the steps after it

PYTEST_TIMEOUT=$("$PY" -c "import pytest_timeout" 2>/dev/null && echo "--timeout=${GPU_CHECK_TEST_TIMEOUT_S:-100}")
say() { echo "$*" | tee -a "$LOG"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }

# run_step NAME CAP OUTPUT_FILE CMD...: under timeout min(CAP, what is left of the budget); the command's own
# --budget-s (when it takes one) is that timeout less 20 s, so it stops adding rounds and writes its JSON in time.
run_step() {
  local name=$1 cap=$2 out=$3; shift 3
  local t=$(( $(left) < cap ? $(left) : cap ))
  if [ "$t" -lt 15 ]; then
    say "== $name: skipped, $(left) s of the budget left"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" 125 0 0 "$out" >>"$STEPLOG"
    return
  fi
  local cmd=("$@")
  if [[ " ${cmd[*]} " == *" --budget-s "* ]]; then
    for i in "${!cmd[@]}"; do [ "${cmd[$i]}" = --budget-s ] && cmd[$((i + 1))]=$(( t > 40 ? t - 20 : t / 2 )); done
  fi
  say "== $name (timeout ${t} s): ${cmd[*]}"
  local s=$(date +%s)
  timeout --kill-after=10 "$t" "${cmd[@]}" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  local secs=$(( $(date +%s) - s ))
  say "== $name: rc $rc in ${secs} s$([ "$rc" = 124 ] && echo ' (timed out)')"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$secs" "$t" "$out" >>"$STEPLOG"
  summary
}

summary() {
  "$PY" - "$STEPLOG" "$OUTDIR/summary.json" "$DEV" "$BUDGET" "$(( $(date +%s) - T0 ))" "$FASHION_MNIST_ROOT" <<'EOF'
import json, os, sys
steplog, out, dev, budget, elapsed, fmnist = sys.argv[1:]
steps = []
for line in open(steplog):
    name, rc, secs, timeout, path = line.rstrip("\n").split("\t")
    step = {"step": name, "rc": int(rc), "seconds": int(secs), "timeout_s": int(timeout),
            "status": {"0": "ok", "124": "timed out", "125": "skipped (budget)"}.get(rc, "failed")}
    if path and os.path.isfile(path):
        step["output"] = os.path.basename(path)
        try:
            d = json.load(open(path))
        except ValueError:
            d = None
        if isinstance(d, dict) and d.get("benchmark") == "train_throughput":
            step["headline"] = {"gpu": d.get("gpu"), "complete": d.get("complete"), "rounds": d.get("rounds"),
                                "img_per_s": d.get("img_per_s"), "targets": d.get("targets"),
                                "compiled_vs_eager": d.get("compiled_vs_eager"),
                                "warmup_seconds": d.get("warmup_seconds"), "failed": d.get("failed")}
            for label, g in (d.get("groups") or {}).items():
                step["headline"][label] = {"timm_best": g["timm_best"], "ratio_vs_timm_best": g["ratio_vs_timm_best"],
                                           "best_of_ratio_vs_timm_best": g["best_of_ratio_vs_timm_best"]}
        elif isinstance(d, dict) and str(d.get("group")).startswith("gpu"):  # the Fashion-MNIST runs
            # the held-out scores sweep.py --test-best chose by (its best_heldout), not a second computation of them
            step["headline"] = {"heldout_best": d["test"]["heldout_top1"] if "test" in d else None,
                                "wall_s": {r["run"]: r["wall_s"] for r in d.get("runs", [])},
                                "test": {k: d["test"][k] for k in ("chosen", "test_top1")} if "test" in d else None}
        elif isinstance(d, dict) and "results" in d and "width_mult" in d:  # study step speed
            step["headline"] = {"device": d.get("device"), "complete": d.get("complete"),
                                "img_per_s": {r["step"]: r.get("channels_last_img_s") for r in d["results"]}}
        elif isinstance(d, dict) and str(d.get("check", "")).startswith("plateau"):  # the roadmap step's
            step["headline"] = {k: d.get(k) for k in ("study_complete", "runs_done", "runs_planned", "wall_time_s",
                                                      "epochs", "steps")}
        elif isinstance(d, dict) and d.get("benchmark") == "grad_checkpointing":
            step["headline"] = {k: d.get(k) for k in ("machine", "complete", "ways", "kept_ratio", "peak_ratio",
                                                      "speed_ratio", "same_first_loss")}
        elif isinstance(d, dict) and d.get("benchmark") == "data_pipeline":
            step["headline"] = {k: d.get(k) for k in ("gpu", "complete", "rounds", "img_per_s", "ratio_vs_synthetic",
                                                      "best_of_ratio_vs_synthetic", "met", "feeds", "notes")}
    if name == "tests" and os.path.isfile(path):
        import xml.etree.ElementTree as ET
        try:
            root = ET.parse(path).getroot()
            suites = [root] if root.tag == "testsuite" else list(root)
            step["headline"] = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
        except ET.ParseError:
            pass
    steps.append(step)
json.dump({"device": dev, "budget_s": int(budget), "elapsed_s": int(elapsed), "fashion_mnist_root": fmnist,
           "all_ok": all(s["rc"] == 0 for s in steps), "steps": steps},
          open(out, "w"), indent=2)
EOF
}

# CPU tests that failed on the one H100 run so far (issue #18) and pass on every CPU here, torch 2.11 included:
# rerun with full tracebacks until a GPU machine shows them passing
FORMER_FAILURES="test_micro_run_with_timm_peer or test_every_registered_model_round_trips_in_our_layout"
FORMER_FAILURES="$FORMER_FAILURES or test_skipping_dropped_samples_equals_masking_them or test_gradcheck"
FORMER_FAILURES="$FORMER_FAILURES or test_two_process_gloo_run_matches_single_process or test_ema_equals_hand_computed"

say "== gpu_check ($DEV, budget ${BUDGET} s) $(date -u +%FT%TZ) in $(pwd)"
if [ "$DEV" != cpu ]; then
  (nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv) 2>&1 | tee -a "$LOG"
fi
timeout 60 "$PY" -c "
import platform, torch, timm, torchvision
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__, 'torchvision', torchvision.__version__,
      'python', platform.python_version(), 'cpus', __import__('os').cpu_count())
print('gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)
" 2>&1 | tee -a "$LOG"

run_one() {
  case $1 in
    tests)
      # -v names each test as it ends; with pytest-timeout (the GPU machine has it) one slow test fails alone
      # instead of taking the step's whole timeout: on the first H100 try (2026-11-27) the step timed out twice
      # (150 s beside three training runs; 180 s alone with -n 8) with no test named
      run_step tests "$CAP_TESTS" "$OUTDIR/pytest.xml" \
        "$PY" -m pytest -v -p no:cacheprovider -rs --tb=long --durations=0 $PYTEST_TIMEOUT tests \
        -k "cuda or $FORMER_FAILURES" --junitxml="$OUTDIR/pytest.xml" ;;
    eager)
      run_step eager "$CAP_EAGER" "$OUTDIR/train_throughput_eager.json" \
        "$PY" benchmarks/train_throughput.py "${TT_COMMON[@]}" --compile off --budget-s 0 \
        -o "$OUTDIR/train_throughput_eager.json" ;;
    data)
      run_step data "$CAP_DATA" "$OUTDIR/data_pipeline.json" \
        "$PY" benchmarks/data_pipeline.py "${DP_ARGS[@]}" --budget-s 0 -o "$OUTDIR/data_pipeline.json" ;;
    compiled)
      run_step compiled 600 "$OUTDIR/train_throughput_compiled.json" \
        "$PY" benchmarks/train_throughput.py "${TT_COMMON[@]}" "${TT_COMPILED[@]}" --budget-s 0 \
        -o "$OUTDIR/train_throughput_compiled.json" ;;
    memory)
      run_step memory 60 "$OUTDIR/grad_checkpointing.json" \
        "$PY" benchmarks/grad_checkpointing.py "${GC_ARGS[@]}" --out "$OUTDIR/grad_checkpointing.json" ;;
    fmnist)  # three Fashion-MNIST runs sharing the GPU, the best on held-out images then read on the test split
      run_step fmnist $(( $(left) - RESERVE_AFTER_FMNIST )) "$OUTDIR/fmnist_$FMNIST_GROUP.json" \
        "$PY" benchmarks/recipes/sweep.py "$FMNIST_GROUP" --jobs 3 --out "$SWEEP_DIR" --save "$OUTDIR/fmnist_$FMNIST_GROUP.json" \
        --test-best --eval-device "$DEV" --extra "$FMNIST_EXTRA"
      # per-epoch metrics, configs and logs of every run (no weights), for the record
      (cd "$SWEEP_DIR" && find "$FMNIST_GROUP" \( -name metrics.jsonl -o -name config.yaml -o -name '*.log' -o -name done \) -print0 |
        tar --null -czf "$OUTDIR/fmnist_${FMNIST_GROUP}_runs.tar.gz" -T -) 2>&1 | tee -a "$LOG" ;;
    study)  # every roadmap network at each size:width of STUDY_SHAPES, one at a time on the GPU: sizes its budget
      mkdir -p "$SWEEP_DIR/study"
      local shape size width shape_files=()
      for shape in $STUDY_SHAPES; do
        size=${shape%%:*} width=${shape#*:}
        shape_files+=("$SWEEP_DIR/study/${size}_${width}.json")
        run_step "study_${size}px_w${width}" "$CAP_STUDY" "${shape_files[-1]}" \
          "$PY" benchmarks/study/step_speed.py "${SS_ARGS[@]}" --size "$size" --width "$width" \
          --budget-s 0 --out "${shape_files[-1]}"
      done
      # one file back for all shapes (a GPU session returns at most 8)
      "$PY" -c "
import json, os, sys
shapes = [json.load(open(f)) for f in sys.argv[2:] if os.path.isfile(f)]
json.dump({'shapes': shapes}, open(sys.argv[1], 'w'), indent=2)
" "$OUTDIR/study_step_speed.json" "${shape_files[@]}" ;;
    roadmap)  # issue #16's GPU study (--budget gpu, one seed, ROADMAP_JOBS runs sharing the GPU) and beside it the
      # plateau check: the first and last steps at twice the epochs, a study of their own (in plateau-2x/). Records
      # already in ROADMAP_OUT (a partial study brought back and committed) are not trained again.
      local common=(--data fashion_mnist --data-root "$FASHION_MNIST_ROOT" --budget gpu --seeds 1 --device "$DEV"
                    "${ROADMAP_ARGS[@]}")
      mkdir -p "$ROADMAP_OUT" "$SWEEP_DIR"
      run_step roadmap $(( $(left) - 10 )) "$OUTDIR/roadmap_gpu.tar.gz" bash -c '
        "$0" -m convnext study roadmap "${@:6}" --epochs "$1" ${2:+--steps "$2"} --jobs "$3" --out "$4" \
          --work-dir "$5/roadmap-work" &
        "$0" -m convnext study roadmap "${@:6}" --epochs $(( 2 * $1 )) --steps resnet50,roadmap_separate_downsampling \
          --jobs 2 --out "$4/plateau-2x" --work-dir "$5/roadmap-work-2x" &
        wait' "$PY" "$ROADMAP_EPOCHS" "$ROADMAP_STEPS" "$ROADMAP_JOBS" "$ROADMAP_OUT" "$SWEEP_DIR" "${common[@]}"
      # what the studies wrote (results, records, logs, figures), finished or not; the weights stay here
      tar -czf "$OUTDIR/roadmap_gpu.tar.gz" -C "$(dirname "$ROADMAP_OUT")" "$(basename "$ROADMAP_OUT")" 2>&1 | tee -a "$LOG"
      "$PY" benchmarks/study/plateau_check.py "$ROADMAP_OUT" "$ROADMAP_OUT/plateau-2x" "$OUTDIR/roadmap_gpu.json" 2>&1 |
        tee -a "$LOG"
      printf '%s\t%s\t%s\t%s\t%s\n' roadmap_plateau 0 0 0 "$OUTDIR/roadmap_gpu.json" >>"$STEPLOG" ;;
    wait) wait ;;  # for the steps started in the background
    *) say "unknown step $1 (steps: tests eager data compiled memory fmnist study roadmap wait; NAME& runs in the background)" ;;
  esac
}

for step in $STEPS; do
  case $step in
    *'&') run_one "${step%&}" & ;;
    *) run_one "$step" ;;
  esac
done
wait
summary
rm -f "$STEPLOG"
say "== done in $(( $(date +%s) - T0 )) s; summary: $OUTDIR/summary.json"
"$PY" -c "
import json, sys
d = json.load(open(sys.argv[1]))
for s in d['steps']:
    print(f\"{s['step']:<9} {s['status']:<18} rc {s['rc']:>3} {s['seconds']:>4} s  {json.dumps(s.get('headline', {}))[:600]}\")
" "$OUTDIR/summary.json" | tee -a "$LOG"
