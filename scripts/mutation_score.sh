#!/usr/bin/env bash
# Mutation score of the numerical core (mutmut 3: pip install mutmut). Each module is mutated in
# a scratch copy of this checkout and every mutant is run against that module's fast tests only
# (the MODULES table). Each module's result (its score row, every surviving mutant with its
# diff) goes to docs/mutation/<module>.md as soon as that module is done, and
# docs/mutation_score.md (every module's latest row) is rebuilt from those files: a run stopped
# half-way keeps the modules it finished, and a later run takes the rest by naming them.
# A script, not part of CI.
#
#   bash scripts/mutation_score.sh                      # every module of the table
#   bash scripts/mutation_score.sh sweeper/paired.py    # the modules named (as in the table)
#   QUICK=1 bash scripts/mutation_score.sh ...          # the scores only, no diffs of survivors
#   SUMMARY_ONLY=1 bash scripts/mutation_score.sh       # rebuild docs/mutation_score.md only
#   MAX_CHILDREN=1 bash scripts/mutation_score.sh ...   # mutmut's parallel test runs (default: all cores)
#
# Score = (killed + timeout) / all mutants, mutmut's verdicts: a mutant that makes a test hang
# (an endless loop) is found, as mutmut, PIT and Stryker count it; a mutant no test reaches
# counts against the module, as a survivor does. Survivors that are equivalent (no behaviour changes) are
# named in docs/mutation/EQUIVALENT.md by hand, each with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=${OUT:-$REPO/docs/mutation_score.md}
PER_MODULE=${PER_MODULE:-$REPO/docs/mutation}

# module | its fast tests (pytest node ids or files, space-separated)
MODULES=(
  "optim/rules.py|tests/test_optim.py tests/test_muon_family.py tests/test_track3_wrappers.py tests/test_hyperball.py tests/test_rules_reference.py"
  "optim/spectral.py|tests/test_spectral.py tests/test_spectral_reference.py tests/test_optim.py tests/test_muon_family.py tests/test_soap_dynmuon.py::test_taylor_power_is_the_quadratic_on_singular_values tests/test_soap_dynmuon.py::test_exact_power_is_u_sigma_p_vt tests/test_soap_dynmuon.py::test_taylor_power_near_identity_approaches_the_exact_power tests/test_soap_dynmuon.py::test_dynmuon_steps_match_float64_reference tests/test_soap_dynmuon.py::test_schatten4_start_of_newton_schulz"
  "optim/polar.py|tests/test_muon_family.py tests/test_spectral.py tests/test_optim.py tests/test_gram_newton_schulz_cost.py"
  "optim/dion.py|tests/test_dion.py"
  "optim/muon_variants.py|tests/test_muon_family.py tests/test_hyperball.py tests/test_track3_wrappers.py tests/test_optim.py tests/test_muon_variant_links.py"
  "sweeper/paired.py|tests/test_paired.py"
  "sweeper/speedup.py|tests/test_paired.py tests/test_stages.py tests/test_speedup_reference.py"
  "sweeper/stages.py|tests/test_stage_decisions.py tests/test_stages.py::test_extension_lr"
  "trainer/checkpoint.py|tests/test_checkpoint_unit.py"
  "trainer/divergence.py|tests/test_divergence.py"
  "data/lm.py|tests/test_lm_windows.py tests/test_shards.py::test_sequential_steps_are_track3s_stream"
)

python -c "import mutmut" 2>/dev/null || { echo "error: mutmut is not installed; pip install mutmut" >&2; exit 2; }
export TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-$REPO/../shared/tiktoken-cache}
export WANDB_MODE=offline WANDB_SILENT=true HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

wanted=("$@")
for w in "${wanted[@]}"; do
  printf '%s\n' "${MODULES[@]}" | grep -q "^$w|" || { echo "error: $w is not in the MODULES table of $0; use one of: $(printf '%s ' "${MODULES[@]%%|*}")" >&2; exit 2; }
done
work=$(mktemp -d /tmp/mutation.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$PER_MODULE"
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . || echo "+edits")
version=$(python -c 'import mutmut; print(mutmut.__version__)')

summary() {   # docs/mutation_score.md from the per-module files, in the table's order
  {
    echo "# Mutation score of the numerical core"
    echo
    echo "\`bash scripts/mutation_score.sh [module ...]\` (mutmut $version). Each module's mutants run"
    echo "against its fast tests only (the MODULES table of the script). Score = (killed + timed"
    echo "out) / all mutants: a mutant that makes a test hang is found; survived and untested ones"
    echo "count against it. Each row is that module's"
    echo "latest run: its commit and date, and every survivor's diff, are in its file under"
    echo "docs/mutation/; the survivors found equivalent are named in docs/mutation/EQUIVALENT.md."
    echo
    echo "| module | tests | mutants | killed | survived | timeout | no test | score | run |"
    echo "|---|---|---|---|---|---|---|---|---|"
    for row in "${MODULES[@]}"; do
      f="$PER_MODULE/$(echo "${row%%|*}" | tr '/' '_').md"
      if [ -f "$f" ]; then sed -n 's/^<!-- row: \(.*\) -->$/\1/p' "$f"
      else echo "| \`${row%%|*}\` | ${row#*|} | | | | | | not run yet | |"; fi
    done
    if [ -f "$PER_MODULE/EQUIVALENT.md" ]; then echo; cat "$PER_MODULE/EQUIVALENT.md"; fi
  } > "$OUT.tmp" && mv "$OUT.tmp" "$OUT"
}

if [ -n "${SUMMARY_ONLY:-}" ]; then summary; echo "wrote $OUT" >&2; exit 0; fi

for row in "${MODULES[@]}"; do
  module=${row%%|*}; tests=${row#*|}
  if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " =~ " $module " ]]; then continue; fi
  echo "== $module against: $tests" >&2
  copy="$work/$(echo "$module" | tr '/.' '__')"
  git clone -q "$REPO" "$copy"
  git -C "$REPO" diff HEAD | git -C "$copy" apply --allow-empty 2>/dev/null || true   # uncommitted edits too
  tests_toml=$(printf '"%s", ' $tests)
  {
    echo
    echo "[tool.mutmut]"
    echo "source_paths = [\"$module\"]"
    echo "pytest_add_cli_args_test_selection = [${tests_toml%, }]"
    echo 'pytest_add_cli_args = ["-q", "-p", "no:cacheprovider"]'
    echo 'also_copy = ["README.md", "pyproject.toml", "docs", "configs", "data", "model", "optim", "sweeper", "trainer", "train.py", "sweep.py", "tests", "scripts"]'
  } >> "$copy/pyproject.toml"
  (cd "$copy" && mutmut run ${MAX_CHILDREN:+--max-children "$MAX_CHILDREN"} > "$copy/run.log" 2>&1) || echo "   mutmut exited $? (see the counts)" >&2
  (cd "$copy" && mutmut results --all true > "$copy/results.txt" 2>/dev/null) || true
  killed=$(grep -c ': killed' "$copy/results.txt" || true)
  survived=$(grep -c ': survived' "$copy/results.txt" || true)
  timeout=$(grep -c ': timeout' "$copy/results.txt" || true)
  notest=$(grep -c ': no tests' "$copy/results.txt" || true)
  total=$((killed + survived + timeout + notest))
  if [ "$total" -eq 0 ]; then
    echo "   $module: no mutant ran, its file is left as it was; the end of mutmut's log:" >&2
    tail -5 "$copy/run.log" >&2
    rm -rf "$copy"; continue
  fi
  score=$(python -c "print(f'{100 * ($killed + $timeout) / $total:.1f}%')")
  f="$PER_MODULE/$(echo "$module" | tr '/' '_').md"
  {
    echo "<!-- row: | \`$module\` | $(echo $tests | sed 's/tests\///g') | $total | $killed | $survived | $timeout | $notest | $score | $commit, $(date -u +%Y-%m-%d) | -->"
    echo "# \`$module\`: $killed of $total mutants killed ($score)"
    echo
    echo "mutmut $version, commit $commit, $(date -u +%Y-%m-%d), against: $tests."
    echo "Every mutant that survived, timed out or reached no test, with its diff."
    if [ -z "${QUICK:-}" ]; then
      grep -E ': (survived|no tests|timeout)' "$copy/results.txt" | while read -r name verdict; do
        name=${name%:}
        echo -e "\n## ${name} (${verdict})\n\n\`\`\`diff"
        (cd "$copy" && mutmut show "$name" 2>/dev/null | sed -n '2,40p')
        echo '```'
      done
    fi
  } > "$f.tmp" && mv "$f.tmp" "$f"
  echo "   $module: $killed / $total killed ($score) -> $f" >&2
  summary
  rm -rf "$copy"
done
summary
echo "wrote $OUT" >&2
