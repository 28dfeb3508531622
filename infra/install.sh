#!/usr/bin/env bash
# Creates .venv and installs the pinned stack (../shared/DESIGN.md section 3).
#
# CPU hosts get fbgemm-gpu-cpu; CUDA hosts get fbgemm-gpu. torchrec's metadata
# always asks for the CUDA fbgemm-gpu (2.7 GB, wrong ABI on CPU), so it is
# installed with --no-deps and its real needs come from pyproject.toml.
# A stamp keyed on this script, pyproject.toml, the constraints and the lock makes a
# re-run on an up-to-date venv return in about a second.
#
# Environment:
#   GENREC_VENV    where to create the venv        (default: <repo>/.venv)
#   GENREC_DEVICE  cpu | cuda                      (default: cuda if nvidia-smi sees a GPU)
#   PYTHON         interpreter for the venv        (default: python3.11, else python3)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GENREC_VENV:-$root/.venv}"
constraints="$root/infra/constraints.txt"
lock="$root/infra/requirements-lock.txt"

if [[ -z "${GENREC_DEVICE:-}" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    GENREC_DEVICE=cuda
  else
    GENREC_DEVICE=cpu
  fi
fi
case "$GENREC_DEVICE" in
  cpu) fbgemm_pkg=fbgemm-gpu-cpu ;;
  cuda) fbgemm_pkg=fbgemm-gpu ;;
  *) echo "install.sh: GENREC_DEVICE must be cpu or cuda, got '$GENREC_DEVICE'" >&2; exit 2 ;;
esac

stamp_value="$GENREC_DEVICE $(cat "$0" "$root/pyproject.toml" "$constraints" "$lock" | sha256sum | cut -c1-16)"
stamp_file="$venv/.genrec-install-stamp"
if [[ -x "$venv/bin/python" && -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp_value" ]]; then
  echo "install.sh: $venv is up to date ($GENREC_DEVICE)."
  exit 0
fi

python_bin="${PYTHON:-}"
if [[ -z "$python_bin" ]]; then
  python_bin="$(command -v python3.11 || command -v python3)"
fi
if ! "$python_bin" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else 1)'; then
  echo "install.sh: need Python 3.11 or 3.12 (the torch 2.13 / fbgemm 1.8 wheels); $python_bin is $("$python_bin" -V 2>&1). Set PYTHON=/path/to/python3.11." >&2
  exit 2
fi

echo "install.sh: installing into $venv for $GENREC_DEVICE with $("$python_bin" -V 2>&1)"
[[ -x "$venv/bin/python" ]] || "$python_bin" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c "$constraints" -c "$lock")

# 1. torch first, so nothing later pulls a different build.
"${pip[@]}" torch
# 2. fbgemm for this device, then torchrec without its CUDA-only dependency.
"${pip[@]}" "$fbgemm_pkg"
"${pip[@]}" --no-deps torchrec
# 3. triton: the GPU kernels; on CPU it runs them under TRITON_INTERPRET=1 in tests.
"${pip[@]}" triton
# 4. the project itself (editable) with Ray, MLflow, diffusers and dev tools.
"${pip[@]}" -e "$root[platform,dev]"

# Fail now, not in the first test, if the trio does not load together.
"$venv/bin/python" - <<'PY'
import fbgemm_gpu  # noqa: F401  (registers the jagged ops)
import torch
import torchrec  # noqa: F401
x = torch.ops.fbgemm.asynchronous_complete_cumsum(torch.tensor([1, 0, 2]))
assert x.tolist() == [0, 1, 1, 3], x
print(f"install.sh: torch {torch.__version__}, torchrec and fbgemm load together")
PY

echo "$stamp_value" > "$stamp_file"
echo "install.sh: done. Activate with: source $venv/bin/activate"
