# Sourced by the device scripts (bench/device/*.sh): unbuffered output, $OUT created, the carried wheels (pytest,
# rich, ...: runs/whl_gpu) installed into /tmp/site when present, PYTHONPATH and the kernel cache set.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if ls runs/whl_gpu/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site runs/whl_gpu/*.whl 2>/dev/null
fi
export PYTHONPATH=/tmp/site:$PWD FMOE_CACHE_DIR=${FMOE_CACHE_DIR:-/tmp/fmoe-cache}
