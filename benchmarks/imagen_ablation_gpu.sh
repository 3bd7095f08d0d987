#!/bin/bash
# The base ablations of docs/results.md ("What moves the score") on one GPU machine.
# Here, once:
#   echo /.gpu/ >> .git/info/exclude
#   python benchmarks/imagen_ablation.py --pack_minilm .gpu/site
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .gpu/whl ml_collections
# There (carry .gpu): bash benchmarks/imagen_ablation_gpu.sh, with $OUT set.
# Three processes share the GPU (each a third of its memory); rows go to $OUT/p*/results.jsonl.
set -u
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.gpu/site:$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.3
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__)"
python3 benchmarks/imagen_ablation.py --render_only 20000,200000 --data_cache /tmp/cache || exit 1
P1=(--variant base --variant 'data200k|train_size=200000' --variant 'lr2e-3|optimizer.learning_rate=0.002')
P2=(--variant 'sa16|model.self_attention_levels=(False,True,True)'
    --variant 'xattn32|model.cross_attention_levels=(True,True,True)' --variant 'steps8000|train.num_steps=8000')
P3=(--variant 'wide48|model.base_channels=48' --variant 'batch64|data.batch_size=64')
A="timeout ${LIMIT:-480} python3 benchmarks/imagen_ablation.py --data_cache /tmp/cache --num ${NUM:-200}"
$A --out "$OUT/p1" "${P1[@]}" > "$OUT/p1.log" 2>&1 &
$A --out "$OUT/p2" "${P2[@]}" > "$OUT/p2.log" 2>&1 &
$A --out "$OUT/p3" "${P3[@]}" > "$OUT/p3.log" 2>&1 &
wait
# Then, alone on the GPU (one process, 100 prompts per split):
#   python3 benchmarks/imagen_ablation.py --out $OUT/p4 --num 100 \
#       --variant 'b64s8000|data.batch_size=64|train.num_steps=8000'
tail -n 30 "$OUT"/p*.log
