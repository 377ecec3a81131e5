#!/usr/bin/env bash
# ferry interop suite: two CNCF distribution registries (primary, secondary) as upstreams, ferry in front,
# real clients (skopeo, containerd's ctr, podman) pulling through it: failover with /metrics, two registries
# routed by ns and by path prefix, TLS with a test CA and client auth, upstream failures and a full outage, and a
# real Docker daemon with ferry as its registry mirror (tests/interop/docker.sh).
# Usage (Debian 12, as root, from anywhere): tests/interop/run.sh
#   env: FERRY_BIN (default <repo>/target/release/ferry), BIG_MB (120), TAG_TTL (seconds, 1), INTEROP_KEEP=1 keeps all state,
#        INTEROP_ONLY=docker runs only the Docker daemon section (it has its own registries and images)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=tests/interop/lib.sh
source "$HERE/lib.sh"

FERRY_BIN=${FERRY_BIN:-$REPO/target/release/ferry}
BIG_MB=${BIG_MB:-120}
TAG_TTL=${TAG_TTL:-1}
CLIENT_TIMEOUT=${CLIENT_TIMEOUT:-300}
P1=${PRIMARY_PORT:-15000}      # primary upstream
P2=${SECONDARY_PORT:-15010}    # secondary upstream
PF=${FERRY_PORT:-15050}        # ferry under test
PX=${FAULT_FERRY_PORT:-15051}  # extra ferry instances for the fault matrix and the two-registry ferry
PT=${TLS_FERRY_PORT:-15052}    # ferry serving TLS with client auth
PB=${FAULTY_PORT:-15060}       # misbehaving upstreams (ocitool.py faulty), one port per mode: PB..PB+7
PD=${DOCKER_PORT:-15090}       # Docker section: ferry (dockerd's mirror) PD, its registries PD+1..PD+3, TLS ferry PD+4
DEAD=127.0.0.1:1               # nothing listens here
F=127.0.0.1:$PF
# Registry part of the image names containerd pulls. It is dead on purpose: containerd falls back to the origin
# (and, for loopback names without a usable hosts.toml, even to plain HTTP), which must not hide a ferry failure.
ORIGIN=$DEAD

# --- prerequisites -------------------------------------------------------------------------------------
[[ $EUID == 0 ]] || { echo "run as root (containerd needs it)" >&2; exit 2; }
missing=()
for pair in docker-registry:docker-registry skopeo:skopeo containerd:containerd ctr:containerd podman:podman \
  openssl:openssl jq:jq curl:curl python3:python3 dockerd:docker.io ip:iproute2; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "installing: ${missing[*]}"
  ( # keep apt from starting the packages' own services (a registry on :5000, containerd, ...)
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
      chmod +x /usr/sbin/policy-rc.d
      trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  )
fi
[[ -x $FERRY_BIN ]] || { echo "ferry binary not found: $FERRY_BIN (build it: cargo build --release)" >&2; exit 2; }
for p in "$P1" "$P2" "$PF" "$PX" "$PT" $((PF + 1000)) $((PX + 1000)) $((PT + 1000)) $(seq "$PB" $((PB + 7))) \
  $(seq "$PD" $((PD + 4))) $((PD + 1000)) $((PD + 1004)); do
  port_busy "$p" && { echo "port 127.0.0.1:$p is in use; set PRIMARY_PORT/SECONDARY_PORT/FERRY_PORT/..." >&2; exit 2; }
done

T=$(mktemp -d /tmp/ferry-interop.XXXXXX)
LOGS=$T/logs
mkdir -p "$LOGS/checks" "$T/expect" "$T/pull" "$T/loop"
CTR_SOCK=$T/ctrd/containerd.sock
cp "$FERRY_BIN" "$T/ferry" # a rebuild during the run must not swap the binary under test
FERRY_SRC=$FERRY_BIN
FERRY_BIN=$T/ferry

cleanup() {
  local rc=$?
  set +e
  touch "$T/loop.stop"
  stop_all
  ! declare -F docker_teardown >/dev/null || docker_teardown # certs.d entry, address on lo (tests/interop/docker.sh)
  awk -v t="$T" 'index($2, t) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r -n1 umount -l
  if [[ -z $SUMMARY_PRINTED ]]; then
    ((rc == 0)) || (($(failed_count) > 0)) || record FAIL "suite stopped early (exit $rc) during step $STEP"
    print_summary
  fi
  if [[ -n ${INTEROP_KEEP:-} ]]; then
    echo "state kept: $T"
  elif (($(failed_count) > 0)) || ((rc != 0)); then
    find "$T" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
    echo "logs kept: $LOGS"
  else
    rm -rf "$T"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
echo "ferry interop: state $T, ferry $FERRY_SRC ($(stat -c '%y' "$FERRY_SRC" | cut -c1-19)), tag ttl ${TAG_TTL}s, big layer ${BIG_MB} MiB"
T_START=$(now)

# --- helpers used by the checks (written to work both under set -e and in `if` conditions) -------------
pull_dir() { # pull_dir IMAGE REF_SUFFIX DEST [skopeo copy args]: pull through ferry into dir:, verify
  local img=$1 ref=$2 dest=$3; shift 3
  rm -rf "$dest" &&
    sk copy -q --src-tls-verify=false --preserve-digests "$@" "docker://$F/test/$img$ref" "dir:$dest" &&
    python3 "$HERE/ocitool.py" verify-dir "$dest" "$(expect_file "$img")"
}
pull_oci() { # pull_oci IMAGE REF_SUFFIX DEST: pull a list with --all into an OCI layout, verify
  rm -rf "$3" &&
    sk copy -q --all --src-tls-verify=false --preserve-digests "docker://$F/test/$1$2" "oci:$3:latest" &&
    python3 "$HERE/ocitool.py" verify-oci "$3" "$(expect_file "$1")"
}
inspect_matches() { # inspect_matches IMAGE: raw manifest via ferry hashes to the source digest
  local got want; want=$(expect_digest "$1")
  got=$(sk inspect --raw --tls-verify=false "docker://$F/test/$1:latest" | raw_digest) || return 1
  echo "via ferry $got, source $want"
  [[ $got == "$want" ]]
}
content_complete() { # content_complete NS IMAGE [PLATFORM]: everything a pull needs is in containerd's store
  local have want d rc=0
  have=$(ctrc -n "$1" content ls -q) || return 1
  want=$(python3 "$HERE/ocitool.py" digests "$(expect_file "$2")" ${3:+"$3"}) && [[ -n $want ]] || return 1
  for d in $want; do
    grep -qxF "$d" <<<"$have" || { echo "not in containerd content store: $d"; rc=1; }
  done
  return $rc
}
ctr_pull_ref() { # ctr_pull_ref NS REF EXPECT PLATFORM HOSTS_DIR [ctr pull args]: REF resolves to EXPECT's digest, content complete
  local ns=$1 ref=$2 expect=$3 plat=$4 hosts=$5 got want; shift 5
  want=$(expect_digest "$expect")
  ctrc -n "$ns" images pull --snapshotter "$SNAPSHOTTER" --hosts-dir "$hosts" "$@" "$ref" | tail -n 2 &&
    got=$(ctrc -n "$ns" images ls | awk -v r="$ref" '$1 == r { print $3 }') &&
    echo "ctr resolved $ref -> ${got:-nothing}, want $want" &&
    [[ $got == "$want" ]] &&
    content_complete "$ns" "$expect" "$plat"
}
ctr_pull() { # ctr_pull NS IMAGE [PLATFORM] [ctr pull args]: $ORIGIN/test/IMAGE via hosts.toml mirror = ferry
  ctr_pull_ref "$1" "$ORIGIN/test/$2:latest" "$2" "$3" "$T/certs.d" "${@:4}"
}
ctr_forget() { # drop a namespace's images and garbage-collect, so the next pull really fetches again
  local imgs
  mapfile -t imgs < <(ctrc -n "$1" images ls -q) || return 1
  ((${#imgs[@]} == 0)) || ctrc -n "$1" images rm --sync "${imgs[@]}" >/dev/null
  ctrc namespaces rm "$1" >/dev/null 2>&1 || true
}
http_is() { # http_is CODE METHOD PATH: ferry answers PATH with CODE
  local got method=(-X "$2"); [[ $2 != HEAD ]] || method=(-I) # curl -X HEAD would wait for a body
  got=$(cu -o /dev/null -w '%{http_code}' "${method[@]}" -H "Accept: $ACCEPT" "http://$F$3") || return 1
  echo "$2 $3 -> $got (want $1)"
  [[ $got == "$1" ]]
}
ACCEPT="application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json"
head_manifest_is() { # head_manifest_is IMAGE REF MEDIATYPE: HEAD via ferry has the source's digest, type, length
  local want got
  want="200|$3|$(expect_digest "$1")|$(jq -r .size "$(expect_file "$1")")"
  got=$(cu -I -o /dev/null -H "Accept: $ACCEPT" \
    -w '%{http_code}|%header{content-type}|%header{docker-content-digest}|%header{content-length}' \
    "http://$F/v2/test/$1/manifests/$2") || return 1
  echo "HEAD /v2/test/$1/manifests/$2: got  $got"; echo "  want $want"
  [[ $got == "$want" ]]
}
get_manifest_matches() { # get_manifest_matches IMAGE REF[?query]: GET body hashes to the source digest
  local got; got=$(cu -f -H "Accept: $ACCEPT" "http://$F/v2/test/$1/manifests/$2" | raw_digest) || return 1
  echo "GET /v2/test/$1/manifests/$2 body: $got"
  [[ $got == "$(expect_digest "$1")" ]]
}
blob_matches() { # blob_matches IMAGE DIGEST: HEAD length and GET content match the layout's blob
  local file=$T/layout/blobs/sha256/${2#sha256:} h got
  h=$(cu -I -o /dev/null -w '%{http_code}|%header{content-length}' "http://$F/v2/test/$1/blobs/$2") || return 1
  got=$(cu -f "http://$F/v2/test/$1/blobs/$2" | raw_digest) || return 1
  echo "HEAD $2: $h (file size $(stat -c %s "$file")); GET body $got"
  [[ $h == "200|$(stat -c %s "$file")" && $got == "$2" ]]
}
tags_list_ok() {
  local body; body=$(cu -f "http://$F/v2/test/small/tags/list") || return 1
  echo "$body"
  jq -e '.name == "test/small" and (.tags | index("latest") != null)' <<<"$body" >/dev/null
}

if [[ ${INTEROP_ONLY:-} == docker ]]; then
  # shellcheck source=tests/interop/docker.sh
  source "$HERE/docker.sh"
  step g "summary ($(elapsed "$T_START") in total)"
  print_summary
  (($(failed_count) == 0)); exit
fi

# === a ==================================================================================================
step a "start primary (:$P1) and secondary (:$P2) distribution registries"
start_registry primary "$P1"
start_registry secondary "$P2"
check "primary registry up" wait_http "http://127.0.0.1:$P1/v2/" primary
last_passed || abort "primary registry did not start"
check "secondary registry up" wait_http "http://127.0.0.1:$P2/v2/" secondary
last_passed || abort "secondary registry did not start"

# === b ==================================================================================================
step b "generate images (big layer ${BIG_MB} MiB) and push identical copies to both registries"
push() { sk copy -q --dest-tls-verify=false "$@"; }
push_all() {
  python3 "$HERE/mkimages.py" "$T/layout" --big-mb "$BIG_MB" >"$T/layout.summary.json"
  local reg img
  for reg in "127.0.0.1:$P1" "127.0.0.1:$P2"; do
    push --preserve-digests "oci:$T/layout:small" "docker://$reg/test/small:latest"
    push --preserve-digests --all "oci:$T/layout:multi" "docker://$reg/test/multi:latest"
    push --preserve-digests "oci:$T/layout:big" "docker://$reg/test/big:latest"
    push --preserve-digests "oci:$T/layout:extra-1" "docker://$reg/test/late:latest"  # first pulled when primary is down
    push --preserve-digests "oci:$T/layout:extra-2" "docker://$reg/test/never:latest" # never pulled while upstreams are up
    push --preserve-digests "oci:$T/layout:small" "docker://$reg/test/moving:latest"  # tag is moved in step d.ttl
  done
  push --preserve-digests "oci:$T/layout:extra-3" "docker://127.0.0.1:$P2/test/only2:latest" # secondary only
  # v2s2 conversion is not guaranteed to be reproducible: convert once, then copy primary -> secondary verbatim
  push --format v2s2 "oci:$T/layout:small" "docker://127.0.0.1:$P1/test/small-v2s2:latest"
  push --format v2s2 --all "oci:$T/layout:multi" "docker://127.0.0.1:$P1/test/multi-v2s2:latest"
  for img in small-v2s2 multi-v2s2; do
    sk copy -q --all --preserve-digests --src-tls-verify=false --dest-tls-verify=false \
      "docker://127.0.0.1:$P1/test/$img:latest" "docker://127.0.0.1:$P2/test/$img:latest"
  done
}
same_on_both() { # record the source closure (from the primary), compare the secondary's manifest digests
  local ef; ef=$(expect_file "$1")
  python3 "$HERE/ocitool.py" closure "http://127.0.0.1:$P1" "test/$1" latest >"$ef"
  python3 "$HERE/ocitool.py" closure "http://127.0.0.1:$P2" "test/$1" latest >"$T/expect/$1.secondary.json"
  jq -c '{digest, mediaType, manifests}' "$ef" "$T/expect/$1.secondary.json"
  [[ $(jq -c .manifests "$ef") == "$(jq -c .manifests "$T/expect/$1.secondary.json")" ]]
}
only_on_secondary() {
  python3 "$HERE/ocitool.py" closure "http://127.0.0.1:$P2" "test/$1" latest >"$(expect_file "$1")"
  ! python3 "$HERE/ocitool.py" closure "http://127.0.0.1:$P1" "test/$1" latest
}
MIN_BIG_MB=$((BIG_MB < 100 ? BIG_MB : 100)) # the suite wants >= 100 MiB; smaller BIG_MB only for quick local runs
big_enough() { jq -e "[.big.layers[][1]] | max >= $MIN_BIG_MB * 1024 * 1024" "$T/layout.summary.json"; }
check "mkimages.py, then skopeo push to primary and secondary" push_all
last_passed || abort "could not push the test images"
for img in small multi big small-v2s2 multi-v2s2 late never moving; do
  check "test/$img: same manifest digests on primary and secondary" same_on_both "$img"
done
check "test/only2 exists on the secondary only" only_on_secondary only2
check "test/big has a layer >= $MIN_BIG_MB MiB" big_enough

# === c ==================================================================================================
step c "start ferry on :$PF (upstreams: primary, secondary)"
start_ferry ferry "$PF" "$T/cache" "http://127.0.0.1:$P1" "http://127.0.0.1:$P2"
check "ferry up: GET /v2/ = 200" wait_http "http://$F/v2/" ferry
last_passed || abort "ferry did not start (log $LOGS/ferry.log)"

# === d ==================================================================================================
step d "skopeo pulls through ferry; manifest digests and every blob verified"
pull_big_concurrently() { # two cold pulls of the big image at the same time
  local a b ra=0 rb=0
  pull_dir big :latest "$T/pull/big-a" & a=$!
  pull_dir big :latest "$T/pull/big-b" & b=$!
  wait "$a" || ra=$?
  wait "$b" || rb=$?
  rm -rf "$T/pull/big-a" "$T/pull/big-b"
  ((ra == 0 && rb == 0))
}
upstream_gets_once() { # upstream_gets_once IMAGE DIGEST: primary+secondary served GET of that blob exactly once
  local n
  # ferry adds ?ns=<registry> to what it forwards
  n=$(cat "$LOGS/primary.log" "$LOGS/secondary.log" | grep -cE "\"GET /v2/test/$1/blobs/$2(\?[^ \"]*)? HTTP/1.1\" 200") || true
  echo "upstream GETs of $2: $n"
  ((n == 1))
}
check "2 concurrent cold skopeo copies of test/big (${BIG_MB} MiB layer) -> dir:" pull_big_concurrently
info "the 2 concurrent cold pulls cost a single upstream GET of the big layer" \
  upstream_gets_once big "$(jq -r '.blobs[-1]' "$(expect_file big)")"
for img in small small-v2s2 multi multi-v2s2; do
  check "skopeo inspect --raw test/$img: digest via ferry == source" inspect_matches "$img"
done
check "skopeo copy test/small -> dir: (OCI manifest)" pull_dir small :latest "$T/pull/small"
check "skopeo copy test/small-v2s2 -> dir: (Docker schema2)" pull_dir small-v2s2 :latest "$T/pull/small-v2s2"
check "skopeo copy --all test/multi -> oci: (OCI index)" pull_oci multi :latest "$T/pull/multi"
check "skopeo copy --all test/multi-v2s2 -> dir: (Docker manifest list)" \
  pull_dir multi-v2s2 :latest "$T/pull/multi-v2s2" --all
check "skopeo copy test/small by digest" pull_dir small "@$(expect_digest small)" "$T/pull/small-digest"
check "skopeo copy --all test/multi by digest" pull_oci multi "@$(expect_digest multi)" "$T/pull/multi-digest"
check "test/only2 (primary: 404, secondary: has it) via ferry" pull_dir only2 :latest "$T/pull/only2"
check_fails "skopeo copy of an image no upstream has fails" pull_dir small :no-such-tag "$T/pull/none"
rm -rf "$T/pull"/*

# === d.http =============================================================================================
step d.http "registry API details via curl"
LAYER_SMALL=$(jq -r '.blobs[-1]' "$(expect_file small)")
LAYER_ARM=$(jq -r '.platforms | to_entries[] | select(.key | startswith("linux/arm64")) | .value.blobs[-1]' \
  "$(expect_file multi)")
ZERO=sha256:$(printf '0%.0s' {1..64})
check "GET /v2/ -> 200" http_is 200 GET /v2/
check "HEAD test/small:latest: digest, OCI manifest type, length" \
  head_manifest_is small latest application/vnd.oci.image.manifest.v1+json
check "HEAD test/small@digest" head_manifest_is small "$(expect_digest small)" application/vnd.oci.image.manifest.v1+json
check "HEAD test/multi:latest: OCI index type" head_manifest_is multi latest application/vnd.oci.image.index.v1+json
check "HEAD test/small-v2s2:latest: Docker schema2 type" \
  head_manifest_is small-v2s2 latest application/vnd.docker.distribution.manifest.v2+json
check "HEAD test/multi-v2s2:latest: Docker manifest list type" \
  head_manifest_is multi-v2s2 latest application/vnd.docker.distribution.manifest.list.v2+json
check "GET test/multi-v2s2@digest body hashes to digest" get_manifest_matches multi-v2s2 "$(expect_digest multi-v2s2)"
check "GET test/small:latest?ns=registry.example.org (ns ignored)" get_manifest_matches small "latest?ns=registry.example.org"
check "HEAD+GET blob of test/small" blob_matches small "$LAYER_SMALL"
check "HEAD+GET arm64 blob of test/multi" blob_matches multi "$LAYER_ARM"
check "GET test/small/tags/list contains latest" tags_list_ok
check "GET manifest of unknown repo -> 404" http_is 404 GET /v2/test/does-not-exist/manifests/latest
check "GET unknown tag of known repo -> 404" http_is 404 GET /v2/test/small/manifests/no-such-tag
check "GET unknown blob -> 404" http_is 404 GET "/v2/test/small/blobs/$ZERO"
check "HEAD unknown blob -> 404" http_is 404 HEAD "/v2/test/small/blobs/$ZERO"
referrers_absent() { # distribution 2.8 has no referrers API: 404 for the client, neither upstream blamed
  http_is 404 GET "/v2/test/small/referrers/$(expect_digest small)" || return 1
  cu "http://127.0.0.1:$((PF + 1000))/status" | jq -e '[.upstreams[].breaker.consecutive_failures] | all(. == 0)'
}
check "GET referrers of test/small (distribution 2.8 lacks the API) -> 404, no upstream blamed" referrers_absent

# === d.ttl ==============================================================================================
step d.ttl "tag revalidation: a moved tag is seen after --tag-ttl (${TAG_TTL}s)"
moved_tag_seen() {
  local got reg
  got=$(sk inspect --raw --tls-verify=false "docker://$F/test/moving:latest" | raw_digest)
  echo "before: test/moving via ferry = $got (want $(expect_digest small))"
  [[ $got == "$(expect_digest small)" ]]
  for reg in "127.0.0.1:$P1" "127.0.0.1:$P2"; do
    push --preserve-digests --all "oci:$T/layout:multi" "docker://$reg/test/moving:latest"
  done
  sleep $((TAG_TTL + 1))
  got=$(sk inspect --raw --tls-verify=false "docker://$F/test/moving:latest" | raw_digest)
  echo "after move + ttl: test/moving via ferry = $got (want $(expect_digest multi))"
  [[ $got == "$(expect_digest multi)" ]]
}
check "test/moving: first pull after the tag moved returns the new digest" moved_tag_seen

# === e ==================================================================================================
step e "containerd (ctr) pulls $ORIGIN/test/... with ferry as hosts.toml mirror; origin and fallback are dead"
mkdir -p "$T/certs.d/$ORIGIN" "$T/certs-nomirror.d/$ORIGIN"
cat >"$T/certs.d/$ORIGIN/hosts.toml" <<EOT
# images named $ORIGIN/...: ferry first; the fallback server is a dead port, so only ferry can serve them
server = "http://$DEAD"
[host."http://$F"]
  capabilities = ["pull", "resolve"]
EOT
# control: the same without ferry (a host table is needed: containerd 1.6 rejects a hosts.toml with only server=)
sed "s|http://$F|http://$DEAD|" "$T/certs.d/$ORIGIN/hosts.toml" >"$T/certs-nomirror.d/$ORIGIN/hosts.toml"
start_containerd
check "containerd up" wait_containerd
last_passed || abort "containerd did not start (log $LOGS/containerd.log)"
# overlayfs where the kernel/filesystem allows it, else the native (copying) snapshotter
SNAPSHOTTER=native
[[ $(ctr -a "$CTR_SOCK" plugins ls | awk '$2 == "overlayfs" && $1 ~ /snapshotter/ { print $NF }') == ok ]] &&
  SNAPSHOTTER=overlayfs
echo "  snapshotter: $SNAPSHOTTER"
ARM=$(jq -r '.platforms | keys[] | select(startswith("linux/arm64"))' "$(expect_file multi-v2s2)") # linux/arm64/v8
fetch_big() {
  ctrc -n interop content fetch --hosts-dir "$T/certs.d" "$ORIGIN/test/big:latest" | tail -n 2
  content_complete interop big
}
check "ctr pull test/small" ctr_pull interop small ""
check "ctr pull --all-platforms test/multi (OCI index)" ctr_pull interop multi "" --all-platforms
check "ctr pull --platform linux/arm64 test/multi-v2s2 (Docker list)" \
  ctr_pull interop multi-v2s2 "$ARM" --platform linux/arm64
check "ctr content fetch test/big" fetch_big
check_fails "control: ctr pull with ferry replaced by a dead port in hosts.toml fails" \
  ctrc -n control images pull --hosts-dir "$T/certs-nomirror.d" "$ORIGIN/test/small:latest"
ctr_forget interop || true
ctr_forget control || true

# === e.faults ===========================================================================================
step e.faults "failover: first upstream misbehaves, second is the secondary (fresh ferry + cache each)"
# hang: each request that tries the hung upstream waits for ferry's header timeout, 3 s here (30 s by default)
printf 'header_timeout = "3s"\n' >"$T/fault-ferry.toml"
FAULT_MODES=(refused 500 503 429 401 403 reset hang)
fault_case() { # fault_case MODE PORT: ferry [bad upstream, secondary] serves test/small and did try the bad one
  [[ $1 == refused ]] || wait_port "$2"
  wait_http "http://127.0.0.1:$PX/v2/" "ferry-$1"
  F=127.0.0.1:$PX pull_dir small :latest "$T/pull/fault-$1"
  rm -rf "$T/pull/fault-$1"
  [[ $1 == refused ]] && return 0
  echo "requests seen by the faulty upstream: $(grep -c . "$LOGS/faulty-$1.log")"
  grep -q . "$LOGS/faulty-$1.log"
}
failover_in_metrics() { # failover_in_metrics MODE BAD_HOST:PORT: ferry-MODE's /metrics after fault_case
  local admin=$((PX + 1000)) want_reason failed failovers served
  case $1 in # reset: a connection dropped before any answer may surface as connect or bad_response
    refused) want_reason=connect ;; 500 | 503) want_reason=server_error ;; 429) want_reason=too_many_requests ;;
    401) want_reason=unauthorized ;; 403) want_reason=forbidden ;; hang) want_reason=header_timeout ;; *) want_reason= ;;
  esac
  curl -sS "http://127.0.0.1:$admin/metrics" | grep -E '^ferry_(failovers|upstream_requests)_total' || true
  failovers=$(metric_sum "$admin" ferry_failovers_total "upstream=\"$2\"")
  failed=$(metric_sum "$admin" ferry_upstream_requests_total "upstream=\"$2\"")
  served=$(metric_sum "$admin" ferry_upstream_requests_total "upstream=\"127.0.0.1:$P2\"" 'outcome="ok"')
  echo "failovers from #1: $failovers (want > 0), attempts on #1: $failed, ok answers from #2: $served (want > 0)"
  ((failovers > 0 && failed >= failovers && served > 0)) || return 1
  [[ -z $want_reason ]] || { # every attempt on the misbehaving upstream is one failover with the fault's reason
    echo "failovers with reason $want_reason: $(metric_sum "$admin" ferry_failovers_total "reason=\"$want_reason\"")"
    (($(metric_sum "$admin" ferry_failovers_total "reason=\"$want_reason\"") == failovers))
  }
}
for i in "${!FAULT_MODES[@]}"; do
  mode=${FAULT_MODES[$i]}
  port=$((PB + i)) # one port per mode: connections to the previous fake may still be closing
  bad=http://127.0.0.1:$port what="answers $mode"
  if [[ $mode == refused ]]; then bad=http://$DEAD what="refuses connections"; else
    start_bg "faulty-$mode" python3 "$HERE/ocitool.py" faulty "$port" "$mode"
  fi
  start_ferry "ferry-$mode" "$PX" "$T/cache-$mode" "$bad" "http://127.0.0.1:$P2" --config "$T/fault-ferry.toml"
  check "upstream #1 $what: test/small pulled from #2" fault_case "$mode" "$port"
  check "upstream #1 $what: /metrics counts its failovers and #2's successes" \
    failover_in_metrics "$mode" "${bad#http://}"
  stop_bg "ferry-$mode"
  stop_bg "faulty-$mode"
done

# === e.registries =======================================================================================
step e.registries "one ferry, two registries: reg-a.test = primary, reg-b.test = secondary, different test/same"
# Different content under the same repository name; a wrong route or a tag cache key without the registry would
# hand one registry's image to the other's client. Neither name resolves: hosts.toml and registries.conf fall back
# to a dead port, so only ferry can serve.
RA=reg-a.test RB=reg-b.test RF=127.0.0.1:$PX
push_same() {
  push --preserve-digests "oci:$T/layout:extra-2" "docker://127.0.0.1:$P1/test/same:latest"
  push --preserve-digests "oci:$T/layout:extra-3" "docker://127.0.0.1:$P2/test/same:latest"
  python3 "$HERE/ocitool.py" closure "http://127.0.0.1:$P1" test/same latest >"$(expect_file same-a)"
  python3 "$HERE/ocitool.py" closure "http://127.0.0.1:$P2" test/same latest >"$(expect_file same-b)"
  echo "primary test/same: $(expect_digest same-a); secondary test/same: $(expect_digest same-b)"
  [[ $(expect_digest same-a) != "$(expect_digest same-b)" ]]
}
check "push different images as test/same:latest to primary and secondary" push_same
start_ferry ferry-registries "$PX" "$T/cache-registries" "$RA=http://127.0.0.1:$P1" "$RB=http://127.0.0.1:$P2"
check "two-registry ferry up" wait_http "http://$RF/v2/" ferry-registries
for reg in "$RA" "$RB"; do
  mkdir -p "$T/certs-reg.d/$reg"
  printf 'server = "http://%s"\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' "$DEAD" "$RF" \
    >"$T/certs-reg.d/$reg/hosts.toml"
done
ferry_routed() { # ferry_routed REGISTRY UPSTREAM_PORT: ferry's log and metrics show REGISTRY's pulls went to that upstream
  local ok
  grep -E "path=/v2/test/same/manifests/latest\?ns=$1 " "$LOGS/ferry-registries.log" | tail -n 2
  ok=$(metric_sum $((PX + 1000)) ferry_upstream_requests_total "registry=\"$1\"" "upstream=\"127.0.0.1:$2\"" \
    'outcome="ok"')
  echo "ferry_upstream_requests_total{registry=\"$1\",upstream=\"127.0.0.1:$2\",outcome=\"ok\"} = $ok"
  ((ok > 0)) && grep -qE "path=/v2/test/same/manifests/latest\?ns=$1 " "$LOGS/ferry-registries.log"
}
check "ctr pull $RA/test/same (containerd sends ns=$RA): the primary's image" \
  ctr_pull_ref same-a "$RA/test/same:latest" same-a "" "$T/certs-reg.d"
check "ctr pull $RB/test/same (ns=$RB): the secondary's image, not the cached $RA tag" \
  ctr_pull_ref same-b "$RB/test/same:latest" same-b "" "$T/certs-reg.d"
check "ferry routed ns=$RA to the primary" ferry_routed "$RA" "$P1"
check "ferry routed ns=$RB to the secondary" ferry_routed "$RB" "$P2"
unknown_registry() {
  local body
  body=$(cu -H "Accept: $ACCEPT" "http://$RF/v2/test/same/manifests/latest?ns=reg-c.test") || return 1
  echo "$body"
  jq -e '.errors[0].code == "NAME_UNKNOWN"' <<<"$body" >/dev/null && http_code_is 404 "http://$RF/v2/test/same/manifests/latest?ns=reg-c.test"
}
http_code_is() { local got; got=$(cu -o /dev/null -w '%{http_code}' "$2") && echo "$2 -> $got" && [[ $got == "$1" ]]; }
check "ns=reg-c.test (not configured) -> 404 NAME_UNKNOWN" unknown_registry
ctr_forget same-a || true
ctr_forget same-b || true

step e.podman "podman pulls through registries.conf mirrors: plain mirror, and path prefix /v2/<registry>/..."
pm() { # pm REGISTRIES_CONF podman-args...: throwaway rootful podman with its own store under $T/podman
  CONTAINERS_REGISTRIES_CONF=$1 timeout "$CLIENT_TIMEOUT" podman --root "$T/podman/root" \
    --runroot "$T/podman/run" --storage-driver vfs --events-backend none "${@:2}"
}
registries_conf() { # registries_conf FILE PREFIX MIRROR_LOCATION: PREFIX's own location is a dead port
  cat >"$1" <<EOT
unqualified-search-registries = []
[[registry]]
prefix = "$2"
location = "$DEAD"
insecure = true
[[registry.mirror]]
location = "$3"
insecure = true
EOT
}
mkdir -p "$T/podman"
registries_conf "$T/podman/plain.conf" "$ORIGIN" "$F"
registries_conf "$T/podman/dead.conf" "$ORIGIN" "$DEAD"
registries_conf "$T/podman/reg-a.conf" "$RA" "$RF/$RA"
registries_conf "$T/podman/reg-b.conf" "$RB" "$RF/$RB"
podman_pull() { # podman_pull CONF REF EXPECT: pull, then the stored image's manifest digest is EXPECT's
  local got
  pm "$1" pull -q "$2" &&
    got=$(pm "$1" image inspect --format '{{.Digest}}' "$2") &&
    echo "podman: $2 -> $got, want $(expect_digest "$3")" &&
    [[ $got == "$(expect_digest "$3")" ]] && pm "$1" rmi -f "$2" >/dev/null
}
check "podman pull $ORIGIN/test/small (mirror: ferry at $F)" podman_pull "$T/podman/plain.conf" "$ORIGIN/test/small:latest" small
check_fails "control: podman pull with the mirror replaced by a dead port fails" \
  pm "$T/podman/dead.conf" pull -q "$ORIGIN/test/small:latest"
check "podman pull $RA/test/same (mirror: $RF/$RA, routed by path prefix)" \
  podman_pull "$T/podman/reg-a.conf" "$RA/test/same:latest" same-a
check "podman pull $RB/test/same (mirror: $RF/$RB)" podman_pull "$T/podman/reg-b.conf" "$RB/test/same:latest" same-b
stop_bg ferry-registries

# === e.tls ==============================================================================================
step e.tls "ferry serving TLS (test CA) with client auth: skopeo --cert-dir --creds, containerd hosts.toml ca + header"
TLS=$T/tls FT=127.0.0.1:$PT
make_cert() { # make_cert NAME: a CA NAME-ca and a server certificate for 127.0.0.1 signed by it, in $TLS
  make_ca_cert "$TLS" "$1" "IP:127.0.0.1,DNS:localhost"
}
mkdir -p "$TLS" "$T/empty-certdir"
check "openssl: test CA and server certificate" make_cert one
check "openssl: a second CA and certificate (for the reload check)" make_cert two
cp "$TLS/one.crt" "$TLS/server.crt" && cp "$TLS/one.key" "$TLS/server.key"
TOKEN=interop-token-$RANDOM$RANDOM
printf 'ci:s3cret-pass\nghcr-only:other-pass\n' >"$TLS/users"
printf '%s\n' "$TOKEN" >"$TLS/tokens"
cat >"$TLS/ferry.toml" <<EOT
tls_cert_file = "$TLS/server.crt"
tls_key_file = "$TLS/server.key"
auth_users_file = "$TLS/users"
auth_tokens_file = "$TLS/tokens"
[client_access]
ghcr-only = ["ghcr.io"]
EOT
start_ferry ferry-tls "$PT" "$T/cache-tls" "http://127.0.0.1:$P1" "http://127.0.0.1:$P2" --config "$TLS/ferry.toml"
wait_https() { # until GET /v2/ with the right CA and credentials answers 200
  local i
  for i in $(seq 1 100); do
    [[ $(curl -s --max-time 2 --cacert "$TLS/one-ca.crt" -u ci:s3cret-pass -o /dev/null -w '%{http_code}' \
      "https://$FT/v2/") == 200 ]] && return 0
    sleep 0.2
  done
  tail -n 20 "$LOGS/ferry-tls.log"; return 1
}
check "TLS ferry up" wait_https
last_passed || abort "ferry with TLS did not start (log $LOGS/ferry-tls.log)"
pull_tls() { # pull_tls IMAGE CERTDIR [skopeo copy args]: copy via the TLS ferry (verifying the CA), verify content
  local img=$1 certdir=$2 dest=$T/pull/tls-$1; shift 2
  rm -rf "$dest" && sk copy -q --src-cert-dir "$certdir" --preserve-digests "$@" "docker://$FT/test/$img:latest" \
    "dir:$dest" && python3 "$HERE/ocitool.py" verify-dir "$dest" "$(expect_file "$img")" && rm -rf "$dest"
}
check "skopeo --src-cert-dir + --src-creds (basic user): test/small verified" \
  pull_tls small "$TLS/one-certdir" --src-creds ci:s3cret-pass
# skopeo/podman send --registry-token only after a Bearer challenge; ferry challenges with Basic, so a token is
# given as the password (any user name)
check "skopeo --src-cert-dir + --src-creds (token as password): test/multi-v2s2 --all verified" \
  pull_tls multi-v2s2 "$TLS/one-certdir" --src-creds "token:$TOKEN" --all
check_fails "skopeo without the test CA fails (certificate not trusted)" \
  pull_tls small "$T/empty-certdir" --src-creds ci:s3cret-pass
check_fails "skopeo without credentials fails (401)" pull_tls small "$TLS/one-certdir"
check_fails "skopeo with a wrong password fails (401)" pull_tls small "$TLS/one-certdir" --src-creds ci:wrong
denied_by_access_rule() { # user ghcr-only may pull only from ghcr.io; this ferry serves docker.io
  local out
  ! pull_tls small "$TLS/one-certdir" --src-creds ghcr-only:other-pass || return 1
  out=$(cu --cacert "$TLS/one-ca.crt" -u ghcr-only:other-pass -o "$T/403.json" -w '%{http_code}' \
    "https://$FT/v2/test/small/manifests/latest") || return 1
  echo "$out"; cat "$T/403.json"; echo
  [[ $out == 403 ]] && jq -e '.errors[0].code == "DENIED"' "$T/403.json" >/dev/null
}
check "client_access: a user limited to ghcr.io is refused docker.io (403 DENIED), skopeo fails" denied_by_access_rule
challenge_ok() { # the 401 carries OCI JSON and a Basic challenge; HTTP/2 is negotiated by ALPN
  local out
  out=$(cu --cacert "$TLS/one-ca.crt" -o "$T/401.json" \
    -w '%{http_code}|%{http_version}|%header{www-authenticate}' "https://$FT/v2/test/small/manifests/latest") || return 1
  echo "$out"; cat "$T/401.json"; echo
  [[ $out == '401|2|Basic realm="ferry"' ]] && jq -e '.errors[0].code == "UNAUTHORIZED"' "$T/401.json" >/dev/null
}
check "no credentials: 401 UNAUTHORIZED with WWW-Authenticate: Basic, over HTTP/2" challenge_ok
mkdir -p "$T/certs-tls.d/$ORIGIN"
cat >"$T/certs-tls.d/$ORIGIN/hosts.toml" <<EOT
server = "http://$DEAD"
[host."https://$FT"]
  capabilities = ["pull", "resolve"]
  ca = "$TLS/one-ca.crt"
  [host."https://$FT".header]
    Authorization = "Bearer $TOKEN"
EOT
check "ctr pull --all-platforms test/multi over TLS (hosts.toml ca, Authorization: Bearer header)" \
  ctr_pull_ref tls "$ORIGIN/test/multi:latest" multi "" "$T/certs-tls.d" --all-platforms
ctr_forget tls || true
reload_cert() { # swap in a certificate from another CA, SIGHUP: clients must now trust CA two, not CA one
  cp "$TLS/two.crt" "$TLS/server.crt.new" && cp "$TLS/two.key" "$TLS/server.key.new" &&
    mv "$TLS/server.key.new" "$TLS/server.key" && mv "$TLS/server.crt.new" "$TLS/server.crt" &&
    kill -HUP "${PIDS[ferry-tls]}" || return 1
  local i
  for i in $(seq 1 50); do
    curl -s --max-time 2 --cacert "$TLS/two-ca.crt" -u ci:s3cret-pass -o /dev/null "https://$FT/v2/" && break
    sleep 0.2
  done
  pull_tls small "$TLS/two-certdir" --src-creds ci:s3cret-pass || return 1
  echo "pull with the new CA: ok; with the old CA:"
  ! pull_tls small "$TLS/one-certdir" --src-creds ci:s3cret-pass
}
check "certificate replaced + SIGHUP: skopeo trusts the new CA, the old one is refused, no restart" reload_cert
reloaded_in_place() { # the same process logged the reload and is still serving
  grep -F "TLS certificate reloaded" "$LOGS/ferry-tls.log" | tail -n 1
  grep -qF "TLS certificate reloaded" "$LOGS/ferry-tls.log" && kill -0 "${PIDS[ferry-tls]}" &&
    (($(grep -c -- "--- .* starting: " "$LOGS/ferry-tls.log") == 1))
}
check "the TLS ferry logged the reload and was started only once" reloaded_in_place
stop_bg ferry-tls

# === e.store ============================================================================================
step e.store "shared store on a real Garage: replica A fills test/big; replica B (blob_redirect) sends skopeo to presigned URLs"
PSA=$((PF + 20)) PSB=$((PF + 21)) PG3=$((PF + 30)) PG1=$((PF + 31))
start_garage() { # single-node Garage on :$PG3 (S3) / :$PG1 (RPC), in this shell (checks run in subshells)
  local cfg=$T/garage.toml
  mkdir -p "$T/garage"
  cat >"$cfg" <<EOF
metadata_dir = "$T/garage/meta"
data_dir = "$T/garage/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$PG1"
rpc_public_addr = "127.0.0.1:$PG1"
rpc_secret = "$(openssl rand -hex 32)"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$PG3"
root_domain = ".s3.garage.localhost"
EOF
  start_bg garage env RUST_LOG=warn garage -c "$cfg" server
}
set_up_garage() { # bucket interop and a key (in $T/garage.key), with Garage's own CLI
  local cfg=$T/garage.toml node
  for _ in $(seq 1 100); do node=$(garage -c "$cfg" node id -q 2>/dev/null) && break; sleep 0.1; done
  [[ -n ${node:-} ]] || return 1
  garage -c "$cfg" layout assign -z dc1 -c 1G "${node%%@*}" >/dev/null &&
    garage -c "$cfg" layout apply --version 1 >/dev/null &&
    garage -c "$cfg" bucket create interop >/dev/null &&
    garage -c "$cfg" key create interop-key >"$T/garage.key" &&
    garage -c "$cfg" bucket allow --read --write --owner interop --key interop-key >/dev/null
}
if command -v garage >/dev/null; then
  start_garage
  check "Garage up with a bucket and a key" set_up_garage
  export AWS_ENDPOINT_URL=http://127.0.0.1:$PG3 AWS_REGION=garage
  AWS_ACCESS_KEY_ID=$(awk '/Key ID:/ {print $3}' "$T/garage.key"); export AWS_ACCESS_KEY_ID
  AWS_SECRET_ACCESS_KEY=$(awk '/Secret key:/ {print $3}' "$T/garage.key"); export AWS_SECRET_ACCESS_KEY
  printf 'shared_store = "s3://interop/az"\nblob_redirect = true\n' >"$T/store-b.toml"
  start_ferry store-a "$PSA" "$T/cache-store-a" "http://127.0.0.1:$P1" "http://127.0.0.1:$P2" --shared-store s3://interop/az
  check "replica A up" wait_http "http://127.0.0.1:$PSA/v2/" store-a
  pull_via_a() { F=127.0.0.1:$PSA pull_dir big :latest "$T/pull/store-a"; }
  pull_via_b() { F=127.0.0.1:$PSB pull_dir big :latest "$T/pull/store-b"; }
  check "skopeo copy test/big via replica A -> dir: (fills A, uploads to the store)" pull_via_a
  uploaded() { # test/big's layers, config, manifest and tag record are in the store
    local n want; want=$(jq '[.big.layers[]] | length + 3' "$T/layout.summary.json")
    for _ in $(seq 1 100); do
      n=$(curl -sS "http://127.0.0.1:$((PSA + 1000))/admin/upstreams" | jq '.shared_store.uploads')
      ((n >= want)) && return 0; sleep 0.2
    done
    return 1
  }
  check "replica A uploaded test/big's blobs to Garage" uploaded
  start_ferry store-b "$PSB" "$T/cache-store-b" "http://127.0.0.1:$P1" "http://127.0.0.1:$P2" --config "$T/store-b.toml"
  check "replica B up (blob_redirect)" wait_http "http://127.0.0.1:$PSB/v2/" store-b
  redirected() { # a blob GET on B answers 307 to a presigned Garage URL
    local digest; digest=$(jq -r '.big.layers[0][0]' "$T/layout.summary.json")
    curl -sS -o /dev/null -w '%{http_code} %{redirect_url}' "http://127.0.0.1:$PSB/v2/test/big/blobs/$digest" |
      grep -E "^307 http://127.0.0.1:$PG3/.*X-Amz-Signature="
  }
  check "replica B answers a blob GET with a 307 to a presigned Garage URL" redirected
  check "skopeo copy test/big via replica B follows the redirects -> dir:, every blob verified" pull_via_b
  no_blob_bytes_through_b() { [[ -z $(find "$T/cache-store-b/blobs" -type f 2>/dev/null) ]]; }
  check "no blob went through replica B (its blob cache is empty)" no_blob_bytes_through_b
  stop_bg store-b; stop_bg store-a; stop_bg garage
  unset AWS_ENDPOINT_URL AWS_REGION AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
else
  check "garage installed (cargo install garage --locked, as .ci/run does)" false
fi

# === e.docker ===========================================================================================
# shellcheck source=tests/interop/docker.sh
source "$HERE/docker.sh"

# === f ==================================================================================================
step f "outage: pulls by tag keep running while the primary loses the manifest, goes down, then both go down"
pull_loop() { # background: pull test/small:latest via ferry with skopeo and ctr (fresh dir / namespace each time)
  local i=0 phase t0 r
  while [[ ! -e $T/loop.stop ]]; do
    i=$((i + 1)); phase=$(<"$T/phase")
    echo "### $(date +%T.%N) iteration $i, phase $phase"
    t0=$(now)
    if pull_dir small :latest "$T/loop/sk$i"; then r=ok; else r=FAIL; fi
    rm -rf "$T/loop/sk$i"
    echo "$phase skopeo $i $r $(elapsed "$t0")" >>"$T/loop.results"
    t0=$(now)
    if ctr_pull "loop$i" small ""; then r=ok; else r=FAIL; fi
    ctr_forget "loop$i" || true
    echo "$phase ctr $i $r $(elapsed "$t0")" >>"$T/loop.results"
    sleep 0.2
  done
}
loop_done() { # loop_done PHASE KIND: number of finished loop pulls of KIND that started in PHASE
  awk -v p="$1" -v k="$2" '$1 == p && $2 == k' "$T/loop.results" 2>/dev/null | wc -l
}
run_phase() { # run_phase NAME: label the loop's pulls NAME:settle for TAG_TTL+1 s, then NAME until 2+2 finished
  echo "$1:settle" >"$T/phase"
  sleep $((TAG_TTL + 1))
  echo "$1" >"$T/phase"
  local deadline=$(($(date +%s) + CLIENT_TIMEOUT))
  while (($(loop_done "$1" skopeo) < 2 || $(loop_done "$1" ctr) < 2)) && (($(date +%s) < deadline)) &&
    kill -0 "${PIDS[loop]}" 2>/dev/null; do
    sleep 0.3
  done
}
phase_clean() { # phase_clean NAME: all loop pulls started during NAME (incl. settle) succeeded, >= 2 per client
  local rows ok_sk ok_ctr bad
  rows=$(awk -v p="$1" '$1 == p || $1 == p ":settle"' "$T/loop.results")
  echo "$rows"
  ok_sk=$(awk '$2 == "skopeo" && $4 == "ok"' <<<"$rows" | wc -l)
  ok_ctr=$(awk '$2 == "ctr" && $4 == "ok"' <<<"$rows" | wc -l)
  bad=$(awk '$4 != "ok"' <<<"$rows" | wc -l)
  echo "skopeo ok $ok_sk, ctr ok $ok_ctr, failed $bad"
  ((bad == 0 && ok_sk >= 2 && ok_ctr >= 2))
}
delete_on_primary() {
  local code
  code=$(cu -o /dev/null -w '%{http_code}' -X DELETE \
    "http://127.0.0.1:$P1/v2/test/small/manifests/$(expect_digest small)")
  echo "DELETE test/small@$(expect_digest small) on primary -> $code"
  [[ $code == 202 ]]
  code=$(cu -o /dev/null -w '%{http_code}' -H "Accept: $ACCEPT" \
    "http://127.0.0.1:$P1/v2/test/small/manifests/latest")
  echo "primary: GET test/small:latest -> $code"
  [[ $code == 404 ]]
}
is_down() { ! port_busy "$1"; }
log_mark() { wc -l <"$LOGS/$1.log"; } # log_mark NAME: current length of a server's log
secondary_served_tag() { # secondary_served_tag MARK: the secondary answered test/small:latest 200 since MARK
  local hits
  hits=$(tail -n +$(($1 + 1)) "$LOGS/secondary.log" |
    grep -cE '"(GET|HEAD) /v2/test/small/manifests/latest[^"]*" 200 ') || true
  echo "secondary access log: $hits x 200 for test/small/manifests/latest"
  ((hits > 0))
}

echo "all-up" >"$T/phase"
: >"$T/loop.results"
start_bg loop pull_loop
PHASES=(all-up primary-deleted primary-down both-down)
run_phase all-up

check "primary: delete test/small's manifest (tag now 404 there)" delete_on_primary
mark=$(log_mark secondary)
run_phase primary-deleted
check "primary-deleted: the secondary answered ferry's revalidations of the tag" secondary_served_tag "$mark"

stop_bg primary
check "primary stopped" is_down "$P1"
mark=$(log_mark secondary)
check "test/late (never pulled before) via ferry while the primary is down" pull_dir late :latest "$T/pull/late"
check "ctr pull test/late while the primary is down" ctr_pull late late ""
run_phase primary-down
check "primary-down: the secondary answered ferry's revalidations of the tag" secondary_served_tag "$mark"

stop_bg secondary
check "secondary stopped (both upstreams down now)" is_down "$P2"
run_phase both-down
check "both down: skopeo copy test/small:latest (stale tag)" pull_dir small :latest "$T/pull/down-small"
check "both down: skopeo copy --all test/multi:latest (stale tag)" pull_oci multi :latest "$T/pull/down-multi"
check "both down: skopeo copy --all test/multi-v2s2:latest (stale tag)" \
  pull_dir multi-v2s2 :latest "$T/pull/down-multi-v2s2" --all
check "both down: skopeo copy test/small by digest" pull_dir small "@$(expect_digest small)" "$T/pull/down-small-d"
check "both down: skopeo copy --all test/multi by digest" pull_oci multi "@$(expect_digest multi)" "$T/pull/down-multi-d"
check "both down: ctr pull test/small (fresh namespace)" ctr_pull down-small small ""
check "both down: ctr pull --all-platforms test/multi (fresh namespace)" ctr_pull down-multi multi "" --all-platforms
check_fails "both down: skopeo copy test/never (never pulled) fails" pull_dir never :latest "$T/pull/down-never"
check_fails "both down: ctr pull test/never (never pulled) fails" ctr_pull down-never never ""
touch "$T/loop.stop"
for _ in $(seq 1 $((CLIENT_TIMEOUT * 10))); do kill -0 "${PIDS[loop]}" 2>/dev/null || break; sleep 0.1; done
stop_bg loop
for ph in "${PHASES[@]}"; do check "pull loop during $ph: every pull succeeded" phase_clean "$ph"; done
outage_in_metrics() { # what the seed's team watched: failovers from the primary by reason, the secondary's work
  local admin=$((PF + 1000)) deleted down served hits
  curl -sS "http://127.0.0.1:$admin/metrics" |
    grep -E '^ferry_(failovers_total|upstream_requests_total|upstream_breaker_open|cache_hits_total)' || true
  deleted=$(metric_sum "$admin" ferry_failovers_total "upstream=\"127.0.0.1:$P1\"" 'reason="not_found"')
  down=$(metric_sum "$admin" ferry_failovers_total "upstream=\"127.0.0.1:$P1\"" 'reason="connect"')
  served=$(metric_sum "$admin" ferry_upstream_requests_total "upstream=\"127.0.0.1:$P2\"" 'outcome="ok"')
  hits=$(metric_sum "$admin" ferry_cache_hits_total)
  echo "primary failovers: not_found $deleted, connect $down; secondary ok $served; cache hits $hits"
  ((deleted > 0 && down > 0 && served > 0 && hits > 0))
}
check "/metrics after the outage: primary's failovers (not_found, connect), secondary's answers, cache hits" \
  outage_in_metrics
for ns in late down-small down-multi down-never; do ctr_forget "$ns" || true; done
rm -rf "$T/pull"/*

# === f.restart ==========================================================================================
step f.restart "restart ferry with both upstreams down: content by digest comes from the on-disk cache"
stop_bg ferry
start_ferry ferry "$PF" "$T/cache" "http://127.0.0.1:$P1" "http://127.0.0.1:$P2"
check "ferry restarted: GET /v2/ = 200" wait_http "http://$F/v2/" ferry
check "after restart: skopeo copy test/small by digest" pull_dir small "@$(expect_digest small)" "$T/pull/r-small"
check "after restart: skopeo copy --all test/multi by digest" pull_oci multi "@$(expect_digest multi)" "$T/pull/r-multi"
info "after restart: test/small:latest by tag (tag mapping persisted?)" pull_dir small :latest "$T/pull/r-small-tag"

# === g ==================================================================================================
step g "summary ($(elapsed "$T_START") in total)"
print_summary
(($(failed_count) == 0))
