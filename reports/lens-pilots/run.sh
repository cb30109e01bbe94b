#!/bin/bash
# Matched pilot runs for issue #15, part 3: does the skip term's start decide whether concepts enter features?
# Same text (the lens mix over the first 6 train shards: 160k tokens), same tokens, seed, width and k; only the skip
# term differs: least-squares init ('ls', the shipped sets' recipe), trained from zero ('zero'), none ('noskip').
# Each set is indexed on the shipped held-out text (32k tokens, for its labels and densities), judged by the lens
# benchmark's quick subset, then evaluated on that text (eval-transcoders at the shipped sets' eval sizes).
# Resumable: a finished step is skipped, an interrupted training run continues from its checkpoint.
#   bash reports/lens-pilots/run.sh [VARIANT ...]        (default: ls zero noskip; 'shipped' judges the shipped set)
# Second group, fine-tunes of the shipped set (its features as the start) on the larger lens mix (first 14 shards),
# no resampling (CLT training has none), to match a per-layer set against a cross-layer one (#21) and to see whether
# entity-rich text improves the shipped features (#15):
#   ft-skip       per-layer, skip term kept, 120k tokens
#   ft-clt-skip   cross-layer (decoders into the next 4 layers; cross-layer decoders start at zero), the same
#   ft-noskip     per-layer, skip term dropped, 250k tokens (stopped at 63k in stop 17: FVU 17 -> 1.2, see README)
#   ft-clt        cross-layer, skip term dropped, 250k tokens (stopped at 54k)
set -e
cd "$(dirname "$0")/../.."
export MECHSCOPE_THREADS=${MECHSCOPE_THREADS:-1}
SETS=${MECHSCOPE_PILOTS:-$HOME/.local/share/mechscope/pilots}
COMMON="--model gemma3-270m --corpus lens:gemma3-270m@6 --tokens 130000 --skip-init-tokens 16384 --features 2048
        --k 32 --dead-after-tokens 30000 --resample-dead --checkpoint-every 20 --seed 0 --save-dtype int8"
FT="--model gemma3-270m --corpus lens:gemma3-270m@14 --skip-init-tokens 16384 --features 2048 --k 32
    --dead-after-tokens 30000 --checkpoint-every 20 --seed 0 --save-dtype int8
    --init-from mechscope/artifacts/transcoders/gemma3-270m"
for v in "${@:-ls zero noskip}"; do
  for name in $v; do
    case $name in
      ls) flags="--skip-init ls" ;;
      zero) flags="--skip-init zero" ;;
      noskip) flags="--no-skip" ;;
      shipped) flags="" ;;  # the baseline: the shipped set, judged the same way (not trained here)
      ft-skip) flags="$FT --tokens 120000" ;;
      ft-clt-skip) flags="$FT --tokens 120000 --kind clt --clt-write-layers 4" ;;
      ft-noskip) flags="$FT --tokens 250000 --no-skip" ;;
      ft-clt) flags="$FT --tokens 250000 --no-skip --kind clt --clt-write-layers 4" ;;
      *) echo "unknown variant $name" >&2; exit 2 ;;
    esac
    out=reports/lens-pilots/$name
    mkdir -p "$out"
    set_dir=$SETS/$name
    [ "$name" = shipped ] && set_dir=mechscope/artifacts/transcoders/gemma3-270m && mkdir -p "$SETS/shipped"
    case $name in ft-*) common="" ;; *) common=$COMMON ;; esac
    # shellcheck disable=SC2086
    [ -f "$set_dir/config.json" ] || python -m mechscope train-transcoders $common $flags --out "$SETS/$name" --resume
    [ -f "$SETS/$name/index.sqlite" ] || python -m mechscope index-features --model gemma3-270m \
      --transcoders "$set_dir" --corpus shipped:gemma3-270m --tokens 32768 --out "$SETS/$name/index.sqlite"
    [ -f "$out/lens.json" ] || python -m mechscope eval-lens --model gemma3-270m --transcoders "$set_dir" \
      --index "$SETS/$name/index.sqlite" --subset quick --validate 10 --out "$out/lens.json" --json > /dev/null
    [ -f "$out/eval.json" ] || python -m mechscope eval-transcoders --model gemma3-270m --transcoders "$set_dir" \
      --corpus shipped:gemma3-270m --tokens 8192 --layer-tokens 512 --dead-tokens 16384 --out "$out/eval.json" \
      --json > /dev/null
    cp "$set_dir/config.json" "$out/config.json"
  done
done
