# shellcheck shell=bash
# Helpers sourced by tests/interop/run.sh: PASS/FAIL bookkeeping, background processes, registry/ferry/containerd
# start-up. Expects T (state dir), LOGS (log dir) to be set by the caller. start_* run in the main shell (so the
# EXIT trap can stop what they started); readiness is then checked with wait_* inside check.

RESULTS=()        # "PASS|FAIL<TAB>step<TAB>check"
STEP="setup"
NCHECK=0
declare -A PIDS=() # name -> pid of a background process we started
PID_ORDER=()      # start order, stopped in reverse
SUMMARY_PRINTED=""
STEP_TIMES=()     # "step<TAB>seconds", filled by step()

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

step() { # step "e" "containerd pulls through ferry"
  [[ -z ${STEP_T0:-} ]] || STEP_TIMES+=("$STEP"$'\t'"$(elapsed "$STEP_T0")")
  STEP="$1"; STEP_T0=$(now)
  printf '\n=== [%s] %s\n' "$1" "$2"
}

record() { # record PASS|FAIL|INFO "description" [elapsed]
  LAST_RESULT=$1
  RESULTS+=("$1"$'\t'"$STEP"$'\t'"$2")
  printf '  %-4s %s%s\n' "$1" "$2" "${3:+  ($3)}"
}

# check "description" cmd args...   runs cmd under `set -e` in a subshell, output to its own log.
# check_fails "description" cmd...  the same, but the command must fail.
# info "description" cmd...         the same, outcome reported as INFO (behaviour outside ferry's contract)
run_check() {
  local want="$1" desc="$2"; shift 2
  NCHECK=$((NCHECK + 1))
  local log; log=$(printf '%s/checks/%03d.log' "$LOGS" "$NCHECK")
  local t0; t0=$(now)
  echo "# [$STEP] $desc" >"$log"; printf '# %q ' "$@" >>"$log"; echo >>"$log"
  set +e
  ( set -e; "$@" ) >>"$log" 2>&1
  local rc=$?
  set -e
  if [[ $want == info ]]; then
    record INFO "$desc: $( ((rc == 0)) && echo yes || echo no)" "$(elapsed "$t0"), log $log"
  elif { [[ $want == ok ]] && ((rc == 0)); } || { [[ $want == fail ]] && ((rc != 0)); }; then
    record PASS "$desc" "$(elapsed "$t0")"
  else
    record FAIL "$desc" "$(elapsed "$t0"), rc=$rc, log $log"
    tail -n 15 "$log" | sed 's/^/         | /'
  fi
}
check() { run_check ok "$@"; }
check_fails() { run_check fail "$@"; }
info() { run_check info "$@"; } # outcome is reported, never counted as a failure

last_passed() { [[ $LAST_RESULT == PASS ]]; }
failed_count() { local n=0 r; for r in "${RESULTS[@]}"; do [[ $r == FAIL* ]] && n=$((n + 1)); done; echo "$n"; }

print_summary() {
  SUMMARY_PRINTED=1
  local r total=${#RESULTS[@]} nfail; nfail=$(failed_count)
  printf '\n=== SUMMARY (%d checks, %d failed)\n' "$total" "$nfail"
  for r in "${RESULTS[@]}"; do IFS=$'\t' read -r s st d <<<"$r"; printf '  %-4s [%s] %s\n' "$s" "$st" "$d"; done
  printf 'step times:'; for r in "${STEP_TIMES[@]}"; do printf ' %s' "${r/$'\t'/=}"; done; echo
  if ((nfail > 0)) || ((total == 0)); then
    echo "RESULT: FAIL"
    echo "logs in $LOGS: $(cd "$LOGS" && echo *.log) and checks/NNN.log (one per check, numbered as run)"
    if [[ -f $LOGS/ferry.log ]]; then
      echo "ferry log: $LOGS/ferry.log (last 40 lines):"
      tail -n 40 "$LOGS/ferry.log" | sed 's/^/  | /'
    fi
  else
    echo "RESULT: PASS"
  fi
}

abort() { # a prerequisite is broken: no point in going on
  record FAIL "ABORT: $*"
  exit 1
}

# --- processes -----------------------------------------------------------------------------------------
start_bg() { # start_bg NAME cmd...   (stdout+stderr -> $LOGS/NAME.log)
  local name="$1"; shift
  "$@" >>"$LOGS/$name.log" 2>&1 &
  PIDS[$name]=$!
  PID_ORDER+=("$name")
}

stop_bg() { # stop_bg NAME   TERM, then KILL after 10 s
  local name="$1" pid="${PIDS[$1]:-}" i
  [[ -n $pid ]] || return 0
  kill "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset "PIDS[$name]"
}

stop_all() {
  local i
  for ((i = ${#PID_ORDER[@]} - 1; i >= 0; i--)); do stop_bg "${PID_ORDER[$i]}"; done
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # wait_port PORT: until something accepts connections on 127.0.0.1:PORT
  local i
  for i in $(seq 1 100); do port_busy "$1" && return 0; sleep 0.1; done
  echo "nothing listening on 127.0.0.1:$1"; return 1
}

wait_http() { # wait_http URL NAME [seconds]: until GET URL answers 200
  local deadline=$(( $(date +%s) + ${3:-20} ))
  while (( $(date +%s) < deadline )); do
    [[ -n ${PIDS[$2]:-} ]] && ! kill -0 "${PIDS[$2]}" 2>/dev/null && { echo "$2 exited; log:"; tail -n 20 "$LOGS/$2.log"; return 1; }
    [[ $(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "$1" 2>/dev/null) == 200 ]] && return 0
    sleep 0.1
  done
  echo "$2: $1 not 200 after ${3:-20}s"; tail -n 20 "$LOGS/$2.log"; return 1
}

# --- servers -------------------------------------------------------------------------------------------
start_registry() { # start_registry NAME PORT  -> CNCF distribution, storage under $T/NAME, deletes enabled
  local name="$1" port="$2"
  mkdir -p "$T/$name"
  cat >"$T/$name.yml" <<EOT
version: 0.1
log:
  level: info
  formatter: text
  fields: {service: $name}
storage:
  filesystem: {rootdirectory: $T/$name}
  delete: {enabled: true}
  cache: {blobdescriptor: inmemory}
http:
  addr: 127.0.0.1:$port
EOT
  start_bg "$name" docker-registry serve "$T/$name.yml"
}

start_ferry() { # start_ferry NAME PORT CACHE_DIR [REGISTRY=]UPSTREAM_URL... [--flag value...]
  local name="$1" port="$2" cache="$3"; shift 3
  local ups=()
  while (($#)) && [[ $1 != -* ]]; do ups+=(--upstream "$1"); shift; done
  ups+=("$@") # the remaining arguments are flags for ferry serve
  mkdir -p "$cache"
  echo "--- $(date -Is) starting: $FERRY_BIN serve --listen 127.0.0.1:$port --cache-dir $cache ${ups[*]} --tag-ttl ${TAG_TTL}s" >>"$LOGS/$name.log"
  # admin API on port+1000, so several ferries can run side by side
  start_bg "$name" env RUST_LOG="${RUST_LOG:-ferry=debug}" "$FERRY_BIN" serve --listen "127.0.0.1:$port" \
    --admin-listen "127.0.0.1:$((port + 1000))" --cache-dir "$cache" "${ups[@]}" --tag-ttl "${TAG_TTL}s"
}

start_containerd() { # throwaway containerd, all state under $T/ctrd, CRI disabled
  mkdir -p "$T/ctrd"
  cat >"$T/ctrd/config.toml" <<EOT
version = 2
root = "$T/ctrd/root"
state = "$T/ctrd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CTR_SOCK"
EOT
  start_bg containerd containerd --config "$T/ctrd/config.toml"
}
wait_containerd() {
  local i
  for i in $(seq 1 100); do ctr -a "$CTR_SOCK" version >/dev/null 2>&1 && return 0; sleep 0.2; done
  tail -n 20 "$LOGS/containerd.log"; return 1
}

metric_sum() { # metric_sum ADMIN_PORT NAME [SUBSTRING...]: sum of NAME's samples whose line holds every SUBSTRING
  local port=$1 name=$2 lines s; shift 2
  lines=$(curl -sS --max-time 10 "http://127.0.0.1:$port/metrics" | grep -E "^${name}[{ ]") || true
  for s in "$@"; do lines=$(grep -F -- "$s" <<<"$lines") || true; done
  awk '{ sum += $NF } END { print sum + 0 }' <<<"$lines"
}

# --- clients -------------------------------------------------------------------------------------------
sk() { timeout "$CLIENT_TIMEOUT" skopeo --insecure-policy "$@"; }
cu() { curl -sS --max-time "$CLIENT_TIMEOUT" "$@"; }
ctrc() { timeout "$CLIENT_TIMEOUT" ctr -a "$CTR_SOCK" "$@"; }
expect_file() { echo "$T/expect/$1.json"; }
expect_digest() { jq -r .digest "$(expect_file "$1")"; }
raw_digest() { echo "sha256:$(sha256sum | cut -d' ' -f1)"; } # stdin -> digest

# --- additions for the Docker daemon section (tests/interop/docker.sh) ----------------------------------
adopt_bg() { # adopt_bg NAME PID PARENT: a process PARENT started (dockerd's containerd); stopped right after PARENT
  local i order=()
  PIDS[$1]=$2
  for i in "${PID_ORDER[@]}"; do
    [[ $i == "$3" ]] && order+=("$1")
    order+=("$i")
  done
  PID_ORDER=("${order[@]}")
}

make_ca_cert() { # make_ca_cert DIR NAME SAN: a CA DIR/NAME-ca.{crt,key}, a server certificate DIR/NAME.{crt,key}
  # for SAN (e.g. "IP:127.0.0.1,DNS:localhost") signed by it, and DIR/NAME-certdir/ca.crt
  local dir=$1 name=$2 san=$3 cn=${3%%,*}
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=ferry interop $name CA" \
    -keyout "$dir/$name-ca.key" -out "$dir/$name-ca.crt" 2>/dev/null &&
    openssl req -newkey rsa:2048 -nodes -subj "/CN=${cn#*:}" -keyout "$dir/$name.key" -out "$dir/$name.csr" \
      2>/dev/null &&
    openssl x509 -req -days 2 -in "$dir/$name.csr" -CA "$dir/$name-ca.crt" -CAkey "$dir/$name-ca.key" \
      -CAcreateserial -extfile <(printf 'subjectAltName=%s\n' "$san") -out "$dir/$name.crt" 2>/dev/null &&
    mkdir -p "$dir/$name-certdir" && cp "$dir/$name-ca.crt" "$dir/$name-certdir/ca.crt"
}

start_dockerd() { # start_dockerd NAME DIR: dockerd with its state under DIR (config DIR/daemon.json, API on
  # unix://DIR/docker.sock), no iptables, no bridge, vfs storage; it starts its own containerd under DIR/exec
  mkdir -p "$2/data" "$2/exec"
  start_bg "$1" dockerd --config-file "$2/daemon.json" --data-root "$2/data" --exec-root "$2/exec" \
    --pidfile "$2/dockerd.pid" -H "unix://$2/docker.sock" --iptables=false --ip6tables=false --bridge=none \
    --storage-driver=vfs
}
wait_dockerd() { # wait_dockerd NAME DIR: until dockerd's API answers
  local i
  for i in $(seq 1 150); do
    kill -0 "${PIDS[$1]}" 2>/dev/null || break
    "${DOCKER_CLI:-docker}" -H "unix://$2/docker.sock" version >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "dockerd not answering on unix://$2/docker.sock"; tail -n 20 "$LOGS/$1.log"; return 1
}
