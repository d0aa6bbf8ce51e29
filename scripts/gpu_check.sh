#!/usr/bin/env bash
# One GPU check (about 5 minutes on an H100/H200, 12 at most): scan tests marked gpu, `synthact bench`
# (scan speed, with JS, generation timing) and `synthact bench --e2e` (the paper job's volume).
# Usage from the repository root: OUT=/some/dir bash scripts/gpu_check.sh
# Writes to $OUT: env.txt, pytest_gpu.log and NAME.json for bench, bench_js, bench_gen, e2e (NAME.err if it
# failed); the tables go to stdout.
# A machine without network and without transformer_lens installs it from wheels in $WHEELS
# (default .cache/gpu-wheels; carry that folder). Fetch them here first, e.g. for Python 3.12:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#     --platform manylinux_2_28_x86_64 -d .cache/gpu-wheels transformer_lens==3.9.0 beartype better-abc datasets \
#     fancy-einsum typeguard dill multiprocess sae_lens==6.54.12 pydantic pydantic_core annotated_types \
#     typing_inspection docstring_parser simple_parsing platformdirs wandb cwevals distro \
#     opentelemetry-api opentelemetry-sdk opentelemetry-semantic-conventions opentelemetry-proto \
#     opentelemetry-exporter-otlp-proto-common opentelemetry-exporter-otlp-proto-http googleapis-common-protos
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
print(" ".join(p for p in ("torch", "transformer_lens", "sae_lens", "pydantic", "pytest")
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
timeout 120 "$PY" -m pytest -m gpu -q -s tests/test_scan.py 2>&1 | tee "$OUT/pytest_gpu.log" | grep -E "cuda|passed|failed|error" | tail -20

bench() {  # bench NAME SECONDS ARGS...: JSON to $OUT/NAME.json, table to stdout
    local name=$1 seconds=$2; shift 2
    echo "== synthact bench $*"
    timeout "$seconds" "$PY" - "$@" > "$OUT/$name.json" 2> "$OUT/$name.err" <<'PY'
import argparse, sys, synthact.bench.scan_speed as b
p = argparse.ArgumentParser(); b.add_arguments(p)
raise SystemExit(b.run(p.parse_args(["--json", *sys.argv[1:]])))
PY
    if [ $? -eq 0 ]; then
        "$PY" -c "import json, sys, synthact.bench.scan_speed as b; r = json.load(open(sys.argv[1]))
print(b.format_e2e(r) if 'total_seconds' in r else b.format_table(r))" "$OUT/$name.json"
        rm -f "$OUT/$name.err"
    else
        echo "bench $name failed or timed out after $seconds s:"; tail -15 "$OUT/$name.err"
    fi
}
bench bench 150 --device cuda
bench bench_js 120 --device cuda --js --bases 1000
bench bench_gen 150 --device cuda --bases 1000 --plain-bases 1 --generation "${GEN_BASES:-1000}"
bench e2e 200 --device cuda --e2e "${E2E_BASES:-1000}"
echo "== done; outputs in $OUT"
