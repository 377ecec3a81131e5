# shellcheck shell=bash
# The Docker daemon section of tests/interop/run.sh (sourced by it, after its helpers; INTEROP_ONLY=docker runs
# only this). A real dockerd (Debian's docker.io) with its own registries, ferries, containerd and data, all under
# $T/docker: ferry is its registry mirror (daemon.json registry-mirrors), so `docker pull NAME` asks ferry for
# docker.io/library/NAME. This machine has no internet, so dockerd's own fallback to Docker Hub fails and a pull
# succeeds only if ferry served it. Uses PD..PD+4 (and PD+1000, PD+1004 for the ferries' admin listeners).
#   PD   ferry: docker.io = [docker-primary, docker-secondary], ghcr.io = [docker-ghcr] (path prefix /v2/ghcr.io/...)
#   PD+1 docker-primary, PD+2 docker-secondary, PD+3 docker-ghcr: distribution registries
#   PD+4 ferry with TLS and client auth, on DOCKER_TLS_IP (default 198.18.0.1, added to lo for the section):
#        dockerd treats every 127.0.0.0/8 registry as insecure and skips certificate checks there, so the CA
#        in /etc/docker/certs.d/<host:port>/ca.crt is only verified for an address outside it
step e.docker "dockerd: ferry as registry-mirror, Docker Hub names, path prefix, TLS + docker login, outage"
DK=$T/docker
DR1=$((PD + 1)) DR2=$((PD + 2)) DRG=$((PD + 3)) PDT=$((PD + 4))
FD=127.0.0.1:$PD
DIP=${DOCKER_TLS_IP:-198.18.0.1}
DOCKER_CLI=/usr/bin/docker # Debian's client, the daemon's version (another `docker` may come first in PATH)
[[ -x $DOCKER_CLI ]] || DOCKER_CLI=docker
mkdir -p "$DK/config" "$DK/config-anon" "$DK/tls"
dk() { DOCKER_CONFIG=${DK_CONFIG:-$DK/config} timeout "$CLIENT_TIMEOUT" "$DOCKER_CLI" -H "unix://$DK/docker.sock" "$@"; }
docker_teardown() { # also called by run.sh's cleanup: what the section changed outside $T
  if [[ -n ${DK_CERTS_D:-} ]]; then rm -rf "$DK_CERTS_D"; DK_CERTS_D=; fi
  if [[ -n ${DK_CERTS_ROOT_NEW:-} ]]; then rmdir /etc/docker/certs.d 2>/dev/null; DK_CERTS_ROOT_NEW=; fi
  if [[ -n ${DK_RUN_DOCKER_NEW:-} ]]; then rmdir /run/docker/plugins /run/docker 2>/dev/null; DK_RUN_DOCKER_NEW=; fi
  if [[ -n ${DK_IP_ADDED:-} ]]; then ip addr del "$DIP/32" dev lo; DK_IP_ADDED=; fi
  return 0
}
[[ -e /run/docker ]] || DK_RUN_DOCKER_NEW=1 # dockerd creates /run/docker/plugins whatever its exec-root

start_registry docker-primary "$DR1"
start_registry docker-secondary "$DR2"
start_registry docker-ghcr "$DRG"
docker_registries_up() {
  wait_http "http://127.0.0.1:$DR1/v2/" docker-primary && wait_http "http://127.0.0.1:$DR2/v2/" docker-secondary &&
    wait_http "http://127.0.0.1:$DRG/v2/" docker-ghcr
}
docker_push_images() { # images under Docker Hub names; expectations from the registries in $T/expect/d-*.json
  local reg img
  python3 "$HERE/mkimages.py" "$DK/layout" --no-big --extra 7 >/dev/null
  dpush() { sk copy -q --dest-tls-verify=false "$@"; }
  for reg in "127.0.0.1:$DR1" "127.0.0.1:$DR2"; do
    dpush --preserve-digests "oci:$DK/layout:small" "docker://$reg/library/small:latest"
    dpush --preserve-digests --all "oci:$DK/layout:multi" "docker://$reg/library/multi:latest"
    dpush --preserve-digests "oci:$DK/layout:extra-1" "docker://$reg/library/late:latest"
    dpush --preserve-digests "oci:$DK/layout:extra-2" "docker://$reg/library/never:latest"
    dpush --preserve-digests "oci:$DK/layout:extra-4" "docker://$reg/org/app:v1"
    dpush --preserve-digests "oci:$DK/layout:extra-6" "docker://$reg/library/agent:latest" # pinned; moves later
  done
  dpush --preserve-digests "oci:$DK/layout:extra-3" "docker://127.0.0.1:$DR2/library/only2:latest"
  dpush --preserve-digests "oci:$DK/layout:extra-5" "docker://127.0.0.1:$DRG/org/app:v1" # ghcr.io's org/app
  # Docker schema2 and manifest list: converted once, then copied verbatim so both upstreams have the same digests
  dpush --format v2s2 "oci:$DK/layout:small" "docker://127.0.0.1:$DR1/library/small-v2s2:latest"
  dpush --format v2s2 --all "oci:$DK/layout:multi" "docker://127.0.0.1:$DR1/library/multi-v2s2:latest"
  for img in small-v2s2 multi-v2s2; do
    sk copy -q --all --preserve-digests --src-tls-verify=false --dest-tls-verify=false \
      "docker://127.0.0.1:$DR1/library/$img:latest" "docker://127.0.0.1:$DR2/library/$img:latest"
  done
  for img in small multi small-v2s2 multi-v2s2 late never; do
    python3 "$HERE/ocitool.py" closure "http://127.0.0.1:$DR1" "library/$img" latest >"$(expect_file "d-$img")"
  done
  python3 "$HERE/ocitool.py" closure "http://127.0.0.1:$DR1" library/agent latest >"$(expect_file d-agent-1)"
  python3 "$HERE/ocitool.py" closure "http://127.0.0.1:$DR2" library/only2 latest >"$(expect_file d-only2)"
  python3 "$HERE/ocitool.py" closure "http://127.0.0.1:$DR1" org/app v1 >"$(expect_file d-app-hub)"
  python3 "$HERE/ocitool.py" closure "http://127.0.0.1:$DRG" org/app v1 >"$(expect_file d-app-ghcr)"
  jq -r '"\(.repo): \(.mediaType) \(.digest)"' "$T"/expect/d-*.json
  [[ $(expect_digest d-app-hub) != "$(expect_digest d-app-ghcr)" ]]
}
docker_tls_ip() { # the TLS ferry's address: DIP on lo (added here unless present), else 127.0.0.1 (CA not checked)
  if ip -o addr show dev lo | grep -qF " $DIP/"; then return 0; fi
  if ip addr add "$DIP/32" dev lo; then DK_IP_ADDED=1; else DIP=127.0.0.1; fi
}
check "docker-primary (:$DR1), docker-secondary (:$DR2), docker-ghcr (:$DRG) registries up" docker_registries_up
last_passed && check "images under Docker Hub names pushed (OCI, OCI index, schema2, manifest list, org/app twice)" \
  docker_push_images
if ! last_passed; then stop_bg docker-ghcr; stop_bg docker-secondary; stop_bg docker-primary; return 0; fi

printf 'pin_refresh = "2s"\n' >"$DK/ferry-pins.toml" # the pinned agent image follows its tag quickly
start_ferry ferry-docker "$PD" "$DK/cache" "http://127.0.0.1:$DR1" "http://127.0.0.1:$DR2" \
  "ghcr.io=http://127.0.0.1:$DRG" --config "$DK/ferry-pins.toml"
docker_tls_ip
FDT=$DIP:$PDT
make_ca_cert "$DK/tls" dk "IP:$DIP" || true # checked by the TLS ferry's start
printf 'ci:s3cret-pass\n' >"$DK/tls/users"
cat >"$DK/tls/ferry.toml" <<EOT
tls_cert_file = "$DK/tls/dk.crt"
tls_key_file = "$DK/tls/dk.key"
auth_users_file = "$DK/tls/users"
EOT
mkdir -p "$DK/cache-tls"
start_bg ferry-docker-tls env RUST_LOG="${RUST_LOG:-ferry=debug}" "$FERRY_BIN" serve --listen "$FDT" \
  --admin-listen "127.0.0.1:$((PDT + 1000))" --cache-dir "$DK/cache-tls" --config "$DK/tls/ferry.toml" \
  --upstream "http://127.0.0.1:$DR1" --upstream "http://127.0.0.1:$DR2" --tag-ttl "${TAG_TTL}s"
cat >"$DK/daemon.json" <<EOT
{
  "registry-mirrors": ["http://$FD"],
  "insecure-registries": ["$FD"],
  "deprecated-key-path": "$DK/key.json"
}
EOT
start_dockerd dockerd "$DK"
ferries_up() {
  wait_http "http://$FD/v2/" ferry-docker || return 1
  local i
  for i in $(seq 1 100); do
    [[ $(curl -s --max-time 2 --cacert "$DK/tls/dk-ca.crt" -u ci:s3cret-pass -o /dev/null -w '%{http_code}' \
      "https://$FDT/v2/") == 200 ]] && return 0
    sleep 0.2
  done
  tail -n 20 "$LOGS/ferry-docker-tls.log"; return 1
}
check "ferry on :$PD (mirror; ghcr.io by path prefix) and TLS ferry with client auth on $FDT up" ferries_up
check "dockerd up (mirror http://$FD, vfs, no bridge)" wait_dockerd dockerd "$DK"
if last_passed && [[ -s $DK/exec/containerd/containerd.pid ]]; then
  adopt_bg dockerd-containerd "$(<"$DK/exec/containerd/containerd.pid")" dockerd
fi
if ! last_passed; then docker_teardown; return 0; fi # stop_all stops what was started

config_digest() { # config_digest EXPECT [PLATFORM]: the image config's digest, which is dockerd's image id
  if [[ -n ${2:-} ]]; then
    jq -r --arg p "$2" '.platforms | to_entries[] | select(.key | startswith($p)) | .value.blobs[0]' \
      "$(expect_file "$1")"
  else
    jq -r '.blobs[0]' "$(expect_file "$1")"
  fi
}
DK_PLATFORM=linux/$(dk version --format '{{.Server.Arch}}' 2>/dev/null || echo amd64)
dk_pull() { # dk_pull REF EXPECT [PLATFORM]: docker pull; image id = EXPECT's config, RepoDigests has its digest
  local id want repodigests
  dk pull "$1" | tail -n 3 || return 1
  id=$(dk image inspect --format '{{.Id}}' "$1") || return 1
  repodigests=$(dk image inspect --format '{{join .RepoDigests " "}} {{.Os}}/{{.Architecture}}' "$1") || return 1
  want=$(config_digest "$2" "${3:-}")
  echo "docker: $1 -> id $id, want $want; RepoDigests + platform: $repodigests, want @$(expect_digest "$2")"
  [[ $id == "$want" && " $repodigests " == *"@$(expect_digest "$2") "* ]]
}
dk_forget() { # remove every image from dockerd, so the next pull fetches everything again
  local ids
  mapfile -t ids < <(dk images -aq | sort -u) || return 1
  ((${#ids[@]} == 0)) || dk rmi -f "${ids[@]}" >/dev/null || return 1
  [[ -z $(dk images -aq) ]]
}
log_since() { tail -n +$(($2 + 1)) "$LOGS/$1.log"; } # log_since NAME MARK: NAME's log after line MARK
mark_of() { wc -l <"$LOGS/$1.log"; }
ferry_answered() { # ferry_answered NAME MARK PATH SOURCE_RE: ferry NAME logged a 200 for PATH since MARK
  local lines; lines=$(log_since "$1" "$2" | grep -F "path=$3 " | grep -E "status=200 source=$4") || true
  echo "$1 since line $2, path $3, source ~ $4:"; tail -n 2 <<<"$lines"
  [[ -n $lines ]]
}

# --- image kinds (all upstreams up) ----------------------------------------------------------------------
m=$(mark_of ferry-docker)
check "docker pull small (OCI manifest, docker.io/library/small via the mirror): id = config digest" \
  dk_pull small d-small
check "ferry answered dockerd's request for library/small:latest (from docker-primary)" \
  ferry_answered ferry-docker "$m" /v2/library/small/manifests/latest 'upstream:127.0.0.1:'"$DR1"
check "docker pull small-v2s2 (Docker schema2): id = config digest" dk_pull small-v2s2 d-small-v2s2
check "docker pull multi (OCI index): dockerd picks $DK_PLATFORM, id = its config digest" \
  dk_pull multi d-multi "$DK_PLATFORM"
check "docker pull multi-v2s2 (Docker manifest list): $DK_PLATFORM picked" \
  dk_pull multi-v2s2 d-multi-v2s2 "$DK_PLATFORM"

# --- another registry through ferry's path prefix -----------------------------------------------------------
check "docker pull $FD/ghcr.io/org/app:v1 (insecure-registry, path prefix): ghcr.io's image" \
  dk_pull "$FD/ghcr.io/org/app:v1" d-app-ghcr
check "docker pull org/app:v1 (Docker Hub name, same repository): docker.io's image, not ghcr.io's" \
  dk_pull org/app:v1 d-app-hub
ghcr_routed() {
  local ok; ok=$(metric_sum $((PD + 1000)) ferry_upstream_requests_total 'registry="ghcr.io"' \
    "upstream=\"127.0.0.1:$DRG\"" 'outcome="ok"')
  echo "ferry_upstream_requests_total{registry=\"ghcr.io\",upstream=\"127.0.0.1:$DRG\",outcome=\"ok\"} = $ok"
  ((ok > 0))
}
check "ferry routed the /v2/ghcr.io/... requests to ghcr.io's upstream" ghcr_routed

# --- a pinned agent image that follows its tag (served later with every registry stopped) -------------------
FERRY_ADMIN=http://127.0.0.1:$((PD + 1000))
pin_agent() { "$FERRY_BIN" pin add agent:latest --server "$FERRY_ADMIN" --wait --timeout 60s; }
check "ferry pin add agent:latest --wait: the agent image is on ferry's disk" pin_agent
check "docker pull agent (pinned): id = config digest" dk_pull agent d-agent-1
move_agent_tag() {
  local reg
  for reg in "127.0.0.1:$DR1" "127.0.0.1:$DR2"; do
    sk copy -q --dest-tls-verify=false --preserve-digests "oci:$DK/layout:extra-7" \
      "docker://$reg/library/agent:latest" || return 1
  done
  python3 "$HERE/ocitool.py" closure "http://127.0.0.1:$DR1" library/agent latest >"$(expect_file d-agent-2)"
  echo "agent:latest moved from $(expect_digest d-agent-1) to $(expect_digest d-agent-2)"
  [[ $(expect_digest d-agent-1) != "$(expect_digest d-agent-2)" ]]
}
check "a release moves library/agent:latest on both registries" move_agent_tag
pin_followed() {
  local want i pin; want=$(expect_digest d-agent-2)
  for i in $(seq 1 60); do
    pin=$("$FERRY_BIN" pin ls --json --server "$FERRY_ADMIN" |
      jq -c '.pins[] | select(.image == "docker.io/library/agent:latest") | {digest, state, previous}')
    [[ $(jq -r .digest <<<"$pin") == "$want" && $(jq -r .state <<<"$pin") == cached ]] && { echo "$pin"; return 0; }
    sleep 1
  done
  echo "after 60 s: $pin"; return 1
}
check "ferry's pin followed the tag: the new agent image is on its disk (ferry pin ls)" pin_followed

# --- TLS ferry with client authentication: docker login, certs.d CA -----------------------------------------
DK_CERTS_ROOT_NEW=; [[ -d /etc/docker/certs.d ]] || DK_CERTS_ROOT_NEW=1
dk_login() { dk login -u "$1" --password-stdin "$FDT" <<<"$2"; }
if [[ $DIP != 127.0.0.1 ]]; then
  check_fails "docker login to $FDT without its CA in certs.d fails (certificate not trusted)" \
    dk_login ci s3cret-pass
else
  record INFO "TLS ferry on 127.0.0.1 (could not add $DIP to lo): dockerd does not verify loopback certificates"
fi
DK_CERTS_D=/etc/docker/certs.d/$FDT
mkdir -p "$DK_CERTS_D" && cp "$DK/tls/dk-ca.crt" "$DK_CERTS_D/ca.crt"
check "docker forgets every image (the TLS pull fetches everything)" dk_forget
anon_pull() { DK_CONFIG=$DK/config-anon dk pull "$1"; } # a DOCKER_CONFIG without credentials
check_fails "docker pull $FDT/library/small-v2s2 without docker login fails (401)" \
  anon_pull "$FDT/library/small-v2s2"
check_fails "docker login with a wrong password fails" dk_login ci wrong
logged_in() {
  dk_login ci s3cret-pass
  jq -e --arg h "$FDT" '.auths[$h].auth != null' "$DK/config/config.json"
}
check "docker login $FDT (certs.d/$FDT/ca.crt, DOCKER_CONFIG in the temp dir)" logged_in
check "docker pull $FDT/library/small-v2s2 over TLS with the login's credentials: id = config digest" \
  dk_pull "$FDT/library/small-v2s2" d-small-v2s2
check "docker pull $FDT/library/multi (OCI index) over TLS" dk_pull "$FDT/library/multi" d-multi "$DK_PLATFORM"
stop_bg ferry-docker-tls
rm -rf "$DK_CERTS_D"; DK_CERTS_D=

# --- the seed's outage, through dockerd ----------------------------------------------------------------------
dk_repull() { # dk_repull REF EXPECT [PLATFORM]: forget every image, wait out the tag TTL, pull again
  dk_forget && sleep $((TAG_TTL + 1)) && dk_pull "$@"
}
registry_answered() { # registry_answered NAME MARK REPO: registry NAME answered REPO:latest with 200 since MARK
  local hits
  hits=$(log_since "$1" "$2" | grep -cE "\"(GET|HEAD) /v2/$3/manifests/latest[^\"]*\" 200 ") || true
  echo "$1 access log: $hits x 200 for $3/manifests/latest"
  ((hits > 0))
}
delete_small_on_primary() {
  local code
  code=$(cu -o /dev/null -w '%{http_code}' -X DELETE \
    "http://127.0.0.1:$DR1/v2/library/small/manifests/$(expect_digest d-small)")
  echo "DELETE library/small@$(expect_digest d-small) on docker-primary -> $code"
  [[ $code == 202 ]]
  code=$(cu -o /dev/null -w '%{http_code}' -H "Accept: $ACCEPT" \
    "http://127.0.0.1:$DR1/v2/library/small/manifests/latest")
  echo "docker-primary: GET library/small:latest -> $code"
  [[ $code == 404 ]]
}
port_down() { ! port_busy "$1"; }
check "docker-primary: delete library/small's manifest (tag now 404 there)" delete_small_on_primary
m=$(mark_of docker-secondary)
check "primary lost it: docker rmi everything, docker pull small again: from the secondary, id = config digest" \
  dk_repull small d-small
check "the secondary answered library/small:latest" registry_answered docker-secondary "$m" library/small
check "docker pull only2 (only the secondary has it)" dk_pull only2 d-only2
stop_bg docker-primary
check "docker-primary stopped" port_down "$DR1"
m=$(mark_of docker-secondary)
check "primary down: docker rmi everything, docker pull small again: id = config digest" dk_repull small d-small
check "primary down: the secondary answered library/small:latest" registry_answered docker-secondary "$m" \
  library/small
check "primary down: docker pull late (never pulled before)" dk_pull late d-late
stop_bg docker-secondary
stop_bg docker-ghcr
check "docker-secondary stopped (both upstreams down)" port_down "$DR2"
m=$(mark_of ferry-docker)
check "both down: docker rmi everything, docker pull small from ferry's cache: id = config digest" \
  dk_repull small d-small
served_from_cache() { # served_from_cache MARK EXPECT REPO: since MARK, ferry answered REPO's tag and blobs from cache
  local b
  ferry_answered ferry-docker "$1" "/v2/$3/manifests/latest" cache || return 1
  while read -r b; do
    ferry_answered ferry-docker "$1" "/v2/$3/blobs/$b" cache || return 1
  done < <(jq -r '.blobs[]' "$(expect_file "$2")")
}
check "both down: ferry answered the tag (stale) and every blob from its cache" served_from_cache "$m" d-small library/small
check "both down, after the tag moved: docker pull agent (pinned) gets the new image from ferry's disk" \
  dk_repull agent d-agent-2
check "both down: ferry answered agent's tag and every blob from its cache" served_from_cache "$m" d-agent-2 \
  library/agent
check "both down: docker pull multi (OCI index) from ferry's cache" dk_pull multi d-multi "$DK_PLATFORM"
check "both down: docker pull $FD/ghcr.io/org/app:v1 from ferry's cache" dk_pull "$FD/ghcr.io/org/app:v1" d-app-ghcr
check_fails "both down: docker pull never (never pulled) fails: dockerd has no other way to it" dk pull never

# --- stop dockerd and its containerd by PID -------------------------------------------------------------------
DK_PIDS="${PIDS[dockerd]} ${PIDS[dockerd-containerd]:-}"
stop_bg dockerd
stop_bg dockerd-containerd
stop_bg ferry-docker
docker_stopped() {
  local p rc=0
  for p in $DK_PIDS; do
    if kill -0 "$p" 2>/dev/null; then echo "still running: $p $(tr '\0' ' ' <"/proc/$p/cmdline")"; rc=1; fi
  done
  echo "stopped: $DK_PIDS"
  [[ $DK_PIDS == *" "[0-9]* ]] || { echo "dockerd's containerd PID was never known"; rc=1; }
  return $rc
}
check "dockerd and its containerd stopped (PIDs $DK_PIDS)" docker_stopped
docker_teardown
