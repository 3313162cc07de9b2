#!/usr/bin/env bash
# Serve the generator with vLLM 0.33.0 from its OWN virtual environment (docs/design.md §5).
#
# vLLM must never be installed into the app's environment: it pins torch==2.14.0 (CUDA) and
# pillow>=13, while gradio 6.31 requires pillow<13. This script creates
# $VLLM_VENV with `pip install vllm==0.33.0` the first time (network or a pip wheelhouse needed),
# then runs `vllm serve` from it.
#
# Parameters (environment, defaults in brackets):
#   GPU_PROFILE                  80gb | 24gb [80gb]; picks the defaults marked (profile) below
#   VLLM_MODEL                   hub id or local folder [Qwen/Qwen2.5-7B-Instruct; 24gb: Qwen/Qwen2.5-7B-Instruct-AWQ]
#   VLLM_SERVED_NAME             the `model` name clients send [clinical-llm]
#   VLLM_HOST / VLLM_PORT        listen address [127.0.0.1 / 8000]
#   VLLM_MAX_MODEL_LEN           context length in tokens [8192]
#   VLLM_GPU_MEMORY_UTILIZATION  share of TOTAL GPU memory vLLM may take (profile) [80gb: 0.85, 24gb: 0.70]
#   VLLM_MAX_NUM_SEQS            concurrent sequences (profile) [80gb: 64, 24gb: 32]
#   VLLM_API_KEY                 optional bearer token clients must send
#   VLLM_API_KEY_FILE            file holding the token (used when VLLM_API_KEY is empty)
#   VLLM_VENV                    vLLM's own venv [$HOME/.venvs/vllm-0.33.0]
#   VLLM_PYTHON                  interpreter used to create that venv, 3.11-3.14 [python3]
# Extra arguments are passed on to `vllm serve` (e.g. --quantization awq, --structured-outputs-config ...).
set -euo pipefail

VLLM_VERSION="0.33.0"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"

die() { echo "vllm_serve.sh: $*" >&2; exit 2; }

profile="${GPU_PROFILE:-80gb}"
case "$profile" in
  80gb) def_model="Qwen/Qwen2.5-7B-Instruct";     def_util="0.85"; def_seqs="64" ;;
  24gb) def_model="Qwen/Qwen2.5-7B-Instruct-AWQ"; def_util="0.70"; def_seqs="32" ;;
  *) die "GPU_PROFILE must be 80gb or 24gb, got '$profile'" ;;
esac

model="${VLLM_MODEL:-$def_model}"
served_name="${VLLM_SERVED_NAME:-clinical-llm}"
host="${VLLM_HOST:-127.0.0.1}"
port="${VLLM_PORT:-8000}"
max_model_len="${VLLM_MAX_MODEL_LEN:-8192}"
gpu_util="${VLLM_GPU_MEMORY_UTILIZATION:-$def_util}"
max_num_seqs="${VLLM_MAX_NUM_SEQS:-$def_seqs}"
venv="${VLLM_VENV:-$HOME/.venvs/vllm-$VLLM_VERSION}"
python_bin="${VLLM_PYTHON:-python3}"

[[ "$port" =~ ^[0-9]+$ ]] && (( port > 0 && port < 65536 )) || die "VLLM_PORT must be a port number, got '$port'"
[[ "$max_model_len" =~ ^[0-9]+$ ]] || die "VLLM_MAX_MODEL_LEN must be an integer, got '$max_model_len'"
[[ "$max_num_seqs" =~ ^[0-9]+$ ]] || die "VLLM_MAX_NUM_SEQS must be an integer, got '$max_num_seqs'"
[[ "$gpu_util" =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] || die "VLLM_GPU_MEMORY_UTILIZATION must be a fraction in (0, 1], got '$gpu_util'"

# The key: the variable wins, then the file (same order as the app's CRAG_LLM_API_KEY / _FILE).
api_key="${VLLM_API_KEY:-}"
if [[ -z "$api_key" && -n "${VLLM_API_KEY_FILE:-}" ]]; then
  [[ -r "$VLLM_API_KEY_FILE" ]] || die "VLLM_API_KEY_FILE=$VLLM_API_KEY_FILE is not readable"
  api_key="$(tr -d '\r\n' < "$VLLM_API_KEY_FILE")"
  [[ -n "$api_key" ]] || die "VLLM_API_KEY_FILE=$VLLM_API_KEY_FILE is empty"
fi

# --- vLLM's own environment -------------------------------------------------------------------
if [[ "$(realpath -m -- "$venv")" == "$(realpath -m -- "$REPO/.venv")" ]]; then
  die "VLLM_VENV points at the app's venv ($REPO/.venv); vLLM needs its own (pillow/torch conflicts)"
fi
if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('gradio') is None)" 2>/dev/null; then
  die "$venv has gradio installed, so it looks like the app's environment; point VLLM_VENV at a separate venv"
fi

has_vllm() {
  [[ -x "$venv/bin/vllm" && -x "$venv/bin/python" ]] &&
    "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('vllm') != '$VLLM_VERSION')" 2>/dev/null
}

if ! has_vllm; then
  "$python_bin" -c "import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 15)))" ||
    die "vllm $VLLM_VERSION needs Python >=3.11,<3.15; set VLLM_PYTHON to such an interpreter"
  echo "+ creating vLLM environment $venv (pip install vllm==$VLLM_VERSION: torch 2.14 CUDA, several GB)" >&2
  mkdir -p "$(dirname "$venv")"
  "$python_bin" -m venv "$venv"
  "$venv/bin/python" -m pip install --upgrade pip
  "$venv/bin/python" -m pip install "vllm==$VLLM_VERSION"
  has_vllm || die "vllm==$VLLM_VERSION is still not importable from $venv"
fi

# --- serve ------------------------------------------------------------------------------------
# Flags checked against the 0.33.0 source.
args=(
  serve "$model"
  --served-model-name "$served_name"
  --host "$host" --port "$port"
  --max-model-len "$max_model_len"
  --gpu-memory-utilization "$gpu_util"
  --dtype auto
  --enable-prefix-caching
  --max-num-seqs "$max_num_seqs"
  --generation-config vllm
)
shown=("${args[@]}")
if [[ -n "$api_key" ]]; then
  args+=(--api-key "$api_key")
  shown+=(--api-key '***')
fi
args+=("$@")
shown+=("$@")

# vLLM reads VLLM_* variables as its own settings (VLLM_PORT, for one, is its internal
# communication port, and unknown names are warned about), so ours must not reach it.
unset VLLM_MODEL VLLM_SERVED_NAME VLLM_HOST VLLM_PORT VLLM_MAX_MODEL_LEN VLLM_GPU_MEMORY_UTILIZATION \
  VLLM_MAX_NUM_SEQS VLLM_API_KEY VLLM_API_KEY_FILE VLLM_VENV VLLM_PYTHON

echo "+ GPU_PROFILE=$profile" >&2
{ printf '+'; printf ' %q' "$venv/bin/vllm" "${shown[@]}"; printf '\n'; } >&2
exec "$venv/bin/vllm" "${args[@]}"
