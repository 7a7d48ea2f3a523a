#!/usr/bin/env bash
# Everything this project checks on a GPU, for one call on a lent GPU machine (the `device`
# tool; docs/benchmarks.md "GPU"). Each named part runs under its own time limit and logs
# to $OUT/<part>.log; a part's failure is reported and the next part still runs.
#
#   bash benchmarks/gpu_session.sh env tests variants          # call 1
#   bash benchmarks/gpu_session.sh env models                  # call 2
#   bash benchmarks/gpu_session.sh env step                    # the step (<= 10 min)
#
# Parts: env (GPU, versions), tests (the suite's CUDA cases: `pytest -k cuda`), suite (the
# whole suite, CUDA present), variants (bench_variants.py, bf16), models (bench_models.py,
# eager + compiled vs timm), sets (bench_variant_sets.py per model and task), step
# (bench_step.py: the compiled training step vs timm's, bf16, LAMB both sides, MFU and the
# optimizer's share; STEP_BUDGET seconds per model, compilation included, 3 x 170 s).
# Packages the image lacks travel as wheels in .whl/ (carried, git-ignored).
set -uo pipefail
OUT=${OUT:-./gpu_results}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
MODELS=${MODELS:-caformer_s18 convformer_s18 poolformerv2_s12}
# pytest-xdist where installed (the lent machines' image has it; the test extras do not)
python3 -c "import xdist" 2>/dev/null && XDIST=(-n 4) || XDIST=()
BATCH=${BATCH:-128}

part() {  # part NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "=== $name: rc $rc in $((SECONDS - t0)) s"
  tail -n "${TAIL:-25}" "$OUT/$name.log"
}

for p in "$@"; do
  case $p in
    env) part env 60 bash -c 'nvidia-smi; python3 -c "import torch, timm, sys; \
print(sys.version); print(\"torch\", torch.__version__, \"timm\", timm.__version__, \
torch.cuda.get_device_name(0)); import mfdsl; print(\"mfdsl from\", mfdsl.__file__)"' ;;
    tests) part tests "${LIMIT:-420}" python3 -m pytest -q -p no:cacheprovider "${XDIST[@]}" -k cuda \
             tests/test_layers_variants.py tests/test_data_folder.py tests/test_target_gpu_defaults.py \
             tests/test_runner_compiled.py ;;
    suite) part suite "${LIMIT:-540}" python3 -m pytest -q -p no:cacheprovider "${XDIST[@]}" -x ;;
    variants) part variants "${LIMIT:-240}" python3 benchmarks/bench_variants.py \
                --device cuda --dtype bf16 --batch "${VBATCH:-64}" --rounds 7 --iters 5 \
                --json "$OUT/variants_cuda.json" ;;
    models) part models "${LIMIT:-540}" python3 benchmarks/bench_models.py $MODELS \
              --device cuda --batch "$BATCH" --compile --rounds 5 --iters 5 --warmup 3 \
              --json "$OUT/models_cuda.json" ;;
    step) part step "${LIMIT:-530}" python3 benchmarks/bench_step.py $MODELS --device cuda \
            --batch "$BATCH" --dtype bf16 --budget-s "${STEP_BUDGET:-170}" --out "$OUT" ;;
    sets) for m in $MODELS; do for t in train infer; do
            part "sets_${m}_$t" "${LIMIT:-200}" python3 benchmarks/bench_variant_sets.py "$m" \
              --device cuda --task "$t" --batch "$BATCH" --rounds 7 --iters 5 \
              --sets "${SETS:-eager,compiled:table,compiled:none,compiled:all}"
          done; done ;;
    *) echo "unknown part $p"; exit 2 ;;
  esac
done
