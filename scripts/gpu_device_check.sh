#!/usr/bin/env bash
# The ONE command a session passes to the device tool for issue 14 (benchmarks/gpu_check.py on a lent GPU).
#
# 1. Here, on the CPU machine, once (needs PyPI; downloads what the device image lacks or has broken -- faiss-cpu,
#    and a numpy that its numba supports -- into .whl/, git-ignored):
#        bash scripts/gpu_device_check.sh --prepare
# 2. Then one call of the device tool (run), from the repository root it sends:
#        command:   bash scripts/gpu_device_check.sh
#        carry:     [".whl"]
#        timeout_s: 540
#    It comes back with $OUT/gpu_check.json (rewritten after every section, so a cut-short run still has figures),
#    $OUT/gpu_device_check.log, and the partial file of a section that was killed.  The check ends by itself in
#    about 7.5 minutes (gpu_check's 420 s budget + 15 s grace + start-up; an outer `timeout` at 480 s), so with
#    the machine's start it fits the session's 15 minutes of device time once.  Put the figures in
#    benchmarks/RESULTS.md "GPU (issue 14)".
#
# What the device image has (device README, KINDS.md): Python 3.12 with numpy, numba, numba-cuda (CUDA 13),
# onnxruntime (CPU build), pyarrow, scikit-learn, scipy, pillow, click, tqdm, onnx; no network.  So:
#   * pair_kernels (Numba CUDA SSIM/MSE/LBP) runs on the GPU with what is there;
#   * faiss is not installed: the CPU build travels as a wheel (imprint's search needs it); faiss-gpu-cu12 needs
#     CUDA 12 cuBLAS (hundreds of MB, over the 64 MiB carry limit), so faiss_knn reports "skipped" with the reason;
#   * onnxruntime-gpu (>= 200 MB) cannot travel either: the onnx section reports "skipped" with the reason;
#   * pairs_e2e runs `imprint pairs --device auto`: pair kernels on the GPU, embedding and search on the CPU (the
#     JSON says which device each stage used).
# A GPU machine WITH the `gpu` extra pre-installed (IMPRINT_GPU=1 bash scripts/setup.sh) measures all four.
#
# Locally, the same script runs the simulated dry run:  OUT=/tmp/sim bash scripts/gpu_device_check.sh --simulate
# Extra arguments go to benchmarks/gpu_check.py (e.g. --only pair_kernels, --budget 300).
#
# Issue 14, pair kernels only (old and new CUDA SSIM/MSE kernels in the same run, CPU reference, LBP), <= 150 s
# of check plus start-up:
#        run(command="bash scripts/gpu_device_check.sh --only pair_kernels --budget 150", carry=[".whl"],
#            timeout_s=260)
set -u
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}

if [ "${1:-}" = "--prepare" ]; then
    set -e
    FAISS_VERSION=${FAISS_VERSION:-1.15.1}
    exclude=$(git rev-parse --git-path info/exclude)
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
    mkdir -p .whl
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "faiss-cpu==$FAISS_VERSION"
    # The device image pairs numba 0.68.0 with numpy 2.5.2, which numba does not support: compiling any kernel
    # fails there ("module 'numpy' has no attribute 'row_stack'", seen 2026-11-29).  Carry the numpy this
    # project's venv resolved next to its numba (2.4.x), which the image's compiled packages accept.
    NUMPY_VERSION=${NUMPY_VERSION:-2.4.6}
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "numpy==$NUMPY_VERSION"
    ls -l .whl
    tree_kb=$(git ls-files -z | xargs -0 du -ck 2>/dev/null | tail -1 | cut -f1)
    whl_kb=$(du -sk .whl | cut -f1)
    echo "travels: working tree ~${tree_kb} KiB + .whl ${whl_kb} KiB (limit 65536 KiB)"
    [ $((tree_kb + whl_kb)) -lt 60000 ] || { echo "too large to travel" >&2; exit 1; }
    echo 'now call the device tool: run(command="bash scripts/gpu_device_check.sh", carry=[".whl"], timeout_s=540)'
    exit 0
fi

# A payload larger than one call can carry (onnxruntime-gpu is ~260 MB, the carry limit 64 MiB): `--payload N SHA256`
# reassembles /tmp/xfer/p1 .. p(N-1), copied there by N-1 earlier calls on the same warm machine
# (`mkdir -p /tmp/xfer && cp .xferK/p /tmp/xfer/pK`, carry [".xferK"]), and this call's .xferN/p; checks the
# sha256 and unpacks it into /tmp/payload: wheels (installed like .whl's), ort/ (onnxruntime-gpu's package,
# which replaces the image's CPU onnxruntime in its own site-packages, beside the image's nvidia CUDA 13 wheels,
# as `pip install onnxruntime-gpu` would) and models/ (the built backbones, IMPRINT_MODELS_DIR).  Built here by
# `bash scripts/gpu_device_check.sh --prepare-payload` (see there).
PAYLOAD=
if [ "${1:-}" = "--prepare-payload" ]; then
    set -e
    ORT_VERSION=${ORT_VERSION:-1.31.1}
    parts=${PARTS:-5}
    w=$(mktemp -d)
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 -d "$w" "onnxruntime-gpu==$ORT_VERSION"
    mkdir -p "$w/pay/ort" "$w/pay/models" "$w/x"
    (cd "$w/x" && unzip -q ../onnxruntime_gpu-*.whl)
    cp -r "$w"/x/onnxruntime "$w"/x/onnxruntime_gpu-*.dist-info "$w/pay/ort/"
    rm -f "$w"/pay/ort/onnxruntime/capi/libonnxruntime_providers_tensorrt.so
    cp .whl/*.whl "$w/pay/"
    for f in effnet-lite0.onnx effnet-lite0-fp16.onnx pixel.onnx fingerprint.onnx manifest.json; do
        cp "models/onnx/$f" "$w/pay/models/"; done
    tar -cf - -C "$w/pay" . | zstd -q -6 -T0 --long=27 -o "$w/payload.tar.zst"
    (cd "$w" && split -n "$parts" -d -a 1 payload.tar.zst part.)
    exclude=$(git rev-parse --git-path info/exclude)
    for i in $(seq 1 "$parts"); do
        grep -qx "/.xfer$i/" "$exclude" 2>/dev/null || echo "/.xfer$i/" >>"$exclude"
        rm -rf ".xfer$i" && mkdir ".xfer$i" && mv "$w/part.$((i - 1))" ".xfer$i/p"
    done
    echo "payload sha256 $(sha256sum "$w/payload.tar.zst" | cut -d' ' -f1), $parts parts:"; ls -l .xfer*/p
    rm -rf "$w"
    exit 0
fi
if [ "${1:-}" = "--payload" ]; then
    PAYLOAD="$2 $3"
    shift 3
fi

OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -n "$PAYLOAD" ]; then
    set -- $PAYLOAD "$@"
    n=$1 sha=$2
    shift 2
    (
        set -e
        mkdir -p /tmp/xfer /tmp/payload
        cp ".xfer$n/p" "/tmp/xfer/p$n"
        ls -l /tmp/xfer
        for i in $(seq 1 "$n"); do cat "/tmp/xfer/p$i"; done >/tmp/xfer/payload.tar.zst
        got=$(sha256sum /tmp/xfer/payload.tar.zst | cut -d' ' -f1)
        [ "$got" = "$sha" ] || { echo "payload sha256 $got, expected $sha"; exit 1; }
        # the device image has no zstd program: pyarrow's zstd codec streams it (window 2^27 = the decoder's default
        # limit, hence --long=27 when packing)
        "$PY" -c "import pyarrow as pa, tarfile; s = pa.CompressedInputStream(pa.OSFile('/tmp/xfer/payload.tar.zst'), 'zstd'); tarfile.open(fileobj=s, mode='r|').extractall('/tmp/payload', filter='data')"
        rm -f /tmp/xfer/payload.tar.zst
        purelib=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        echo "image site-packages: $purelib; nvidia: $(ls "$purelib/nvidia" 2>/dev/null | tr '\n' ' ')"
        if [ -d /tmp/payload/ort ]; then
            "$PY" -m pip uninstall -q -y onnxruntime || true
            cp -r /tmp/payload/ort/* "$purelib/"
        fi
        mkdir -p .whl && cp /tmp/payload/*.whl .whl/
        echo "payload unpacked: $(ls /tmp/payload | tr '\n' ' ')"
    ) 2>&1 | tee "$OUT/payload.log"
    [ -d /tmp/payload/models ] && export IMPRINT_MODELS_DIR=/tmp/payload/models
fi
(
    echo "== $(date -u +%FT%TZ) gpu_device_check on $(hostname)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "no nvidia-smi"
    "$PY" -V
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/imprint-site \
            .whl/*.whl && export PYTHONPATH=/tmp/imprint-site${PYTHONPATH:+:$PYTHONPATH} \
            || echo "installing the carried wheels failed: sections that need them will say so"
    fi
    "$PY" - <<'EOF'
import importlib
for m in ("numpy", "numba", "numba_cuda", "onnxruntime", "faiss", "pyarrow", "sklearn", "scipy", "PIL", "click", "onnx"):
    try:
        print(f"{m} {getattr(importlib.import_module(m), '__version__', '?')}")
    except Exception as exc:
        print(f"{m} MISSING ({type(exc).__name__}: {exc})")
EOF
    export IMPRINT_MODELS_DIR=${IMPRINT_MODELS_DIR:-$PWD/models/onnx}
    # does the product's own CUDA set-up (preload_dlls) put onnxruntime on CUDA?  If not, say why and retry with
    # the image's nvidia library folders on LD_LIBRARY_PATH, so the speed can still be measured
    probe='from imprint.engine.device import onnx_cuda_trial; ok, why = onnx_cuda_trial(); print("onnx_cuda_trial", ok, why); raise SystemExit(0 if ok else 3)'
    if "$PY" -c 'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())' 2>/dev/null \
        && ! "$PY" -c "$probe"; then
        purelib=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        libs=$(ls -d "$purelib"/nvidia/*/lib 2>/dev/null | tr '\n' ':')
        export LD_LIBRARY_PATH=${libs}${LD_LIBRARY_PATH:-}
        echo "product preload did not reach CUDA; retrying with LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
        "$PY" -c "$probe" || true
    fi
    # gpu_check ends by itself (budget + grace); this outer limit only guards against the unforeseen.  A
    # `--budget N` among the arguments (e.g. `--only pair_kernels --budget 150`) wins over GPU_CHECK_BUDGET and
    # the outer limit follows it (N + 60 s: the 15 s grace, device trials and interpreter start-up).
    budget=${GPU_CHECK_BUDGET:-420}
    prev=
    for a in "$@"; do
        [ "$prev" = "--budget" ] && budget=$a
        case "$a" in --budget=*) budget=${a#--budget=} ;; esac
        prev=$a
    done
    outer=$(( ${budget%.*} + 60 ))
    echo "gpu_check budget ${budget} s, outer limit ${outer} s"
    timeout -k 10 "$outer" "$PY" benchmarks/gpu_check.py --out "$OUT" --budget "$budget" "$@"
    echo "== gpu_check exit status $?"
) 2>&1 | tee "$OUT/gpu_device_check.log"
test -s "$OUT/gpu_check.json"
