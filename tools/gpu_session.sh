#!/usr/bin/env bash
# One device call: run the named stages, logs into OUTDIR (at most a few files).
#   tools/gpu_session.sh OUTDIR info test sanitize bench-quick bench
# Uses the GPU machine's python3 as it is (CuPy, NumPy, pytest, Hypothesis, torch).
# Set TT_COMMIT to the hash of the tree you ship, computed on YOUR machine
# (TT_COMMIT=<hash> tools/gpu_session.sh ...): the GPU machine's copy of .git can be
# stale, and results/ would record the wrong commit (it happened on 2026-11-25).
set -u
out=${1:?usage: tools/gpu_session.sh OUTDIR STAGE...}
shift
mkdir -p "$out"
py=${GPU_PYTHON:-python3}
for stage in "$@"; do
  echo "=== $stage $(date -u +%H:%M:%S)"
  case $stage in
    info)
      { nvidia-smi; $py -c 'import gpu, cupy, numpy, sys; print(gpu.device_summary()); print(gpu.device_info()); print(sys.version)';
        $py -m pip list 2>/dev/null | grep -iE "^(cupy|numpy|pytest|hypothesis|torch) "; } > "$out/info.txt" 2>&1
      tail -4 "$out/info.txt" ;;
    test)
      $py -m pytest -m gpu --hypothesis-profile=ci -q -rs 2>&1 | tee "$out/gpu-test.log" | tail -15 ;;
    sanitize)
      for tool in ${SANITIZER_TOOLS:-memcheck racecheck initcheck synccheck}; do
        echo "--- $tool" >> "$out/sanitizer.log"
        compute-sanitizer --tool "$tool" --error-exitcode 99 \
          $py -m pytest -q -m gpu --hypothesis-profile=sanitizer -x -p no:randomly >> "$out/sanitizer.log" 2>&1
        echo "$tool rc=$?" | tee -a "$out/sanitizer.log"
        grep -E "ERROR SUMMARY|passed|failed" "$out/sanitizer.log" | tail -2
      done ;;
    bench-quick)
      $py -m gpu.bench all --quick 2>&1 | tee "$out/bench-quick.log" | tail -30 ;;
    split)
      $py -m gpu.bench split 2>&1 | tee "$out/split.log" | tail -40 ;;
    bench)
      $py -m gpu.bench all --out results 2>&1 | tee "$out/bench.log" | tail -40
      cp results/*.json "$out/" ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
