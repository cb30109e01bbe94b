#!/bin/bash
# Judge a candidate gemma3-270m set between training stages: the lens probes (swaps x1/x2, FVU by position,
# per-layer locate shares, dense census) and the first quality bar's held-out FVU / spliced CE on the entity-rich
# shipped held-out text and on documentation. Writes beside nothing: all results go to reports/lens-v3/NAME/.
#   bash reports/lens-v3/judge.sh NAME SET_DIR [MODEL]
set -e
cd "$(dirname "$0")/../.."
export MECHSCOPE_THREADS=${MECHSCOPE_THREADS:-1}
name=$1
set_dir=$2
model=${3:-gemma3-270m}
out=reports/lens-v3/$name
mkdir -p "$out"
[ -f "$out/probes.json" ] || python -m mechscope probe-lens -q --model "$model" --transcoders "$set_dir" \
  --out "$out/probes.json" > "$out/probes.txt"
[ -f "$out/eval-entity.json" ] || python -m mechscope eval-transcoders -q --model "$model" --transcoders "$set_dir" \
  --corpus "shipped:gemma3-270m" --tokens 8192 --layer-tokens 512 --out "$out/eval-entity.json" --json > /dev/null
[ -f "$out/eval-docs.json" ] || python -m mechscope eval-transcoders -q --model "$model" --transcoders "$set_dir" \
  --corpus builtin --tokens 8192 --layer-tokens 512 --out "$out/eval-docs.json" --json > /dev/null
cp "$set_dir/config.json" "$out/config.json"
