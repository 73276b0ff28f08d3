#!/usr/bin/env bash
# kdbench's GPU acceptance run: one command, about 10 minutes on one H100, for whoever gets a GPU lent.
#
#   benchmarks/gpu_acceptance.sh            # from the repository root, in the project's environment
#
# Parts (each a row of the summary table; a part that needs a GPU is reported as such where none is
# visible, and one that needs two where fewer are):
#   cpu    kd_loss agreement check     benchmarks/kd_loss.py --check (chunked vs naive, fp32, CPU)
#   cpu    teacher-cache dry run       the tiny grid below planned: its teacher_states job claims a GPU
#   cpu    two CPU ranks (gloo)        tests/smoke/test_multirank.py through the DeepSpeed launcher
#   cpu    teacher states on the CPU   tests/smoke/test_teacher_states.py (only where no GPU is visible)
#   gpu    gpu tier                    tests/gpu (ZeRO-2/3 bf16, accumulation, chunked loss, bf16 chunks)
#   gpu    cross-tokenizer on cuda     tests/gpu/test_gpu_crosstok.py (each plugin's CPU loss on cuda, bf16 runs)
#   gpu    resume, CUDA generator      tests/gpu -k cuda_generator (a killed run resumes to the same weights)
#   gpu    teacher states on cuda      tests/gpu -k teacher_states
#   gpu    KD loss, Liger's shape      benchmarks/kd_loss_gpu.py: bf16, hidden 4096, vocab 128,256, 1k-8k tokens
#   gpu    tiny grid end to end        snakemake on the GPU: teacher SFT, teacher_states, fkl ± AdaKD, evaluation
#   2 gpu  data parallel               tests/gpu -k two_gpus (the DeepSpeed launcher on two GPUs)
# Logs: $KDBENCH_ACCEPTANCE_DIR (default results/gpu_acceptance/<date>/), one file per part.
# Exit status: 0 when every part that could run passed, 1 otherwise.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/.venv/torch_extensions}"
OUT="${KDBENCH_ACCEPTANCE_DIR:-$ROOT/results/gpu_acceptance/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
GPUS=$(python -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)
ROWS=()
FAILED=0

# part NAME NEEDS(0|1|2 GPUs) LIMIT_S COMMAND...: run COMMAND, log it, add a row.
part() {
    local name=$1 needs=$2 limit=$3
    shift 3
    if [ "$GPUS" -lt "$needs" ]; then
        ROWS+=("$name|needs $needs GPU(s), $GPUS visible: not run|-")
        return
    fi
    local log start=$SECONDS
    log="$OUT/$(echo "$name" | tr -c 'A-Za-z0-9\n' '_').log"
    echo "== $name" >&2
    if timeout "$limit" bash -c '"$@"' part "$@" >"$log" 2>&1; then  # bash -c: the exported functions below
        ROWS+=("$name|passed|$((SECONDS - start))")
    else
        ROWS+=("$name|FAILED (exit $?; $log)|$((SECONDS - start))")
        FAILED=1
    fi
}

# The tiny grid of the end-to-end part, in a copy of the workflow: gpt2-tiny, fkl and fkl+adakd,
# one set, one decoding seed, teacher_cache on, shortened training.
GRID="$OUT/grid"
make_grid() {
    mkdir -p "$GRID"
    for name in Snakefile workflows config methods evaluation; do cp -r "$ROOT/$name" "$GRID/"; done
    (cd "$GRID" && python - <<'EOF'
import yaml
cfg = yaml.safe_load(open("config/tiny.yaml"))
cfg.update(teacher_cache=True, tables=[{"name": "main", "pairs": ["gpt2-tiny-s_from_gpt2-tiny-t"],
                                        "methods": ["fkl", "fkl+adakd"], "sets": ["dolly"]}])
cfg["data"].update(n_train=800)
cfg["evaluation"].update(decoding_seeds=[10])
yaml.safe_dump(cfg, open("grid.yaml", "w"))
pair = yaml.safe_load(open("config/pairs/gpt2-tiny-s_from_gpt2-tiny-t.yaml"))
pair["teacher"]["sft"]["steps"] = 300
pair["training"].update(steps=100, gpus=1)
yaml.safe_dump(pair, open("config/pairs/gpt2-tiny-s_from_gpt2-tiny-t.yaml", "w"))
EOF
    )
}

plan_grid() {  # the dry run: a teacher_states job that claims one GPU, one per student pair and seed
    cd "$GRID" && snakemake -n --cores 4 --resources gpu=1 --configfile grid.yaml >plan.txt 2>&1 || { cat plan.txt; return 1; }
    python - <<'EOF'
import re
text = open("plan.txt").read()
jobs = re.findall(r"rule teacher_states:\n(?:    .*\n)*?    resources: (.*)", text)
assert len(jobs) == 1, f"{len(jobs)} teacher_states jobs planned"
assert "gpu=1" in jobs[0], jobs[0]
print("teacher_states planned with", jobs[0])
EOF
}

run_grid() {  # the grid on the GPU, then what it must show
    cd "$GRID" && snakemake --cores 4 --resources gpu=1 --configfile grid.yaml || return 1
    python - <<'EOF'
import glob, json
from safetensors import safe_open
files = glob.glob("results/teacher_states/*/seed1/*.safetensors")
assert len(files) == 1, files
with safe_open(files[0], framework="pt") as f:
    assert f.metadata()["device"] == "cuda", f.metadata()
for method in ("fkl", "fkl+adakd"):
    p = json.load(open(f"results/runs/gpt2-tiny-s_from_gpt2-tiny-t/{method}/seed1/provenance.json"))
    assert p["device"]["device"].startswith("cuda"), p["device"]
    assert p["teacher_states"]["used"] and p["teacher_states"]["misses"] == 0, p["teacher_states"]
assert glob.glob("results/tables/main.md"), "no table"
print(open("results/tables/main.md").read())
EOF
}

cpu_only() { CUDA_VISIBLE_DEVICES= "$@"; }  # the CPU parts run on the CPU on a GPU machine too

export GRID
export -f plan_grid run_grid cpu_only
make_grid
part "kd_loss agreement check" 0 120 python benchmarks/kd_loss.py --check
part "teacher-cache dry run" 0 120 plan_grid
part "two CPU ranks (gloo)" 0 300 cpu_only python -m pytest -q -x -p no:cacheprovider tests/smoke/test_multirank.py
if [ "$GPUS" -eq 0 ]; then
    part "teacher states on the CPU" 0 900 python -m pytest -q -x -p no:cacheprovider tests/smoke/test_teacher_states.py
fi
part "gpu tier" 1 400 python -m pytest -q -x -p no:cacheprovider -m gpu tests/gpu \
    --ignore=tests/gpu/test_gpu_crosstok.py -k "not cuda_generator and not teacher_states and not two_gpus"
part "cross-tokenizer on cuda" 1 300 python -m pytest -q -x -p no:cacheprovider -m gpu tests/gpu/test_gpu_crosstok.py
part "resume, CUDA generator" 1 200 python -m pytest -q -x -p no:cacheprovider -m gpu tests/gpu -k cuda_generator
part "teacher states on cuda" 1 200 python -m pytest -q -x -p no:cacheprovider -m gpu tests/gpu -k teacher_states
part "KD loss, Liger's shape" 1 300 python benchmarks/kd_loss_gpu.py
part "tiny grid end to end" 1 600 run_grid
part "data parallel, 2 GPUs" 2 300 python -m pytest -q -x -p no:cacheprovider -m gpu tests/gpu -k two_gpus

echo
echo "kdbench GPU acceptance: $GPUS GPU(s) visible$( [ "$GPUS" -gt 0 ] && echo ": $(nvidia-smi -L 2>/dev/null | head -1)")"
printf '| %-26s | %-60s | %8s |\n' part result seconds
printf '|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..28})" "$(printf -- '-%.0s' {1..62})" "$(printf -- '-%.0s' {1..10})"
for row in "${ROWS[@]}"; do
    IFS='|' read -r name result secs <<<"$row"
    printf '| %-26s | %-60s | %8s |\n' "$name" "$result" "$secs"
done
if [ -f "$OUT/KD_loss__Liger_s_shape.log" ]; then
    echo; echo "KD loss at Liger's shape (chunked / naive):"; tail -n 12 "$OUT/KD_loss__Liger_s_shape.log"
fi
if [ "$GPUS" -eq 0 ]; then
    echo "No GPU visible: the parts marked 'needs 1 GPU(s)' were not run; run this script on a GPU machine."
fi
echo "logs: $OUT"
exit $FAILED
