#!/usr/bin/env bash
# One device call: run the named stages; logs go to OUTDIR as a few files
# (summary.txt, logs.tgz, results.tgz), since a lent machine returns few files.
#   tools/gpu_session.sh OUTDIR info test:SLUGS[:K] sanitize:TOOL:SLUGS[:K] ceilings
#                        bench:SLUGS ncu:NAME[:ARGS] bg+STAGE wait
# SLUGS is a comma list (attention,precompute,...) or "all"; K, a pytest -k
# expression. test and sanitize run one pytest process per slug in parallel (they
# check, they do not time); bench runs its slugs one after another (timings must
# not share the card). bg+STAGE runs a stage in the background (checks beside
# checks: never beside a bench), wait waits for them. ncu:NAME[:ARGS] runs
# tools/profile_NAME.py ARGS (spaces as commas) under Nsight Compute with the
# clocks left alone: the kernels matching NCU_KERNELS (a regex), skipping
# NCU_SKIP launches, NCU_COUNT of them; NCU_METRICS (a --metrics list) adds
# metrics to the sections, e.g. the stall reasons:
# regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio$
# Uses the GPU machine's python3 as it is (CuPy, NumPy, pytest, Hypothesis, torch).
# Each call re-sends the working tree, which replaces what an earlier call wrote under
# results/ on the machine: copy results/<card>/ceilings.json from the first call's
# results.tgz into your tree before the next, or its chapters measure their own (quick)
# ceilings and their floors differ by the ceilings' run-to-run spread (~2 %). A call
# may land on another machine of the same card, whose bandwidth differs by a few per
# cent: put a `ceilings` stage before `bench` (about a minute) so that the floors
# come from the machine that timed the kernels (on 2026-12-06 a bench run against a
# first machine's ceilings saw its baselines "beat the floor" and set them aside).
# Set TT_COMMIT to the hash of the tree you ship, computed on YOUR machine
# (TT_COMMIT=<hash> tools/gpu_session.sh ...): the GPU machine's copy of .git can be
# stale, and results/ would record the wrong commit (it happened on 2026-11-25).
set -u
out=${1:?usage: tools/gpu_session.sh OUTDIR STAGE...}
shift
mkdir -p "$out/logs"
py=${GPU_PYTHON:-python3}
ALL="attention precompute slim_attention deja_vu deja_vu_predict stagformer stagformer_multi ffn_approx decoder"
[ -f tests/test_fuzz_launchers.py ] && ALL="$ALL fuzz_launchers"
summary="$out/summary.txt"
slugs() { [ "$1" = all ] && echo "$ALL" || echo "${1//,/ }"; }
say() { echo "$*" | tee -a "$summary"; }
pack() {
  tar -czf "$out/logs.tgz" -C "$out" logs 2>/dev/null
  [ -d results ] && tar -czf "$out/results.tgz" results 2>/dev/null
}
trap pack EXIT
run_stage() {
  local stage=$1 kind a b c
  IFS=: read -r kind a b c <<<"$stage"
  local kt=() ks=()  # pytest -k for test (field 3) and sanitize (field 4)
  [ -n "${b:-}" ] && kt=(-k "$b")
  [ -n "${c:-}" ] && ks=(-k "$c")
  say "=== $stage $(date -u +%H:%M:%S)"
  case $kind in
    info)
      { nvidia-smi; $py -c 'import gpu, sys; print(gpu.device_summary()); print(gpu.device_info()); print(sys.version)';
        $py -m pip list 2>/dev/null | grep -iE "^(cupy|numpy|pytest|hypothesis|torch) "; } > "$out/logs/info.txt" 2>&1
      tail -6 "$out/logs/info.txt" | tee -a "$summary" ;;
    test)
      for s in $(slugs "${a:-all}"); do
        ( timeout "${TEST_TIMEOUT:-560}" $py -m pytest "tests/test_$s.py" -m gpu "${kt[@]}" \
            --hypothesis-profile=ci -q -rs -p no:cacheprovider > "$out/logs/test_$s.log" 2>&1
          echo "test $s rc=$? $(tail -1 "$out/logs/test_$s.log")" >> "$summary" ) &
      done
      wait; grep "^test " "$summary" | tail -20 ;;
    sanitize)
      tool=${a:?sanitize:TOOL:SLUGS}
      for s in $(slugs "${b:-all}"); do
        ( timeout "${TEST_TIMEOUT:-560}" compute-sanitizer --tool "$tool" --error-exitcode 99 \
            $py -m pytest "tests/test_$s.py" -q -m gpu --hypothesis-profile=sanitizer -x "${ks[@]}" \
            -p no:randomly -p no:cacheprovider > "$out/logs/${tool}_$s.log" 2>&1
          echo "$tool $s rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/logs/${tool}_$s.log" | tail -1) $(tail -1 "$out/logs/${tool}_$s.log")" >> "$summary" ) &
      done
      wait; grep "^$tool " "$summary" | tail -20 ;;
    ceilings)
      timeout "${CEIL_TIMEOUT:-150}" $py -m gpu.bench ceilings --out results > "$out/logs/ceilings.txt" 2>&1
      say "ceilings rc=$? $(grep -E 'read_bytes_per_s|copy_bytes_per_s' "$out/logs/ceilings.txt" | tr -s ' ' | tr '\n' ';')" ;;
    bench)  # DEADLINE (epoch seconds): no bench runs past it, so the logs come back
      for s in $(slugs "${a:-all}"); do
        left=$(( ${DEADLINE:-$(( $(date +%s) + 590 ))} - $(date +%s) ))
        [ "$left" -gt 20 ] || { say "bench $s not started: deadline"; continue; }
        timeout "$left" $py -m gpu.bench "$s" --out results > "$out/logs/bench_$s.log" 2>&1
        say "bench $s rc=$? $(date -u +%H:%M:%S)"; tail -25 "$out/logs/bench_$s.log"
      done ;;
    ncu)
      timeout "${NCU_TIMEOUT:-240}" ncu --clock-control none -k "regex:${NCU_KERNELS:?NCU_KERNELS}" \
        --launch-skip "${NCU_SKIP:-0}" --launch-count "${NCU_COUNT:-5}" \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
        --section Occupancy --section LaunchStats --section SchedulerStats \
        ${NCU_METRICS:+--metrics "$NCU_METRICS"} \
        $py "tools/profile_$a.py" ${b//,/ } > "$out/logs/ncu_$a.txt" 2>&1
      say "ncu $a rc=$? $(grep -c '^  [a-z_0-9]*(' "$out/logs/ncu_$a.txt") kernels profiled" ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
}
for stage in "$@"; do
  case $stage in
    wait) wait ;;
    bg+*) run_stage "${stage#bg+}" & ;;
    *) run_stage "$stage" ;;
  esac
done
wait
