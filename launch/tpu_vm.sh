#!/usr/bin/env bash
# Create, set up and run astor_jax on a Cloud TPU VM or a multi-host TPU pod slice.
#
# Every command acts on all workers of the slice at once (gcloud --worker=all);
# each worker runs one process and JAX's distributed runtime joins them
# (ASTOR_DISTRIBUTED=tpu, see astor_jax/distributed.py).
#
#   launch/tpu_vm.sh create  NAME ZONE ACCELERATOR [RUNTIME_VERSION]   # e.g. v5litepod-64
#   launch/tpu_vm.sh setup   NAME ZONE            # copy this checkout, make .venv, pip install .[tpu]
#   launch/tpu_vm.sh stage   NAME ZONE GCS_DIR DEST_DIR   # copy checkpoint/data from GCS to every worker
#   launch/tpu_vm.sh check   NAME ZONE ARGS...    # launch_check on worker 0 (no TPU needed)
#   launch/tpu_vm.sh run     NAME ZONE ARGS...    # python -m astor_jax.main ARGS on all workers
#   launch/tpu_vm.sh start   NAME ZONE ARGS...    # the same, detached (nohup); survives ssh drops
#   launch/tpu_vm.sh logs    NAME ZONE            # follow worker 0's log of a detached run
#   launch/tpu_vm.sh stop    NAME ZONE            # SIGTERM the job on all workers (it checkpoints)
#   launch/tpu_vm.sh delete  NAME ZONE
#
# Example (Qwen2.5-Coder-7B on a v5e-64 slice):
#   launch/tpu_vm.sh create astor-v5e europe-west4-b v5litepod-64
#   launch/tpu_vm.sh setup  astor-v5e europe-west4-b
#   launch/tpu_vm.sh stage  astor-v5e europe-west4-b gs://my-bucket/astor_inputs /tmp/astor_inputs
#   launch/tpu_vm.sh start  astor-v5e europe-west4-b \
#     --config=configs/paper/qwen25_coder_7b.py:v5e-64 --workdir=gs://my-bucket/runs/q25c7b \
#     --config.model.hf_path=/tmp/astor_inputs/Qwen2.5-Coder-7B-Instruct \
#     --config.data.cruxeval_path=/tmp/astor_inputs/cruxeval.jsonl \
#     --config.data.mbpp_path=/tmp/astor_inputs/mbpp.jsonl \
#     --config.data.aider_exercises_path=/tmp/astor_inputs/aider_python \
#     --config.data.commits_path=/tmp/astor_inputs/commits.jsonl
#
# The --workdir of a multi-host run must be one location every worker sees
# (a gs:// bucket or a shared filesystem): orbax writes each host's shards there.
# Environment: PROJECT (gcloud project, default: gcloud's), REMOTE_DIR (checkout
# location on the workers, default ~/astor_jax), SPOT=1 (preemptible capacity).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REMOTE_DIR="${REMOTE_DIR:-astor_jax}"  # relative to the worker's home directory
LOG="astor_logs/run.log"
PID_FILE="astor_logs/run.pid"

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
  exit 2
}

die() {
  echo "tpu_vm.sh: error: $*" >&2
  exit 2
}

project_flag() {
  if [[ -n "${PROJECT:-}" ]]; then echo "--project=${PROJECT}"; fi
}

# ssh NAME ZONE WORKER COMMAND: run COMMAND on WORKER ("all" or an index).
on_workers() {
  local name="$1" zone="$2" worker="$3" command="$4"
  # shellcheck disable=SC2046
  gcloud compute tpus tpu-vm ssh "${name}" --zone="${zone}" $(project_flag) \
    --worker="${worker}" --command="${command}"
}

# Quote each argument so it survives the remote shell.
quote_args() {
  local out="" arg
  for arg in "$@"; do out+=" $(printf '%q' "${arg}")"; done
  echo "${out}"
}

default_runtime() {
  case "$1" in
    v5litepod-*|v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    *) echo "tpu-ubuntu2204-base" ;;
  esac
}

cmd_create() {
  [[ $# -ge 3 ]] || usage
  local name="$1" zone="$2" accel="$3" runtime="${4:-$(default_runtime "$3")}"
  local extra=()
  if [[ "${SPOT:-0}" == "1" ]]; then extra+=(--spot); fi
  # shellcheck disable=SC2046
  gcloud compute tpus tpu-vm create "${name}" --zone="${zone}" $(project_flag) \
    --accelerator-type="${accel}" --version="${runtime}" "${extra[@]}"
}

cmd_setup() {
  [[ $# -eq 2 ]] || usage
  local name="$1" zone="$2" archive
  archive="$(mktemp -t astor_jax.XXXXXX).tar.gz"
  # The committed tree only: no virtualenv, runs or caches travel.
  git -C "${REPO_ROOT}" archive --format=tar.gz -o "${archive}" HEAD
  # shellcheck disable=SC2046
  gcloud compute tpus tpu-vm scp "${archive}" "${name}:astor_jax.tar.gz" --zone="${zone}" \
    $(project_flag) --worker=all
  rm -f "${archive}"
  # uv brings a Python 3.11 even where the image ships an older python3.
  on_workers "${name}" "${zone}" all "set -e
    mkdir -p ${REMOTE_DIR} && tar -xzf astor_jax.tar.gz -C ${REMOTE_DIR}
    python3 -m pip install --user --quiet uv
    cd ${REMOTE_DIR} && ~/.local/bin/uv venv --python 3.11 --allow-existing .venv
    ~/.local/bin/uv pip install --python .venv/bin/python -e '.[tpu]'
    .venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_devices())'"
}

cmd_stage() {
  [[ $# -eq 4 ]] || usage
  local name="$1" zone="$2" src="$3" dest="$4"
  [[ "${src}" == gs://* ]] || die "GCS_DIR must start with gs:// (got ${src})"
  on_workers "${name}" "${zone}" all \
    "mkdir -p $(printf '%q' "${dest}") && gcloud storage cp -r $(printf '%q' "${src%/}")/* $(printf '%q' "${dest}")/"
}

cmd_check() {
  [[ $# -ge 3 ]] || usage
  local name="$1" zone="$2"; shift 2
  on_workers "${name}" "${zone}" 0 \
    "cd ${REMOTE_DIR} && JAX_PLATFORMS=cpu .venv/bin/python -m astor_jax.launch_check$(quote_args "$@")"
}

job_command() {
  echo "cd ${REMOTE_DIR} && ASTOR_DISTRIBUTED=tpu .venv/bin/python -m astor_jax.main$(quote_args "$@")"
}

cmd_run() {
  [[ $# -ge 3 ]] || usage
  local name="$1" zone="$2"; shift 2
  on_workers "${name}" "${zone}" all "$(job_command "$@")"
}

cmd_start() {
  [[ $# -ge 3 ]] || usage
  local name="$1" zone="$2"; shift 2
  on_workers "${name}" "${zone}" all "mkdir -p ~/astor_logs && \
    nohup bash -c $(printf '%q' "exec $(job_command "$@")") > ~/${LOG} 2>&1 < /dev/null & \
    echo \$! > ~/${PID_FILE} && echo started on \$(hostname), log ~/${LOG}"
}

cmd_logs() {
  [[ $# -eq 2 ]] || usage
  on_workers "$1" "$2" 0 "tail -n 200 -F ~/${LOG}"
}

cmd_stop() {
  [[ $# -eq 2 ]] || usage
  # SIGTERM: the training loop saves a checkpoint and exits (preemption path).
  on_workers "$1" "$2" all "if [ -f ~/${PID_FILE} ]; then kill -TERM \$(cat ~/${PID_FILE}) || true; fi"
}

cmd_delete() {
  [[ $# -eq 2 ]] || usage
  # shellcheck disable=SC2046
  gcloud compute tpus tpu-vm delete "$1" --zone="$2" $(project_flag) --quiet
}

main() {
  [[ $# -ge 1 ]] || usage
  local sub="$1"; shift
  case "${sub}" in
    create|setup|stage|check|run|start|logs|stop|delete)
      command -v gcloud > /dev/null || die "gcloud not found; install the Google Cloud CLI"
      "cmd_${sub}" "$@" ;;
    -h|--help|help) usage ;;
    *) die "unknown command '${sub}'; run launch/tpu_vm.sh --help" ;;
  esac
}

main "$@"
