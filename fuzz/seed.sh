#!/usr/bin/env bash
# Fills fuzz/corpus/<target>/ with real files to start from: the repository's
# fixtures (a model, its config, the tokenizer, a checkpoint written by a short
# run) and, when ../shared is beside the repository, the MNLI samples (TSV,
# JSONL, and Parquet converted from the JSONL). The corpus is not committed.
set -euo pipefail
cd "$(dirname "$0")"
root=..
corpus=corpus
mkdir -p "$corpus"/{safetensors,config_json,tokenizer_json,trainer_state,optimizer_state,glue_readers}

models=$root/fixtures/data/models
for m in "$models"/*/; do
  name=$(basename "$m")
  cp "$m/model.safetensors" "$corpus/safetensors/$name"
  cp "$m/config.json" "$corpus/config_json/$name"
done
cp "$root/fixtures/data/tokenizer/tokenizer.json" "$corpus/tokenizer_json/own"
if [ -f "$root/../shared/data/t5-tokenizer/tokenizer.json" ]; then
  cp "$root/../shared/data/t5-tokenizer/tokenizer.json" "$corpus/tokenizer_json/t5"
fi

# A real checkpoint: three quickstart steps.
run=$(mktemp -d)
(cd "$root" && cargo run -q -p xtask -- train --steps 3 --warmup-steps 0 --eval-every 0 \
  --output "$run" >/dev/null)
ckpt="$run/checkpoints/step-3"
cp "$ckpt/trainer_state.json" "$corpus/trainer_state/state"
cp "$ckpt/manifest.json" "$corpus/trainer_state/manifest"
cp "$ckpt/optimizer.safetensors" "$corpus/optimizer_state/quickstart"
rm -rf "$run"

# Readers: first byte = format (0 tsv, 1 jsonl, 2 parquet), second = task (0 mnli).
# The first 20 kB of a file, behind the two selector bytes (no pipe into
# head: under pipefail its early exit would fail the script).
prefix() { printf "\\x$(printf %02x "$1")\\x00"; head -c 20000 "$2"; }
sample=$root/../shared/data/mnli-sample
if [ -d "$sample" ]; then
  for f in "$sample"/*.tsv; do prefix 0 "$f" > "$corpus/glue_readers/$(basename "$f")"; done
  for f in "$sample"/*.jsonl; do
    prefix 1 "$f" > "$corpus/glue_readers/$(basename "$f")"
    if python3 -c "import pyarrow" 2>/dev/null; then
      pq=$(mktemp --suffix .parquet)
      python3 -c "import pyarrow.json as j, pyarrow.parquet as p, sys; p.write_table(j.read_json(sys.argv[1]).slice(0, 50), sys.argv[2])" "$f" "$pq"
      prefix 2 "$pq" > "$corpus/glue_readers/$(basename "$f" .jsonl).parquet"
      rm -f "$pq"
    fi
  done
fi
ls "$corpus"/* | head -50
