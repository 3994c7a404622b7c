# Sourced by the scripts: no telemetry, no hub downloads, and caches inside the project, not in HOME.
export MLFLOW_DISABLE_TELEMETRY=true
export HF_HUB_OFFLINE=1
export PYTHONUNBUFFERED=1
cache_root="$(pwd)/.cache"
mkdir -p "$cache_root/home" "$cache_root/matplotlib" "$cache_root/torch"
export MPLCONFIGDIR="$cache_root/matplotlib"
export TORCH_HOME="$cache_root/torch"
export XDG_CACHE_HOME="$cache_root"
# numba's compiled kernels (incad/ops/fused_scan.py, the grid components of preprocessing), reused across runs.
export NUMBA_CACHE_DIR="$cache_root/numba"
# Avalanche writes ~/.avalanche on import: give it a home of its own.
export HOME="$cache_root/home"
