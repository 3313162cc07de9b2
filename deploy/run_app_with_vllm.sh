#!/usr/bin/env bash
# One-GPU demo without containers: start vLLM (deploy/vllm_serve.sh, its own venv) in the
# background, wait until GET /v1/models answers with our served name, then run the app from the
# repo's venv against it. vLLM is stopped when this script exits (normally, on error or on Ctrl-C).
#
# Parameters (environment, defaults in brackets); all of vllm_serve.sh's VLLM_* / GPU_PROFILE too:
#   APP_VENV             the app's venv [<repo>/.venv]
#   APP_ENTRY            script the app is started with, relative to the repo or absolute [app.py]
#   CRAG_EMBEDDER        embedder registry name or model folder [the app's default: the fine-tuned
#                        'domain' model if finetune.pipeline made one, else me5-small]; on a GPU host
#                        e.g. the folder of multilingual-e5-large or of our fine-tuned model
#   CRAG_DEVICE          device for the embedder [cuda]
#   VLLM_START_TIMEOUT   seconds to wait for /v1/models [900]
#   VLLM_LOG             vLLM's output [<repo>/var/log/vllm.log]
# Arguments are passed on to the app.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"

die() { echo "run_app_with_vllm.sh: $*" >&2; exit 2; }

app_venv="${APP_VENV:-$REPO/.venv}"
app_py="$app_venv/bin/python"
app_entry="${APP_ENTRY:-app.py}"
port="${VLLM_PORT:-8000}"
served_name="${VLLM_SERVED_NAME:-clinical-llm}"
start_timeout="${VLLM_START_TIMEOUT:-900}"
vllm_log="${VLLM_LOG:-$REPO/var/log/vllm.log}"
if [ -n "${CRAG_EMBEDDER:-}" ]; then export CRAG_EMBEDDER; fi  # unset: the app chooses
export CRAG_DEVICE="${CRAG_DEVICE:-cuda}"

[[ "$port" =~ ^[0-9]+$ ]] || die "VLLM_PORT must be a port number, got '$port'"
[[ "$start_timeout" =~ ^[0-9]+$ ]] || die "VLLM_START_TIMEOUT must be seconds, got '$start_timeout'"

# The app connects where vLLM listens; a wildcard listen address is reached over loopback.
connect_host="${VLLM_HOST:-127.0.0.1}"
case "$connect_host" in 0.0.0.0|::|"[::]") connect_host="127.0.0.1" ;; esac
[[ "$connect_host" == *:* && "$connect_host" != \[* ]] && connect_host="[$connect_host]"
base_url="http://$connect_host:$port/v1"

# One key for both sides. VLLM_API_KEY(_FILE) is the source; a key given only in the app's
# variables (CRAG_LLM_API_KEY(_FILE)) is handed to vLLM as well. A file stays a file.
if [[ -z "${VLLM_API_KEY:-}" && -z "${VLLM_API_KEY_FILE:-}" ]]; then
  if [[ -n "${CRAG_LLM_API_KEY:-}" ]]; then export VLLM_API_KEY="$CRAG_LLM_API_KEY"
  elif [[ -n "${CRAG_LLM_API_KEY_FILE:-}" ]]; then export VLLM_API_KEY_FILE="$CRAG_LLM_API_KEY_FILE"
  fi
fi
unset CRAG_LLM_API_KEY CRAG_LLM_API_KEY_FILE
if [[ -n "${VLLM_API_KEY:-}" ]]; then
  export CRAG_LLM_API_KEY="$VLLM_API_KEY"
elif [[ -n "${VLLM_API_KEY_FILE:-}" ]]; then
  [[ -r "$VLLM_API_KEY_FILE" ]] || die "VLLM_API_KEY_FILE=$VLLM_API_KEY_FILE is not readable"
  export CRAG_LLM_API_KEY_FILE="$(realpath -- "$VLLM_API_KEY_FILE")"
fi

# Loopback traffic must not go through a proxy (httpx and urllib honour HTTP(S)_PROXY).
export NO_PROXY="127.0.0.1,localhost,::1${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"

# --- checks before spending minutes on loading the model --------------------------------------
[[ -x "$app_py" ]] || die "no app interpreter at $app_py (create the app venv or set APP_VENV)"
[[ "$app_entry" == /* ]] && entry_path="$app_entry" || entry_path="$REPO/$app_entry"
[[ -f "$entry_path" ]] || die "no $entry_path to start"
if [[ "$CRAG_DEVICE" == cuda* ]]; then
  "$app_py" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" || die \
    "CRAG_DEVICE=$CRAG_DEVICE but torch in $app_venv sees no CUDA device (a +cpu build, or no driver); install a CUDA build of torch==2.13.0 there, or set CRAG_DEVICE=cpu"
fi

# probe URL NAME -> 0 ready, 1 no answer, 2 rejected our key, 3 answers without NAME, 4 other HTTP error
probe() {
  "$app_py" - "$1" "$2" <<'PY'
import json, os, sys, urllib.error, urllib.request
url, name = sys.argv[1], sys.argv[2]
key = os.environ.get("CRAG_LLM_API_KEY", "")
if not key and os.environ.get("CRAG_LLM_API_KEY_FILE"):
    with open(os.environ["CRAG_LLM_API_KEY_FILE"], encoding="utf-8") as fh:
        key = fh.read().strip()
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
try:
    with opener.open(req, timeout=5) as resp:
        ids = [m.get("id") for m in json.load(resp).get("data", [])]
except urllib.error.HTTPError as e:
    sys.exit(2 if e.code in (401, 403) else 4)
except Exception:
    sys.exit(1)
if name not in ids:
    print(f"served models: {ids}", file=sys.stderr)
    sys.exit(3)
PY
}

models_url="$base_url/models"
rc=0; probe "$models_url" "$served_name" 2>/dev/null || rc=$?
(( rc == 1 )) || die "something already answers on $models_url; stop it or choose another VLLM_PORT"

# --- start vLLM, clean up on exit --------------------------------------------------------------
vllm_pid=""
app_pid=""
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [[ -n "$app_pid" ]] && kill -0 "$app_pid" 2>/dev/null; then
    kill -TERM "$app_pid" 2>/dev/null || true
    wait "$app_pid" 2>/dev/null || true
  fi
  if [[ -n "$vllm_pid" ]] && kill -0 "$vllm_pid" 2>/dev/null; then
    echo "+ stopping vLLM (pid $vllm_pid)" >&2
    # vLLM runs in its own session/process group ($vllm_pid), which also holds its engine workers.
    kill -TERM -- "-$vllm_pid" 2>/dev/null || kill -TERM "$vllm_pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$vllm_pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$vllm_pid" 2>/dev/null; then
      echo "+ vLLM did not stop in 30 s, killing it" >&2
      kill -KILL -- "-$vllm_pid" 2>/dev/null || kill -KILL "$vllm_pid" 2>/dev/null || true
    fi
    wait "$vllm_pid" 2>/dev/null || true
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$(dirname "$vllm_log")"
echo "+ starting vLLM in the background; output goes to $vllm_log" >&2
# VLLM_LOG and VLLM_START_TIMEOUT are this script's own; vLLM would take VLLM_* names as its settings.
serve=(env -u VLLM_LOG -u VLLM_START_TIMEOUT "$HERE/vllm_serve.sh")
if command -v setsid >/dev/null 2>&1; then
  setsid "${serve[@]}" >"$vllm_log" 2>&1 </dev/null &
else
  "${serve[@]}" >"$vllm_log" 2>&1 </dev/null &
fi
vllm_pid=$!

echo "+ waiting up to ${start_timeout}s for $models_url to list '$served_name'" >&2
deadline=$(( SECONDS + start_timeout ))
while :; do
  if ! kill -0 "$vllm_pid" 2>/dev/null; then
    echo "run_app_with_vllm.sh: vLLM exited before it answered; last lines of $vllm_log:" >&2
    tail -n 40 "$vllm_log" >&2 || true
    exit 1
  fi
  rc=0; probe "$models_url" "$served_name" || rc=$?
  case "$rc" in
    0) break ;;
    2) die "vLLM at $models_url rejected the API key (HTTP 401/403); VLLM_API_KEY(_FILE) and CRAG_LLM_API_KEY(_FILE) must match" ;;
    3) die "vLLM at $models_url does not serve '$served_name'" ;;
  esac
  if (( SECONDS >= deadline )); then
    echo "run_app_with_vllm.sh: timed out after ${start_timeout}s waiting for $models_url (first start may download the model and needs more time: raise VLLM_START_TIMEOUT). Last lines of $vllm_log:" >&2
    tail -n 40 "$vllm_log" >&2 || true
    exit 1
  fi
  sleep 2
done
echo "+ vLLM is up: $models_url" >&2

# --- the app -----------------------------------------------------------------------------------
export CRAG_LLM_BASE_URL="$base_url"
export CRAG_LLM_MODEL="$served_name"
echo "+ CRAG_LLM_BASE_URL=$CRAG_LLM_BASE_URL CRAG_LLM_MODEL=$CRAG_LLM_MODEL CRAG_EMBEDDER=${CRAG_EMBEDDER:-<app default>} CRAG_DEVICE=$CRAG_DEVICE${CRAG_LLM_API_KEY:+ CRAG_LLM_API_KEY=***}${CRAG_LLM_API_KEY_FILE:+ CRAG_LLM_API_KEY_FILE=$CRAG_LLM_API_KEY_FILE}" >&2
cd "$REPO"
printf '+ %q %q' "$app_py" "$app_entry" >&2; (( $# )) && printf ' %q' "$@" >&2; printf '\n' >&2
# In the background plus `wait`, so a TERM to this script runs the cleanup at once.
"$app_py" "$app_entry" "$@" &
app_pid=$!
rc=0; wait "$app_pid" || rc=$?
app_pid=""
exit "$rc"
