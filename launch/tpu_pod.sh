#!/usr/bin/env bash
# Cloud TPU VM / pod slice launcher for diffpo-jax: plain multi-controller JAX over
# `gcloud ... ssh --worker=all` (no Pathways, no docker). Run `launch/tpu_pod.sh --help`.
# Every command can be printed instead of run with --dry-run (one per line, copy-pasteable).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu_pod.sh SUBCOMMAND [options] [-- extra train arguments]

Subcommands (run them in this order; all but fit/create/delete/status act on every worker):
  fit       on THIS machine, before paying for a TPU: compile the LLaDA-8B forward, sampler
            and train step for --accelerator with libtpu (pip install -e .[tpu]; no TPU
            needed) and print the HBM each chip needs (python -m bench.tpu_compile
            --accelerator TYPE; its options after --, e.g. -- --joint --train_rows 12)
  create    create the TPU VM / pod slice (gcloud compute tpus tpu-vm create;
            --queued: through queued resources; --spot: spot capacity)
  setup     copy this repo (and the benchmark data) to every worker with
            `tpu-vm scp --worker=all` (retried), then `pip install -e .[tpu]` in a venv
  check     start JAX multi-host on every worker and print each process's devices
  convert   copy an HF checkpoint from GCS to every worker (`gcloud storage cp -r`) and,
            with --out, run `python -m diffpo_jax.convert import` on all workers
  train     start `python -m diffpo_jax.train --config CONFIG [extra args]` on all workers
            in the background (DIFFPO_DISTRIBUTED=1); each worker logs to logs/RUN.log
  logs      stream every worker's logs/RUN.log, one prefixed stream per worker
  kill      stop the run and kill stale processes holding the TPU (/dev/accel*,
            /dev/vfio/*, /tmp/libtpu_lockfile) on all workers
  status    describe the TPU VM (or queued resource)
  delete    delete the TPU VM (or queued resource)

Options (flag, or the environment variable in brackets):
  --name NAME           TPU VM / pod slice name [NAME]                    (required)
  --zone ZONE           e.g. us-central2-b [ZONE]                         (required)
  --project PROJECT     GCP project; default: gcloud's configured one [PROJECT]
  --accelerator TYPE    e.g. v4-32, v5p-64, v5litepod-16, v6e-16 [ACCELERATOR] (create)
  --version VERSION     TPU software version [VERSION]; default from the accelerator:
                        v2/v3/v4 tpu-ubuntu2204-base, v5litepod v2-alpha-tpuv5-lite,
                        v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
  --spot                spot (preemptible, discounted) capacity [SPOT=1]
  --queued              create/delete/status through queued resources [QUEUED=1]
  --valid-until DUR     queued request expires after DUR, e.g. 6h [VALID_UNTIL]
  --config PATH         experiment config for train, e.g. configs/llada8b.py:gsm8k,2mf_is
                        [CONFIG]                                          (train)
  --run NAME            run name: worker log logs/NAME.log, pid logs/NAME.pid [RUN=train]
  --env KEY=VALUE       extra environment for convert/train/check (repeatable)
  --gcs-src GS_PATH     HF checkpoint directory on GCS [GCS_SRC]           (convert)
  --hf-dir DIR          where convert puts it on each worker
                        [HF_DIR=ckpt/LLaDA-8B-Instruct]
  --out PATH            orbax output of convert; on a multi-host slice a gs:// path that
                        every worker writes its shards to [OUT]
  --data DIR            local benchmark data shipped by setup to ../shared/data next to
                        the remote repo (where the code looks by default); "none" to skip
                        [DATA=<repo>/../shared/data if it exists]
  --remote-dir DIR      repo location on the workers, relative to $HOME
                        [REMOTE_DIR=diffpo-jax]; relative paths in every command on the
                        workers (configs, --hf-dir, train arguments) are relative to it
  --workers N           worker count for logs (default: asked from gcloud) [WORKERS]
  --no-follow           logs: print the last lines and exit instead of following
  --dry-run             print every command, fully expanded, instead of running it
  -h, --help            this help

Multi-worker ssh needs your key in the agent: ssh-add ~/.ssh/google_compute_engine

Example (v4-32, 4 workers):
  export NAME=diffpo-v4 ZONE=us-central2-b ACCELERATOR=v4-32
  launch/tpu_pod.sh fit -- --joint --workloads train_step   # does it fit? (local, ~1 min)
  launch/tpu_pod.sh create --spot
  launch/tpu_pod.sh setup
  launch/tpu_pod.sh check
  launch/tpu_pod.sh convert --gcs-src gs://BUCKET/LLaDA-8B-Instruct
  launch/tpu_pod.sh train --config configs/llada8b.py:gsm8k,2mf_is -- \
      --config.model.hf_dir=ckpt/LLaDA-8B-Instruct --config.train.out_dir=gs://BUCKET/runs/gsm8k
  launch/tpu_pod.sh logs
  launch/tpu_pod.sh kill; launch/tpu_pod.sh delete
EOF
}

PROG=tpu_pod.sh
case $0 in */*) HERE=${0%/*} ;; *) HERE=. ;; esac
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"

# ------------------------------------------------------------------ options
NAME=${NAME:-}
ZONE=${ZONE:-}
PROJECT=${PROJECT:-}
ACCELERATOR=${ACCELERATOR:-}
VERSION=${VERSION:-}
CONFIG=${CONFIG:-}
SPOT=${SPOT:-0}
QUEUED=${QUEUED:-0}
VALID_UNTIL=${VALID_UNTIL:-}
RUN=${RUN:-train}
GCS_SRC=${GCS_SRC:-}
HF_DIR=${HF_DIR:-ckpt/LLaDA-8B-Instruct}
OUT=${OUT:-}
DATA=${DATA:-}
REMOTE_DIR=${REMOTE_DIR:-diffpo-jax}
WORKERS=${WORKERS:-}
FOLLOW=1
DRY_RUN=${DRY_RUN:-0}
CMD=""
ENVS=()
EXTRA=()

REPO=$(cd "$HERE/.." && pwd)

while (($#)); do
  opt=$1 val="" has_val=0
  if [[ $opt == --*=* ]]; then val=${opt#*=}; opt=${opt%%=*}; has_val=1; fi
  var=""
  case $opt in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --spot) SPOT=1 ;;
    --queued) QUEUED=1 ;;
    --no-follow) FOLLOW=0 ;;
    --name) var=NAME ;;
    --zone) var=ZONE ;;
    --project) var=PROJECT ;;
    --accelerator) var=ACCELERATOR ;;
    --version) var=VERSION ;;
    --config) var=CONFIG ;;
    --valid-until) var=VALID_UNTIL ;;
    --run) var=RUN ;;
    --gcs-src) var=GCS_SRC ;;
    --hf-dir) var=HF_DIR ;;
    --out) var=OUT ;;
    --data) var=DATA ;;
    --remote-dir) var=REMOTE_DIR ;;
    --workers) var=WORKERS ;;
    --env) var=ENV ;;
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
case $CMD in fit | create | setup | check | convert | train | logs | kill | status | delete) ;;
  *) die "unknown subcommand '$CMD' (one of: fit create setup check convert train logs kill status delete)" ;;
esac

if [[ $CMD == fit ]]; then  # local: no TPU VM, no gcloud
  need ACCELERATOR --accelerator "the accelerator type to compile for, e.g. v4-32 or v5litepod-16"
  run_sh "cd $(q "$REPO") && $(qwords "${PYTHON:-python3}" -m bench.tpu_compile --accelerator "$ACCELERATOR" \
    ${EXTRA[@]+"${EXTRA[@]}"})"
  exit $?
fi

need NAME --name "the TPU VM / pod slice name"
need ZONE --zone "the zone, e.g. us-central2-b"
[[ -z $WORKERS || $WORKERS =~ ^[1-9][0-9]*$ ]] || die "--workers '$WORKERS': expected a positive integer"
[[ $RUN =~ ^[A-Za-z0-9_.-]+$ ]] || die "--run '$RUN': use letters, digits, _ . -"

if [[ $DRY_RUN != 1 ]] && ! command -v gcloud >/dev/null 2>&1; then
  echo "$PROG: error: gcloud not found on PATH. Install the Google Cloud SDK" \
    "(https://cloud.google.com/sdk/docs/install), run 'gcloud auth login', or add --dry-run" \
    "to print the commands." >&2
  exit 127
fi

PFLAG=()
if [[ -n $PROJECT ]]; then PFLAG=(--project="$PROJECT"); fi
TPU=(gcloud compute tpus tpu-vm)
QR=(gcloud compute tpus queued-resources)

# Run shell code $1 on every worker (from its home directory).
ssh_all() {
  run "${TPU[@]}" ssh "$NAME" --zone="$ZONE" ${PFLAG[@]+"${PFLAG[@]}"} --worker=all --command="$1"
}

# Run shell code $1 on every worker inside the repo copy.
on_all() {
  local dir
  dir=$(q "$REMOTE_DIR")
  ssh_all "cd $dir 2>/dev/null || { echo \"\$(hostname): no ~/$dir: run launch/tpu_pod.sh setup first\" >&2; exit 1; }; $1"
}

# KEY=VALUE words for the worker's shell: DIFFPO_DISTRIBUTED=1 plus every --env.
env_words() {
  local out="DIFFPO_DISTRIBUTED=1" kv
  for kv in ${ENVS[@]+"${ENVS[@]}"}; do out+=" ${kv%%=*}=$(q "${kv#*=}")"; done
  printf '%s' "$out"
}

default_version() {
  case $1 in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "cannot pick a TPU software version for accelerator '$1': pass --version" ;;
  esac
}

# ------------------------------------------------------------------ subcommands
cmd_create() {
  need ACCELERATOR --accelerator "the accelerator type, e.g. v4-32"
  local version=$VERSION
  if [[ -z $version ]]; then version=$(default_version "$ACCELERATOR"); fi
  local spot=()
  if [[ $SPOT == 1 ]]; then spot=(--spot); fi
  if [[ $QUEUED == 1 ]]; then
    local until=()
    if [[ -n $VALID_UNTIL ]]; then until=(--valid-until-duration="$VALID_UNTIL"); fi
    run "${QR[@]}" create "$NAME" --node-id="$NAME" --zone="$ZONE" ${PFLAG[@]+"${PFLAG[@]}"} \
      --accelerator-type="$ACCELERATOR" --runtime-version="$version" ${spot[@]+"${spot[@]}"} \
      ${until[@]+"${until[@]}"}
    echo "# queued: wait for state ACTIVE with: launch/tpu_pod.sh status --queued" >&2
  else
    run "${TPU[@]}" create "$NAME" --zone="$ZONE" ${PFLAG[@]+"${PFLAG[@]}"} \
      --accelerator-type="$ACCELERATOR" --version="$version" ${spot[@]+"${spot[@]}"}
  fi
}

cmd_setup() {
  local tmp=${TMPDIR:-/tmp}
  local code="$tmp/diffpo-jax-$NAME.tgz" data_tgz="$tmp/diffpo-data-$NAME.tgz"
  local data=$DATA
  if [[ -z $data && -d $REPO/../shared/data ]]; then data=$(cd "$REPO/../shared/data" && pwd); fi
  if [[ $data == none ]]; then data=""; fi
  if [[ -n $data && ! -d $data ]]; then die "--data '$data' is not a directory"; fi

  run tar -czf "$code" --exclude=./.git --exclude=./.venv --exclude=./runs --exclude=./logs --exclude=./ckpt \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude='*.egg-info' -C "$REPO" .
  local files=("$code") dir unpack
  dir=$(q "$REMOTE_DIR")
  unpack="mkdir -p $dir && tar -xzf ~/$(q "${code##*/}") -C $dir"
  if [[ -n $data ]]; then
    run tar -czf "$data_tgz" -C "$data" .
    files+=("$data_tgz")
    unpack+=" && mkdir -p $dir/../shared/data && tar -xzf ~/$(q "${data_tgz##*/}") -C $dir/../shared/data"
  fi
  retry 5 "${TPU[@]}" scp "${files[@]}" "$NAME:" --worker=all --zone="$ZONE" ${PFLAG[@]+"${PFLAG[@]}"}
  ssh_all "set -e; $unpack; cd $dir; if [ ! -x .venv/bin/pip ]; then python3 -m venv .venv || { sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv && python3 -m venv .venv; }; fi; .venv/bin/pip install -q -U pip; .venv/bin/pip install -q -e \".[tpu]\"; .venv/bin/python -c \"import jax, diffpo_jax; print(jax.__version__)\""
}

cmd_check() {
  on_all "$(env_words) .venv/bin/python -c 'from diffpo_jax import distributed as d; d.maybe_initialize(); print(d.process_info())'"
}

cmd_convert() {
  need GCS_SRC --gcs-src "the GCS directory of the HF checkpoint, e.g. gs://BUCKET/LLaDA-8B-Instruct"
  [[ $GCS_SRC == gs://* ]] || die "--gcs-src '$GCS_SRC': expected a gs:// path"
  local dir
  dir=$(q "$HF_DIR")
  on_all "set -e; mkdir -p $dir; gcloud storage cp -r $(q "${GCS_SRC%/}/*") $dir/"
  if [[ -z $OUT ]]; then
    echo "# no --out: the HF checkpoint is at $REMOTE_DIR/$HF_DIR on every worker (use --config.model.hf_dir=$HF_DIR)" >&2
    return
  fi
  if [[ $OUT != gs://* ]]; then
    echo "# note: on a multi-host slice --out must be a path every worker shares (gs://...): all write to it" >&2
  fi
  on_all "mkdir -p logs; $(env_words) .venv/bin/python -m diffpo_jax.distributed diffpo_jax.convert import --hf_dir $dir --out $(q "$OUT") > logs/convert.log 2>&1; rc=\$?; tail -n 3 logs/convert.log; exit \$rc"
}

cmd_train() {
  need CONFIG --config "the experiment config, e.g. configs/llada8b.py:gsm8k,2mf_is"
  local args="" a
  for a in ${EXTRA[@]+"${EXTRA[@]}"}; do args+=" $(q "$a")"; done
  local log="logs/$RUN.log" pid="logs/$RUN.pid"
  on_all "mkdir -p logs; $(env_words) setsid nohup .venv/bin/python -m diffpo_jax.train --config $(q "$CONFIG")$args >> $log 2>&1 < /dev/null & echo \$! > $pid; echo \"\$(hostname): started pid \$(cat $pid), log ~/$REMOTE_DIR/$log\""
  echo "# follow with: launch/tpu_pod.sh logs --run $RUN   (stop with: launch/tpu_pod.sh kill)" >&2
}

cmd_logs() {
  local n=$WORKERS
  if [[ -z $n ]]; then
    if [[ $DRY_RUN == 1 ]]; then
      run "${TPU[@]}" describe "$NAME" --zone="$ZONE" ${PFLAG[@]+"${PFLAG[@]}"} --format='value(networkEndpoints[].ipAddress)'
      echo "# dry run: worker count unknown, showing worker 0 only (pass --workers N)" >&2
      n=1
    else
      local ips
      ips=$("${TPU[@]}" describe "$NAME" --zone="$ZONE" ${PFLAG[@]+"${PFLAG[@]}"} --format='value(networkEndpoints[].ipAddress)')
      ips=${ips//[^;]/}
      n=$((${#ips} + 1))
    fi
  fi
  local tail_cmd="tail -n 100"
  if [[ $FOLLOW == 1 ]]; then tail_cmd="tail -n 100 -F"; fi
  local w
  if [[ $DRY_RUN != 1 ]]; then trap 'kill $(jobs -p) 2>/dev/null || true' INT TERM EXIT; fi
  for ((w = 0; w < n; w++)); do
    if [[ $DRY_RUN == 1 ]]; then
      run "${TPU[@]}" ssh "$NAME" --zone="$ZONE" ${PFLAG[@]+"${PFLAG[@]}"} --worker="$w" \
        --command="$tail_cmd $(q "$REMOTE_DIR/logs/$RUN.log")"
    else
      "${TPU[@]}" ssh "$NAME" --zone="$ZONE" ${PFLAG[@]+"${PFLAG[@]}"} --worker="$w" \
        --command="$tail_cmd $(q "$REMOTE_DIR/logs/$RUN.log")" 2>&1 |
        while IFS= read -r line; do printf '[worker %s] %s\n' "$w" "$line"; done &
    fi
  done
  if [[ $DRY_RUN != 1 ]]; then wait; fi
}

cmd_kill() {
  # Ask our runs to stop (pid files; setsid made each its own process group, so its
  # workers go too), then kill whatever still holds the TPU.
  # shellcheck disable=SC2016  # $-expressions are for the worker's shell
  local script='for f in logs/*.pid; do [ -f "$f" ] || continue; p=$(cat "$f"); kill -- "-$p" 2>/dev/null || kill "$p" 2>/dev/null || true; rm -f "$f"; done; sleep 2; command -v lsof >/dev/null || echo "$(hostname): lsof missing (sudo apt-get install -y lsof): stale TPU users not found"; pids=$(sudo lsof -t /dev/accel* /dev/vfio/* /tmp/libtpu_lockfile 2>/dev/null | sort -u | tr "\n" " "); if [ -n "$pids" ]; then echo "$(hostname): killing $pids"; sudo kill -9 $pids; fi; sudo rm -f /tmp/libtpu_lockfile; echo "$(hostname): TPU free"'
  ssh_all "cd $(q "$REMOTE_DIR") 2>/dev/null || true; $script"
}

cmd_status() {
  if [[ $QUEUED == 1 ]]; then
    run "${QR[@]}" describe "$NAME" --zone="$ZONE" ${PFLAG[@]+"${PFLAG[@]}"}
  else
    run "${TPU[@]}" describe "$NAME" --zone="$ZONE" ${PFLAG[@]+"${PFLAG[@]}"}
  fi
}

cmd_delete() {
  if [[ $QUEUED == 1 ]]; then
    run "${QR[@]}" delete "$NAME" --zone="$ZONE" ${PFLAG[@]+"${PFLAG[@]}"} --force --quiet
  else
    run "${TPU[@]}" delete "$NAME" --zone="$ZONE" ${PFLAG[@]+"${PFLAG[@]}"} --quiet
  fi
}

"cmd_$CMD"
