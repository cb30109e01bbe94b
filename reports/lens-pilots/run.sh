#!/bin/bash
# Matched pilot runs for issue #15, part 3: does the skip term's start decide whether concepts enter features?
# Same text (the lens mix over the first 6 train shards: 160k tokens), same tokens, seed, width and k; only the skip
# term differs: least-squares init ('ls', the shipped sets' recipe), trained from zero ('zero'), none ('noskip').
# Each set is indexed on the shipped held-out text (32k tokens, for its labels and densities), judged by the lens
# benchmark's quick subset, then evaluated on that text (eval-transcoders at the shipped sets' eval sizes).
# Resumable: a finished step is skipped, an interrupted training run continues from its checkpoint.
#   bash reports/lens-pilots/run.sh [VARIANT ...]        (default: ls zero noskip; 'shipped' judges the shipped set)
set -e
cd "$(dirname "$0")/../.."
export MECHSCOPE_THREADS=${MECHSCOPE_THREADS:-1}
SETS=${MECHSCOPE_PILOTS:-$HOME/.local/share/mechscope/pilots}
COMMON="--model gemma3-270m --corpus lens:gemma3-270m@6 --tokens 130000 --skip-init-tokens 16384 --features 2048
        --k 32 --dead-after-tokens 30000 --resample-dead --checkpoint-every 20 --seed 0 --save-dtype int8"
for v in "${@:-ls zero noskip}"; do
  for name in $v; do
    case $name in
      ls) flags="--skip-init ls" ;;
      zero) flags="--skip-init zero" ;;
      noskip) flags="--no-skip" ;;
      shipped) flags="" ;;  # the baseline: the shipped set, judged the same way (not trained here)
      *) echo "unknown variant $name" >&2; exit 2 ;;
    esac
    out=reports/lens-pilots/$name
    mkdir -p "$out"
    set_dir=$SETS/$name
    [ "$name" = shipped ] && set_dir=mechscope/artifacts/transcoders/gemma3-270m && mkdir -p "$SETS/shipped"
    # shellcheck disable=SC2086
    [ -f "$set_dir/config.json" ] || python -m mechscope train-transcoders $COMMON $flags --out "$SETS/$name" --resume
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
