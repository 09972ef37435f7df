#!/usr/bin/env bash
# Nsight Compute with per-instruction stall samples, for one launch of one kernel:
#   tools/ncu_source.sh OUTDIR KERNEL_REGEX SKIP tools/profile_X.py [ARGS...]
# writes OUTDIR/rep.ncu-rep, details.txt (speed of light, memory, warp states,
# scheduler) and source.csv (the SASS with its stall-reason samples), clocks left
# alone. Environment passes through (e.g. TT_PROFILE_ONLY=1).
set -u
out=${1:?OUTDIR}; re=${2:?KERNEL_REGEX}; skip=${3:?SKIP}; shift 3
mkdir -p "$out"
timeout "${NCU_TIMEOUT:-300}" ncu --clock-control none -k "regex:$re" \
  --launch-skip "$skip" --launch-count 1 --section SpeedOfLight \
  --section MemoryWorkloadAnalysis --section WarpStateStats --section SourceCounters \
  --section SchedulerStats -o "$out/rep" -f python3 "$@" > "$out/run.txt" 2>&1
echo "ncu rc=$?"; tail -3 "$out/run.txt"
ncu --import "$out/rep.ncu-rep" --page details > "$out/details.txt" 2>&1
ncu --import "$out/rep.ncu-rep" --page source --csv --print-source sass \
  > "$out/source.csv" 2> "$out/source_err.txt" ||
  ncu --import "$out/rep.ncu-rep" --page source --csv > "$out/source.csv" 2>&1
wc -l "$out/source.csv"
grep -E "Duration|DRAM Throughput|Warp Cycles Per Issued|Issued Warp|No Eligible" \
  "$out/details.txt" | head -12
