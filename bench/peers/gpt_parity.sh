#!/bin/sh
# gpt_parity.sh: tinymesh's GPT against PyTorch (bench/peers/torch_gpt.py,
# nanoGPT's model) step by step. PyTorch writes nanoGPT-initialised random
# weights as a checkpoint; both train from it for --steps AdamW steps with
# clipping and weight decay on the same --no-shuffle batches of the same
# corpus; the script prints every step's loss on both sides and every final
# tensor's max|a - b| / max|b|, and exits 1 if any passes --tol (1e-4).
# PyTorch also trains in float64 from the same weights, and every tensor
# shows each float32 run's distance to it: the floor two float32
# implementations share. Where the two float32 runs disagree past --tol,
# the float64 run arbitrates: the tensor fails only if ours is the one
# further from it. (The keys' bias in attn.c_attn.bias has an exact
# gradient of zero; PyTorch's float32 run moves it by rounding noise
# amplified by AdamW, ours keeps the zero: see strategies/gpt.c.)
# --no-f64 skips the float64 run (and the arbitration).
#
# usage: bench/peers/gpt_parity.sh [--no-f64] [--tol X] [--keep DIR] [TRAIN FLAGS...]
#   TRAIN FLAGS   any of --layers --heads --d-model --context --batch --steps
#                 --seed --lr --min-lr --warmup-steps --lr-decay-steps --beta1
#                 --beta2 --weight-decay --clip-grad --text --val-fraction,
#                 given to both sides (defaults: the GPT's, --steps 5,
#                 --warmup-steps 2, --lr-decay-steps 5, so that the 5 steps
#                 see a full learning rate and its decay)
#   --keep DIR    keep the checkpoints and logs in DIR
# Needs /usr/bin/python3 with torch (Debian's python3-torch).
set -eu
cd "$(dirname "$0")/../.."
PY=${TORCH_PYTHON:-/usr/bin/python3}
f64=1
tol=1e-4
keep=
steps=5
model=
recipe="--warmup-steps 2 --lr-decay-steps 5"
while [ $# -gt 0 ]; do
    case "$1" in
    --no-f64) f64=0; shift ;;
    --tol) tol=${2:?--tol wants a number}; shift 2 ;;
    --keep) keep=${2:?--keep wants a directory}; shift 2 ;;
    --steps) steps=${2:?--steps wants a number}; shift 2 ;;
    --layers | --heads | --d-model | --context | --seed)
        model="$model $1 ${2:?$1 wants a value}"; shift 2 ;;
    --batch | --lr | --min-lr | --warmup-steps | --lr-decay-steps | --beta1 | --beta2 | \
    --weight-decay | --clip-grad | --text | --val-fraction)
        recipe="$recipe $1 ${2:?$1 wants a value}"; shift 2 ;;
    -h | --help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpt_parity.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
    esac
done
if ! "$PY" -c 'import torch' >/dev/null 2>&1; then
    echo "gpt_parity.sh: $PY cannot import torch (apt-get install python3-torch)" >&2
    exit 2
fi
make -s build/train >/dev/null
dir=${keep:-$(mktemp -d)}
mkdir -p "$dir"
[ -n "$keep" ] || trap 'rm -rf "$dir"' EXIT INT TERM
# shellcheck disable=SC2086
"$PY" bench/peers/torch_gpt.py init $model --out "$dir/init.safetensors" >/dev/null
# shellcheck disable=SC2086
build/train --model gpt $model $recipe --steps "$steps" --no-shuffle --eval-sequences 8 \
    --sample-tokens 0 --load "$dir/init.safetensors" --save "$dir/ours.safetensors" \
    --metrics "$dir/ours.jsonl" >"$dir/ours.log" 2>&1 ||
    { cat "$dir/ours.log" >&2; echo "gpt_parity.sh: build/train failed" >&2; exit 1; }
# The decay's end and min-lr follow build/train's defaults unless given.
# shellcheck disable=SC2086
"$PY" bench/peers/torch_gpt.py train $model $recipe --steps "$steps" --no-shuffle \
    --eval-sequences 8 --load "$dir/init.safetensors" --losses "$dir/torch.json" \
    --save "$dir/torch.safetensors" --log-every 1000000 >"$dir/torch.log" 2>&1 ||
    { cat "$dir/torch.log" >&2; echo "gpt_parity.sh: torch_gpt.py failed" >&2; exit 1; }
ref=
if [ "$f64" = 1 ]; then
    # shellcheck disable=SC2086
    "$PY" bench/peers/torch_gpt.py train $model $recipe --steps "$steps" --no-shuffle \
        --eval-sequences 8 --load "$dir/init.safetensors" --losses "$dir/f64.json" \
        --save "$dir/f64.safetensors" --double --log-every 1000000 >"$dir/f64.log" 2>&1 ||
        { cat "$dir/f64.log" >&2; echo "gpt_parity.sh: the float64 run failed" >&2; exit 1; }
    ref="--ref $dir/f64.safetensors"
fi
echo "gpt parity:$model $recipe --steps $steps --no-shuffle, from the same nanoGPT init"
# shellcheck disable=SC2086
"$PY" bench/peers/torch_gpt.py compare --ours-metrics "$dir/ours.jsonl" \
    --torch-losses "$dir/torch.json" --ours "$dir/ours.safetensors" \
    --torch "$dir/torch.safetensors" --tol "$tol" $ref
