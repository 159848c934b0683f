#!/usr/bin/env bash
# Mutation score of the numerical core (mutmut 3: pip install mutmut). Each module is mutated in
# a scratch copy of this checkout and every mutant is run against that module's fast tests only
# (the MODULES table), so a full run fits in a session on 2 cores; the report (score per module,
# every surviving mutant with its diff) goes to docs/mutation_score.md. A script, not part of CI.
#
#   bash scripts/mutation_score.sh                      # every module of the table
#   bash scripts/mutation_score.sh sweeper/paired.py    # the modules named (as in the table)
#   QUICK=1 bash scripts/mutation_score.sh ...          # the scores only, no diffs of survivors
#
# Score = killed / (killed + survived + timeout + no test), mutmut's verdicts; a mutant no test
# reaches counts against the module. Survivors that are equivalent (no behaviour changes) are
# listed as such in docs/mutation_score.md by hand, with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=${OUT:-$REPO/docs/mutation_score.md}

# module | its fast tests (pytest node ids or files, space-separated)
MODULES=(
  "optim/rules.py|tests/test_optim.py tests/test_muon_family.py tests/test_track3_wrappers.py"
  "optim/spectral.py|tests/test_spectral.py"
  "optim/polar.py|tests/test_muon_family.py tests/test_spectral.py"
  "optim/dion.py|tests/test_dion.py"
  "optim/muon_variants.py|tests/test_muon_family.py"
  "sweeper/paired.py|tests/test_paired.py"
  "sweeper/speedup.py|tests/test_sweep.py"
  "sweeper/stages.py|tests/test_stages.py tests/test_coordinate_descent.py"
  "trainer/checkpoint.py|tests/test_train.py tests/test_run_dir.py tests/test_gpu_engineering.py"
  "trainer/loop.py|tests/test_train.py tests/test_gpu_engineering.py"
  "data/lm.py|tests/test_data.py tests/test_shards.py"
)

python -c "import mutmut" 2>/dev/null || { echo "error: mutmut is not installed; pip install mutmut" >&2; exit 2; }
export TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-$REPO/../shared/tiktoken-cache}
export WANDB_MODE=offline WANDB_SILENT=true HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

wanted=("$@")
work=$(mktemp -d /tmp/mutation.XXXXXX)
trap 'rm -rf "$work"' EXIT
{
  echo "# Mutation score of the numerical core"
  echo
  echo "\`bash scripts/mutation_score.sh\` (mutmut $(python -c 'import mutmut; print(mutmut.__version__)'), $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD))."
  echo "Each module's mutants run against its fast tests only. Score = killed / all mutants"
  echo "(survived, timed out and untested count against it)."
  echo
  echo "| module | tests | mutants | killed | survived | timeout | no test | score |"
  echo "|---|---|---|---|---|---|---|---|"
} > "$work/table.md"
: > "$work/survivors.md"

for row in "${MODULES[@]}"; do
  module=${row%%|*}; tests=${row#*|}
  if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " =~ " $module " ]]; then continue; fi
  echo "== $module against: $tests" >&2
  copy="$work/$(echo "$module" | tr '/.' '__')"
  git clone -q "$REPO" "$copy"
  git -C "$REPO" diff HEAD | git -C "$copy" apply --allow-empty 2>/dev/null || true   # uncommitted edits too
  tests_toml=$(printf '"%s", ' $tests)
  cat >> "$copy/pyproject.toml" <<EOF

[tool.mutmut]
source_paths = ["$module"]
pytest_add_cli_args_test_selection = [${tests_toml%, }]
pytest_add_cli_args = ["-q", "-p", "no:cacheprovider"]
also_copy = ["README.md", "pyproject.toml", "docs", "configs", "data", "model", "optim", "sweeper", "trainer", "train.py", "sweep.py", "tests", "scripts"]
EOF
  (cd "$copy" && mutmut run > "$copy/run.log" 2>&1) || echo "   mutmut exited $? (see the counts)" >&2
  (cd "$copy" && mutmut results --all true > "$copy/results.txt" 2>/dev/null) || true
  killed=$(grep -c ': killed' "$copy/results.txt" || true)
  survived=$(grep -c ': survived' "$copy/results.txt" || true)
  timeout=$(grep -c ': timeout' "$copy/results.txt" || true)
  notest=$(grep -c ': no tests' "$copy/results.txt" || true)
  total=$((killed + survived + timeout + notest))
  score=$(python -c "print(f'{100 * $killed / $total:.1f}%' if $total else '-')")
  echo "| \`$module\` | $(echo $tests | sed 's/tests\///g') | $total | $killed | $survived | $timeout | $notest | $score |" >> "$work/table.md"
  echo "   $module: $killed / $total killed ($score)" >&2
  if [ -z "${QUICK:-}" ]; then
    echo -e "\n## \`$module\`: survivors\n" >> "$work/survivors.md"
    grep -E ': (survived|no tests|timeout)' "$copy/results.txt" | while read -r name verdict; do
      name=${name%:}
      echo -e "\n### ${name} (${verdict})\n\n\`\`\`diff" >> "$work/survivors.md"
      (cd "$copy" && mutmut show "$name" 2>/dev/null | sed -n '2,40p') >> "$work/survivors.md"
      echo '```' >> "$work/survivors.md"
    done
  fi
  rm -rf "$copy"
done
cat "$work/table.md" "$work/survivors.md" > "$OUT"
echo "wrote $OUT" >&2
