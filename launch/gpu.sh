#!/usr/bin/env bash
# Single GPU host launcher for diffpo-jax (one process driving all local GPUs).
# Run `launch/gpu.sh --help`; --dry-run prints every command instead of running it.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/gpu.sh SUBCOMMAND [options] [-- extra train arguments]

Subcommands (run from anywhere; everything happens in the repo root):
  setup     create a venv and `pip install -e .[gpu]` (jax with CUDA 12 wheels)
  convert   HF checkpoint -> orbax: python -m diffpo_jax.convert import --hf_dir --out,
            run through diffpo_jax.distributed (multi-host aware); optional: training
            also reads an HF directory directly
  train     python -m diffpo_jax.train --config CONFIG [extra args], with
            XLA_PYTHON_CLIENT_MEM_FRACTION set; output shown and appended to logs/RUN.log
            (--detach: in the background, pid in logs/RUN.pid)
  logs      follow logs/RUN.log
  kill      stop a detached run (logs/RUN.pid)

Options (flag, or the environment variable in brackets):
  --config PATH         experiment config, e.g. configs/llada8b.py:gsm8k,2mf_is [CONFIG] (train)
  --run NAME            run name: logs/NAME.log, logs/NAME.pid [RUN=train]
  --hf-dir DIR          HF LLaDA directory [HF_DIR]                      (convert)
  --out DIR             orbax output directory [OUT]                     (convert)
  --mem-fraction F      XLA_PYTHON_CLIENT_MEM_FRACTION: share of each GPU's memory JAX
                        preallocates [MEM_FRACTION=0.9]
  --gpus LIST           CUDA_VISIBLE_DEVICES, e.g. 0,1 (default: all)  [GPUS]
  --env KEY=VALUE       extra environment for convert/train (repeatable)
  --venv DIR            virtual environment, relative to the repo [VENV=.venv];
                        "none": use PYTHON as it is
  --python EXE          interpreter that creates the venv [PYTHON=python3]
  --detach              train in the background (nohup)
  --no-follow           logs: print the last lines and exit
  --dry-run             print every command, fully expanded, instead of running it
  -h, --help            this help

Several GPU hosts: run the same train command on every host with DIFFPO_COORDINATOR=
HOST0:PORT DIFFPO_NUM_PROCESSES=N DIFFPO_PROCESS_ID=i (i = 0..N-1) in the environment.

Example:
  launch/gpu.sh setup
  launch/gpu.sh convert --hf-dir /ckpt/LLaDA-8B-Instruct --out /ckpt/llada_jax
  launch/gpu.sh train --config configs/llada8b.py:gsm8k,2mf_is -- \
      --config.model.hf_dir=/ckpt/LLaDA-8B-Instruct --config.train.out_dir=runs/gsm8k
EOF
}

PROG=gpu.sh
case $0 in */*) HERE=${0%/*} ;; *) HERE=. ;; esac
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"
REPO=$(cd "$HERE/.." && pwd)

CONFIG=${CONFIG:-}
RUN=${RUN:-train}
HF_DIR=${HF_DIR:-}
OUT=${OUT:-}
MEM_FRACTION=${MEM_FRACTION:-0.9}
GPUS=${GPUS:-}
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
DETACH=0
FOLLOW=1
DRY_RUN=${DRY_RUN:-0}
CMD=""
ENVS=()
EXTRA=()

while (($#)); do
  opt=$1 val="" has_val=0
  if [[ $opt == --*=* ]]; then val=${opt#*=}; opt=${opt%%=*}; has_val=1; fi
  var=""
  case $opt in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --detach) DETACH=1 ;;
    --no-follow) FOLLOW=0 ;;
    --config) var=CONFIG ;;
    --run) var=RUN ;;
    --hf-dir) var=HF_DIR ;;
    --out) var=OUT ;;
    --mem-fraction) var=MEM_FRACTION ;;
    --gpus) var=GPUS ;;
    --env) var=ENV ;;
    --venv) var=VENV ;;
    --python) var=PYTHON ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) die "unknown option '$opt' (see --help)" ;;
    *)
      [[ -z $CMD ]] || die "unexpected argument '$opt' (extra train arguments go after --)"
      CMD=$opt ;;
  esac
  if [[ -n $var ]]; then
    if ((!has_val)); then
      (($# >= 2)) && [[ $2 != --* ]] || die "option $opt needs a value"
      val=$2
      shift
    fi
    if [[ $var == ENV ]]; then
      [[ $val =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env '$val': expected KEY=VALUE"
      ENVS+=("$val")
    else
      printf -v "$var" '%s' "$val"
    fi
  fi
  shift
done

[[ -n $CMD ]] || { usage >&2; die "no subcommand given"; }
case $CMD in setup | convert | train | logs | kill) ;;
  *) die "unknown subcommand '$CMD' (one of: setup convert train logs kill)" ;;
esac
[[ $RUN =~ ^[A-Za-z0-9_.-]+$ ]] || die "--run '$RUN': use letters, digits, _ . -"
[[ $MEM_FRACTION =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] || die "--mem-fraction '$MEM_FRACTION': expected a number in (0, 1]"

if [[ $VENV == none ]]; then PY=$PYTHON; else PY=$VENV/bin/python; fi
LOG=logs/$RUN.log
PIDFILE=logs/$RUN.pid

if [[ $DRY_RUN == 1 ]]; then run cd "$REPO"; fi
cd "$REPO"

# The environment of convert/train as KEY=VALUE words: multi-host variables from the
# caller's environment, GPU settings, then every --env.
env_words() {
  local out="XLA_PYTHON_CLIENT_MEM_FRACTION=$MEM_FRACTION" k kv
  if [[ -n $GPUS ]]; then out+=" CUDA_VISIBLE_DEVICES=$(q "$GPUS")"; fi
  for k in DIFFPO_DISTRIBUTED DIFFPO_COORDINATOR DIFFPO_NUM_PROCESSES DIFFPO_PROCESS_ID; do
    if [[ -n ${!k:-} ]]; then out+=" $k=$(q "${!k}")"; fi
  done
  for kv in ${ENVS[@]+"${ENVS[@]}"}; do out+=" ${kv%%=*}=$(q "${kv#*=}")"; done
  printf '%s' "$out"
}

cmd_setup() {
  if [[ $VENV != none ]]; then
    if [[ $DRY_RUN == 1 || ! -x $VENV/bin/pip ]]; then run "$PYTHON" -m venv "$VENV"; fi
    run "$PY" -m pip install -U pip
  fi
  run "$PY" -m pip install -e ".[gpu]"
  run "$PY" -c "import jax; print(jax.__version__, jax.devices())"
}

cmd_convert() {
  need HF_DIR --hf-dir "the HF LLaDA directory (config.json + *.safetensors)"
  need OUT --out "the orbax output directory"
  run_sh "env $(env_words) $(qwords "$PY" -m diffpo_jax.distributed diffpo_jax.convert import --hf_dir "$HF_DIR" --out "$OUT")"
}

cmd_train() {
  need CONFIG --config "the experiment config, e.g. configs/llada8b.py:gsm8k,2mf_is"
  local cmd
  cmd="env $(env_words) $(qwords "$PY" -m diffpo_jax.train --config "$CONFIG" ${EXTRA[@]+"${EXTRA[@]}"})"
  run mkdir -p logs
  if [[ $DETACH == 1 ]]; then
    run_sh "nohup $cmd >> $LOG 2>&1 < /dev/null & echo \$! > $PIDFILE"
    if [[ $DRY_RUN != 1 ]]; then echo "started pid $(cat "$PIDFILE"), log $REPO/$LOG"; fi
  else
    run_sh "$cmd 2>&1 | tee -a $LOG"
  fi
}

cmd_logs() {
  if [[ $FOLLOW == 1 ]]; then run tail -n 100 -F "$LOG"; else run tail -n 100 "$LOG"; fi
}

cmd_kill() {
  if [[ $DRY_RUN != 1 && ! -f $PIDFILE ]]; then die "no $PIDFILE: nothing detached under run name '$RUN'"; fi
  run_sh "kill \$(cat $PIDFILE) && rm -f $PIDFILE"
}

"cmd_$CMD"
