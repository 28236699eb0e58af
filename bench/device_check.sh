#!/usr/bin/env bash
# The accelerator measurements of docs/benchmarks.md in one prepared run (issue 8's targets):
# sized for one 10-minute call on a single H100/H200 with JAX, torch and flax preinstalled
# (nothing is installed; the repo root goes on PYTHONPATH).
#
#   bash bench/device_check.sh                  # on the GPU machine; results in $OUT or runs/device_check
#   DEVICE_CHECK_CONFIG=tiny bash bench/device_check.sh    # the same steps on the tiny config (CPU smoke)
#
# Steps (each under its own time limit, so one slow step cannot eat the others):
#   versions    jax / torch / flax versions and devices
#   attention   which kernel attention_impl=auto picks here
#   suite       python -m bench.run: forward, sampler, likelihood, train step vs torch, MFU (auto attention)
#   xla         forward + train step with attention_impl=xla, JAX only (the fused kernel's gain)
#   attn        attention alone: xla vs the backend's fused kernel vs torch SDPA, fwd and fwd+bwd
#   kv_cache    the prefix / dual KV cache at the same shapes
# Writes device_check.log (everything printed) and one markdown file per benchmark step.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-runs/device_check}
CONFIG=${DEVICE_CHECK_CONFIG:-llada8b}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
LOG="$OUT/device_check.log"
: > "$LOG"

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    echo "== $name rc=${PIPESTATUS[0]} in $((SECONDS - t0))s" | tee -a "$LOG"
}

# shellcheck disable=SC2054  # the commas are inside single arguments (--only a,b)
if [ "$CONFIG" = "tiny" ]; then
    SUITE=(--config tiny --quick --only forward,sampler)  # the script's mechanics; the benchmarks have their own tests
    XLA=(--config tiny --quick --only forward)
    KV=(--batch 2 --prompt_len 16 --gen_length 32 --block_length 16 --rules eb)
    ATTN=(--iters 2)
else
    SUITE=(--config llada8b)
    XLA=(--config llada8b --only forward,train_step --no_torch)
    KV=(--llada8b --batch 8 --prompt_len 128 --gen_length 256 --rules eb,threshold)
    ATTN=(--llada8b)
fi

step versions 60 "$PY" -c "import jax, flax, torch; print('jax', jax.__version__, jax.devices()); \
print('flax', flax.__version__, '| torch', torch.__version__, 'cuda', torch.cuda.is_available())"
step attention 60 "$PY" -c "import jax; from diffpo_jax.models.attention import resolve_impl; \
print('attention_impl=auto ->', resolve_impl('auto', 'bfloat16', 128), 'on', jax.default_backend())"
step suite 300 "$PY" -m bench.run "${SUITE[@]}" --out "$OUT/bench_suite.md"
step xla 150 "$PY" -m bench.run "${XLA[@]}" --attention_impl xla --out "$OUT/bench_xla.md"
step attn 60 bash -c "$PY -m bench.attention ${ATTN[*]} > '$OUT/bench_attention.md'; rc=\$?; cat '$OUT/bench_attention.md'; exit \$rc"
step kv_cache 120 bash -c "$PY -m bench.kv_cache ${KV[*]} > '$OUT/bench_kv_cache.md'; rc=\$?; cat '$OUT/bench_kv_cache.md'; exit \$rc"
echo "== done; files in $OUT" | tee -a "$LOG"
