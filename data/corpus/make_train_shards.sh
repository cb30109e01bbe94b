#!/bin/bash
# The train split of the sampled corpus (issue #15), in shards of 60,000 characters, one sampling seed each.
# Seeded and resumable: a shard already written is skipped, so the loop continues across sessions; the same seed,
# model, code and thread count give the same text. One thread: the sampler shares the machine with other work.
# Seeds 1-5 were sampled with length-grouped batches of 32 (the sampler's first batching, 4-6x slower); later
# seeds use full left-padded batches of 64. Each shard's .stats.json records its exact configuration.
#   bash data/corpus/make_train_shards.sh [FIRST LAST]      (default: seeds 1 to 200; MODEL=smollm2-135m for the other)
set -e
cd "$(dirname "$0")/../.."
export MECHSCOPE_THREADS=1
MODEL=${MODEL:-gemma3-270m}
OUT=data/corpus/sampled-v1/$MODEL
mkdir -p "$OUT"
for s in $(seq "${1:-1}" "${2:-200}"); do
  f="$OUT/train-s$s.jsonl.xz"
  [ -f "$f" ] && continue
  if [ "$MODEL" = gemma3-270m ] && [ "$s" -le 5 ]; then batching="--batching length --batch-size 32"; else batching="--batching pad --batch-size 64"; fi
  # shellcheck disable=SC2086
  python -m mechscope.corpus.sampled --model "$MODEL" --split train --seed "$s" --chars 60000 $batching --out "$f"
done
