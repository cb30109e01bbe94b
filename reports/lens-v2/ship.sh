#!/bin/bash
# Issue #15, part 4: a candidate default set judged as a shipped set is (stop 18), after reports/lens-pilots/run.sh
# has trained, indexed and quick-judged it (gemma3-270m: ft2, shipped as v5): the full lens suite with the defaults
# (lens.json) and eval-transcoders at the shipped sets' sizes on the shipped held-out text (eval.json), both written
# beside the set, and on the documentation corpus's held-out split (reports/lens-v2/MODEL/eval-docs.json).
#   bash reports/lens-v2/ship.sh gemma3-270m mechscope/artifacts/transcoders/gemma3-270m INDEX.sqlite
# (stop 18 ran it with the set already copied there and the index unpacked; lens.json's index path was then set to
# the shipped archive's name.)
set -e
cd "$(dirname "$0")/../.."
export MECHSCOPE_THREADS=${MECHSCOPE_THREADS:-1}
model=$1
set_dir=$2
index=$3
out=reports/lens-v2/$model
mkdir -p "$out"
[ -f "$set_dir/lens.json" ] || python -m mechscope eval-lens --model "$model" --transcoders "$set_dir" \
  --index "$index" --out "$set_dir/lens.json" --json > /dev/null
[ -f "$set_dir/eval.json" ] || python -m mechscope eval-transcoders --model "$model" --transcoders "$set_dir" \
  --corpus "shipped:gemma3-270m" --tokens 8192 --layer-tokens 512 --out "$set_dir/eval.json" --json > /dev/null
[ -f "$out/eval-docs.json" ] || python -m mechscope eval-transcoders --model "$model" --transcoders "$set_dir" \
  --corpus builtin --tokens 8192 --layer-tokens 512 --dead-tokens 16384 --out "$out/eval-docs.json" --json > /dev/null
