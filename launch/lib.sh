# Helpers shared by launch/*.sh (sourced). The caller sets PROG and DRY_RUN (0 or 1).
# shellcheck shell=bash
: "${PROG:=launch}" "${DRY_RUN:=0}"

die() { echo "$PROG: error: $*" >&2; exit 2; }

# Quote one word for a POSIX shell: left as is when plainly safe; an --option=value word
# keeps its --option= outside the quotes.
q() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  elif [[ $1 =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    q "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Words quoted and joined by spaces: a command line that a shell reads back as "$@".
qwords() {
  local out="" w
  for w in "$@"; do out+="${out:+ }$(q "$w")"; done
  printf '%s' "$out"
}

# Print (dry run) or run one command given as words.
run() {
  if [[ $DRY_RUN == 1 ]]; then printf '%s\n' "$(qwords "$@")"; else "$@"; fi
}

# Print (dry run) or run one line of shell code (pipes, redirections).
run_sh() {
  if [[ $DRY_RUN == 1 ]]; then printf '%s\n' "$1"; else bash -o pipefail -c "$1"; fi
}

# retry TRIES COMMAND...: run, retried with a growing pause ($RETRY_SLEEP seconds x attempt).
retry() {
  local tries=$1 i
  shift
  if [[ $DRY_RUN == 1 ]]; then run "$@"; return; fi
  for ((i = 1; i <= tries; i++)); do
    if "$@"; then return 0; fi
    echo "$PROG: attempt $i/$tries failed: $*" >&2
    if ((i < tries)); then sleep $((${RETRY_SLEEP:-5} * i)); fi
  done
  die "gave up after $tries attempts"
}

# need VAR FLAG WHAT: fail clearly when a required option is empty ($CMD: the subcommand).
need() {
  [[ -n ${!1} ]] || die "${CMD:-this command} needs $2 (or $1=...): $3"
}
