#!/usr/bin/env bash
# Assemble, here, the Python packages darkraw needs that the lent GPU machine's image lacks.
#
# Why: that machine has no internet and a fixed image (PyTorch, Lightning, torchmetrics, numpy,
# matplotlib, rich, scikit-image, onnx, onnxruntime, pytest ... but not Hydra, rawpy, ptflops,
# pytorch-msssim or pidng), and a session has 15 minutes of device time in all: installing there
# is not an option. So the missing packages are installed here into one folder, built for the
# device's Python, at the versions this checkout's environment (and so CI) runs, and that folder
# travels with the call (`carry`). See benchmarks/gpu/run_checks.sh for the call itself.
#
#   bash benchmarks/gpu/build_device_site.sh              # -> .device-site/ (git-ignored)
#   DEVICE_PYTHON=3.11 bash benchmarks/gpu/build_device_site.sh /tmp/site311   # to try it here
set -euo pipefail
cd "$(dirname "$0")/../.."

SITE=${1:-.device-site}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
DEVICE_PYTHON=${DEVICE_PYTHON:-3.12}  # the device image's python3 (KINDS.md: 3.12.3)

# Compiled packages: wheels for the device's interpreter and platform.
BINARY=(rawpy)
# Pure-Python packages (antlr4 and pidng come as source only; pidng's optional lossless-JPEG
# extension gets built for this machine's Python and is unused: darkraw writes uncompressed DNGs).
PURE=(hydra-core omegaconf antlr4-python3-runtime pytorch-msssim ptflops pidng)

pinned() {  # name==version as installed in this checkout's environment, so the device runs what CI tests
    local spec=()
    for name in "$@"; do
        spec+=("$name==$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
    done
    echo "${spec[@]}"
}

rm -rf "$SITE"
mkdir -p "$SITE"
# shellcheck disable=SC2046
"$PYTHON" -m pip install -q --no-deps --only-binary=:all: --target "$SITE" \
    --python-version "$DEVICE_PYTHON" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    $(pinned "${BINARY[@]}")
# shellcheck disable=SC2046
"$PYTHON" -m pip install -q --no-deps --target "$SITE" $(pinned "${PURE[@]}")
rm -rf "$SITE"/bin
echo "$SITE: $(du -sh "$SITE" | cut -f1) for Python $DEVICE_PYTHON: $(pinned "${BINARY[@]}" "${PURE[@]}")"
