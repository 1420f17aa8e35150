#!/usr/bin/env bash
# Runs every fuzz target in turn for SECONDS each (default 600) on the corpus
# fuzz/seed.sh made, one process at a time, and prints one line per target:
# executions, seconds, corpus entries, and whether it crashed. A crash leaves
# its input in fuzz/artifacts/<target>/ and stops nothing else.
set -uo pipefail
cd "$(dirname "$0")"
seconds=${1:-600}
targets=(safetensors config_json tokenizer_json trainer_state optimizer_state glue_readers)
mkdir -p logs
for t in "${targets[@]}"; do
  cargo +nightly fuzz run -O "$t" -- -max_total_time="$seconds" -rss_limit_mb=4096 \
    >"logs/$t.log" 2>&1
  status=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$')
  if [ -z "$execs" ]; then
    execs=$(grep -oE '^#[0-9]+' "logs/$t.log" | tail -1 | tr -d '#')
  fi
  corpus=$(find "corpus/$t" -type f | wc -l)
  crashed=no
  [ "$status" -ne 0 ] && crashed="yes (exit $status, see fuzz/logs/$t.log)"
  echo "$t: ${execs:-?} executions in ${seconds} s, corpus $corpus, crash: $crashed"
done
