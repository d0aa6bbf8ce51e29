#!/usr/bin/env bash
# One GPU check (about 2-4 minutes on an H100/H200): scan tests marked gpu, then `synthact bench`.
# Usage from the repository root: OUT=/some/dir bash scripts/gpu_check.sh
# Writes to $OUT: env.txt, pytest_gpu.log, bench.json, bench.txt, bench_js.json, bench_js.txt.
# A machine without network and without transformer_lens installs it from wheels in $WHEELS
# (default .cache/gpu-wheels; carry that folder). Fetch them here first, e.g. for Python 3.12:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#     -d .cache/gpu-wheels transformer_lens==3.9.0 beartype better-abc datasets fancy-einsum typeguard dill multiprocess
set -u
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONWARNINGS="ignore::DeprecationWarning"
PY="${PYTHON:-python3}"

echo "== environment" | tee "$OUT/env.txt"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; "$PY" --version; } 2>&1 | tee -a "$OUT/env.txt"
missing=$("$PY" - <<'PY'
import importlib.util
print(" ".join(p for p in ("torch", "transformer_lens", "pytest")
               if importlib.util.find_spec(p) is None))
PY
)
WHEELS="${WHEELS:-.cache/gpu-wheels}"
if [ -n "$missing" ]; then
    echo "missing packages: $missing" | tee -a "$OUT/env.txt"
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps "$WHEELS"/*.whl 2>&1 | tail -3 | tee -a "$OUT/env.txt"
    else
        "$PY" -m pip install -q $missing 2>&1 | tail -3 | tee -a "$OUT/env.txt"
    fi
fi
"$PY" -m pip install -q -e . --no-deps --no-build-isolation >/dev/null 2>&1 || echo "(pip install -e skipped; using PYTHONPATH)" | tee -a "$OUT/env.txt"
"$PY" -c "import torch, transformer_lens; from importlib.metadata import version; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available(), '| transformer_lens', version('transformer_lens'))" 2>&1 | tee -a "$OUT/env.txt"

echo "== pytest -m gpu tests/test_scan.py"
timeout 240 "$PY" -m pytest -m gpu -q -s tests/test_scan.py 2>&1 | tee "$OUT/pytest_gpu.log" | grep -E "cuda|passed|failed|error" | tail -20

bench() {  # bench NAME ARGS...: JSON to $OUT/NAME.json, table to $OUT/NAME.txt and stdout
    local name=$1; shift
    echo "== synthact bench $*"
    timeout 200 "$PY" - "$@" > "$OUT/$name.json" 2> "$OUT/$name.err" <<'PY'
import argparse, sys, synthact.bench as b
p = argparse.ArgumentParser(); b.add_arguments(p)
raise SystemExit(b.run(p.parse_args(["--json", *sys.argv[1:]])))
PY
    if [ $? -eq 0 ]; then
        "$PY" -c "import json, sys, synthact.bench as b; print(b.format_table(json.load(open(sys.argv[1]))))" "$OUT/$name.json" | tee "$OUT/$name.txt"
    else
        echo "bench $name failed:"; tail -15 "$OUT/$name.err"
    fi
}
bench bench --device cuda
bench bench_js --device cuda --js --bases 1000
echo "== done; outputs in $OUT"
