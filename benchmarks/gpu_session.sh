#!/usr/bin/env bash
# Issue 15's GPU figures (targets 2 and 5) in one call of a lent GPU machine, prepared on the CPU.
#
# The GPU image has PyTorch, scikit-learn, scipy, rich and PyYAML, but not faiss, pydantic or open_clip, and it
# reaches no package index; Ray's wheel is too large to carry, so nothing here starts Ray.
#
#   bash benchmarks/gpu_session.sh fetch   # here, once: the missing wheels (Python 3.12) into .device-wheels/
#   bash benchmarks/gpu_session.sh dry     # here: every step on the CPU at toy sizes, to check the wiring
#   bash benchmarks/gpu_session.sh run     # there: device run with carry [".device-wheels"], timeout_s 600
#   bash benchmarks/gpu_session.sh compile # there, a second call if device time remains: CoOp under torch.compile
#   bash benchmarks/gpu_session.sh papers  # there, another: CB, CB+SQ and CEC at 1.28 M with their scale options
#
# `run` writes under $OUT (what the device tool brings back), each step bounded so the whole stays in one call:
#   gpu.txt          nvidia-smi and torch's view of the device
#   acquisition.txt  every strategy whose defaults fit, at the ImageNet protocol (1.28 M rows), --device cuda
#   vit.txt          the ViT-B/16 fp16 image tower alone, eager and under torch.compile (issue 15's target:
#                    >= 11,000 images/s; eager ran 9,806 on an H100 in session 2)
#   prompts.txt      the CoOp feature-path step beside the text tower's own bound on ViT-B/16 (target: <= 1.5x)
# `compile` writes compile.txt: the same step at C = 100 eager, under torch.compile, and with CUDA graphs
# (mode reduce-overhead), each with its compilation and capture time (about 4 minutes), and learner_compile.txt:
# whole `coop` fits with the learners' `compile` option in both modes, cold and warm, beside eager (at most 300 s;
# each finished process prints its line at once).
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=.device-wheels
PINNED="faiss-cpu==1.15.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
open-clip-torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4"
STRATEGIES=random,entropy,margin,least_confidence,bald,coreset,badge,typiclust,probcover,dropquery,centroid,gcnal
OUT=${OUT:-gpu-out}
# The papers' methods at the ImageNet protocol take these options on any device (README, "The papers' methods at scale").
CB_SCALE='{"max_points_per_centroid": 8, "init": "random", "kmeans_iters": 10, "precision": "bf16"}'
PAPER_OPTIONS="{\"cb\": $CB_SCALE, \"cbsq\": $CB_SCALE, \"cec\": {\"knn\": \"cells\", \"max_points_per_centroid\": 256}}"

# The device machine has no package index: install the carried wheels, and make the folder that comes back.
prepare_device() {
  # shellcheck disable=SC2086
  python3 -m pip install --quiet --no-index --find-links "$WHEELS" $PINNED
  mkdir -p "$OUT"
}

case "${1:-}" in
  fetch)
    # shellcheck disable=SC2086
    python3 -m pip download --quiet --dest "$WHEELS" --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any $PINNED
    du -sh "$WHEELS"
    exit 0 ;;
  dry)
    PY=${PYTHON:-.venv/bin/python}
    SCALE=(--n 20000 --classes 100 --budget 100 --labelled 1000 --device cpu)
    VIT=(--n 512 --batch-size 256 --compile default)
    PROMPTS=(--model tiny-clip --classes 10 --steps 3 --device cpu --targets --compile default) ;;
  compile)
    prepare_device
    PYTHONPATH=$PWD timeout 270 python3 benchmarks/prompt_training.py --model ViT-B-16 --device cuda --classes 100 \
      --compile default,reduce-overhead --timeout 240 > "$OUT/compile.txt" 2>&1 || echo "compile: exit $?" >> "$OUT/compile.txt"
    PYTHONPATH=$PWD timeout 300 python3 benchmarks/learner_compile.py --model ViT-B-16 --device cuda --classes 100 \
      --modes default,reduce-overhead --timeout 120 > "$OUT/learner_compile.txt" 2>&1 \
      || echo "learner_compile: exit $?" >> "$OUT/learner_compile.txt"
    tail -n 12 "$OUT/compile.txt" "$OUT/learner_compile.txt"
    exit 0 ;;
  papers)
    prepare_device
    PYTHONPATH=$PWD timeout 540 python3 benchmarks/acquisition_scale.py --n 1280000 --classes 1000 --budget 1000 \
      --labelled 10000 --round 8 --device cuda --timeout 240 --strategies cb,cbsq,cec --no-quality --targets \
      --options "$PAPER_OPTIONS" > "$OUT/papers.txt" 2>&1 || echo "papers: exit $?" >> "$OUT/papers.txt"
    tail -n 12 "$OUT/papers.txt"
    exit 0 ;;
  run)
    PY=python3
    prepare_device
    SCALE=(--n 1280000 --classes 1000 --budget 1000 --labelled 10000 --device cuda --timeout 240)
    VIT=(--n 100000 --batch-size 512 --compile default)
    PROMPTS=(--model ViT-B-16 --device cuda --targets) ;;
  *)
    echo "usage: bash benchmarks/gpu_session.sh fetch|dry|run|compile|papers" >&2
    exit 2 ;;
esac

mkdir -p "$OUT"
export PYTHONPATH=$PWD
{ nvidia-smi || true; $PY -c "import torch; print(torch.__version__, torch.cuda.is_available() and
torch.cuda.get_device_name())"; } > "$OUT/gpu.txt" 2>&1
# Each step may fail on its own (its output says why) without losing the others' figures.
timeout 380 $PY benchmarks/acquisition_scale.py "${SCALE[@]}" --strategies "$STRATEGIES" --no-quality --targets \
  > "$OUT/acquisition.txt" 2>&1 || echo "acquisition: exit $?" >> "$OUT/acquisition.txt"
timeout 100 $PY benchmarks/embed_throughput.py --gpu-vit-only "${VIT[@]}" > "$OUT/vit.txt" 2>&1 \
  || echo "vit: exit $?" >> "$OUT/vit.txt"
timeout 90 $PY benchmarks/prompt_training.py "${PROMPTS[@]}" > "$OUT/prompts.txt" 2>&1 \
  || echo "prompts: exit $?" >> "$OUT/prompts.txt"
tail -n 3 "$OUT"/*.txt
