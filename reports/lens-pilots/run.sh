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
# Third stage (stop 18), the candidate default set: ft-skip trained on, 400k more tokens of the same mix (read twice
# over, in a new order: seed 1), dead features re-drawn as in the shipped set's recipe; two threads:
#   MECHSCOPE_THREADS=2 bash reports/lens-pilots/run.sh ft2
# Stop 19, the shape sweep's other two axes at the same pilot scale and matched with 'ls' (same text, tokens, seed):
#   w4096         4,096 features per layer instead of 2,048
#   k64           k = 64 instead of 32
# SmolLM2 (stop 18): its shipped set judged the same way ('smol-shipped'), and fine-tuned on its own lens mix (the
# first 7 sampled shards, read twice over), k, outlier cut and sink latents as the shipped set:
#   smol-ft       200k tokens from the shipped set, then fit-sinks (indexed on the same held-out text as Gemma's sets)
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
      w4096) flags="--skip-init ls --features 4096" ;;  # stop 19: twice as wide, otherwise 'ls'
      k64) flags="--skip-init ls --k 64" ;;  # stop 19: k 64, otherwise 'ls'
      zero) flags="--skip-init zero" ;;
      noskip) flags="--no-skip" ;;
      shipped) flags="" ;;  # the baseline: the shipped set, judged the same way (not trained here)
      ft-skip) flags="$FT --tokens 120000" ;;
      ft-clt-skip) flags="$FT --tokens 120000 --kind clt --clt-write-layers 4" ;;
      ft-noskip) flags="$FT --tokens 250000 --no-skip" ;;
      ft-clt) flags="$FT --tokens 250000 --no-skip --kind clt --clt-write-layers 4" ;;
      ft2) flags="--model gemma3-270m --corpus lens:gemma3-270m@14*2 --tokens 400000 --features 2048 --k 32
                  --dead-after-tokens 30000 --resample-dead --resample-scale 1.5 --checkpoint-every 30 --seed 1
                  --save-dtype int8 --init-from $SETS/ft-skip" ;;
      smol-shipped) flags="" ;;
      smol-ft) flags="--model smollm2-135m --corpus lens:smollm2-135m@7*2 --tokens 200000 --features 1280 --k 64
                      --dead-after-tokens 50000 --outlier-factor 50 --checkpoint-every 30 --seed 2 --save-dtype int8
                      --init-from mechscope/artifacts/transcoders/smollm2-135m" ;;
      *) echo "unknown variant $name" >&2; exit 2 ;;
    esac
    out=reports/lens-pilots/$name
    mkdir -p "$out"
    set_dir=$SETS/$name
    model=gemma3-270m
    case $name in smol-*) model=smollm2-135m ;; esac
    case $name in
      shipped | smol-shipped) set_dir=mechscope/artifacts/transcoders/$model && mkdir -p "$SETS/$name" ;;
    esac
    case $name in ft* | smol-*) common="" ;; *) common=$COMMON ;; esac
    if [ "$name" = smol-ft ] && [ ! -f "$set_dir/config.json" ]; then
      # shellcheck disable=SC2086
      [ -f "$SETS/$name-trained/config.json" ] || python -m mechscope train-transcoders $flags \
        --out "$SETS/$name-trained" --resume
      python -m mechscope fit-sinks --model "$model" --transcoders "$SETS/$name-trained" --out "$set_dir"
    fi
    # shellcheck disable=SC2086
    [ -f "$set_dir/config.json" ] || python -m mechscope train-transcoders $common $flags --out "$SETS/$name" --resume
    [ -f "$SETS/$name/index.sqlite" ] || python -m mechscope index-features --model "$model" \
      --transcoders "$set_dir" --corpus shipped:gemma3-270m --tokens 32768 --out "$SETS/$name/index.sqlite"
    [ -f "$out/lens.json" ] || python -m mechscope eval-lens --model "$model" --transcoders "$set_dir" \
      --index "$SETS/$name/index.sqlite" --subset quick --validate 10 --out "$out/lens.json" --json > /dev/null
    [ -f "$out/eval.json" ] || python -m mechscope eval-transcoders --model "$model" --transcoders "$set_dir" \
      --corpus shipped:gemma3-270m --tokens 8192 --layer-tokens 512 --dead-tokens 16384 --out "$out/eval.json" \
      --json > /dev/null
    cp "$set_dir/config.json" "$out/config.json"
  done
done
