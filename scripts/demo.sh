#!/usr/bin/env bash
# The whole mission offline, on a bundled ToyWorld model, in a few minutes on 2 CPU cores:
#   (a) two-subject prompts sampled without and with Attend-and-Excite (grids + attention maps),
#   (b) textual inversion of the held-out shape (a star no caption ever named) from data/toyworld/heldout with main.py,
#   (c) "a photo of *" and "a * and a blue circle" with the learned "*" and A&E,
#   (d) a second learned word, "@" (a yellow diamond, from data/toyworld/yellow_diamond), merged with "*" by
#       scripts/merge_embeddings.py, and "a * and a @" without and with A&E (the full two-concept benchmark with
#       every method is a separate command: scripts/evaluate_toyworld.py --methods, see docs/results.md),
# then the ToyWorld detector's verdicts, beside the evaluation's headline rates (docs/results.md, with intervals).
# Everything goes to outputs/demo/ (summary in outputs/demo/summary.txt).
#
#   bash scripts/demo.sh               # ToyWorld 2, the Stable-Diffusion-family toy (models/toyworld2/): CLIP tower,
#                                      #   trained with caption noise so plain sampling drops subjects; A&E with the
#                                      #   official defaults (configs/guidance/attend_and_excite.yaml, 16x16 maps),
#                                      #   and in (a) also with the first toy's preset (x10 softmax, 8x8 maps)
#   bash scripts/demo.sh --toy bert    # ToyWorld 1 (models/toyworld/): BERT tower, its A&E preset (8x8 maps)
#
# Environment: PYTHON (interpreter that creates .venv, default python3), STEPS (DDIM steps, 25), N (samples per
# prompt, 8: with 8 one image moves a prompt's rate by 1/8, and the three prompts pool 24 images per method),
# INV_STEPS (inversion steps, 1000), AE_CONFIG (A&E setting; default per toy as above), THREADS (torch threads,
# default: all cores), OUT (outputs/demo). Prompts and seeds are fixed here, not chosen from the outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
TOY=sd
TOY_GIVEN=0
while [ $# -gt 0 ]; do
  case $1 in
    --toy) TOY=${2:-}; TOY_GIVEN=1; shift 2 ;;
    --toy=*) TOY=${1#--toy=}; TOY_GIVEN=1; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "error: unknown argument '$1'; use --toy sd (default) or --toy bert" >&2; exit 2 ;;
  esac
done
if [ "$TOY_GIVEN" = 0 ] && [ ! -f models/toyworld2/txt2img.safetensors ]; then
  echo "note: models/toyworld2/txt2img.safetensors (the SD-family toy) is not in this checkout; showing the BERT toy" \
    "(bash scripts/train_toyworld2.sh makes the SD-family one; then bash scripts/demo.sh shows it)" >&2
  TOY=bert
fi
case $TOY in
  sd|2|clip) TOY=2; CONFIG=configs/toyworld2/txt2img-inference.yaml; CKPT=models/toyworld2/txt2img.safetensors
     FINETUNE=configs/toyworld2/finetune.yaml; DEFAULT_AE=configs/guidance/attend_and_excite.yaml
     # also the first toy's preset (x10 at 8x8): measured to help here, where the official defaults hurt
     SECOND_AE=configs/toyworld/attend_and_excite.yaml
     MAKE="bash scripts/train_toyworld2.sh" ;;
  bert|1) TOY=1; CONFIG=configs/toyworld/txt2img-inference.yaml; CKPT=models/toyworld/txt2img.safetensors
     FINETUNE=configs/toyworld/finetune.yaml; DEFAULT_AE=configs/toyworld/attend_and_excite.yaml; SECOND_AE=
     MAKE="bash scripts/train_toyworld.sh" ;;
  *) echo "error: --toy '$TOY' is not a ToyWorld model; use --toy sd (default) or --toy bert" >&2; exit 2 ;;
esac
START=$(date +%s)
step() { printf '\n\033[1m== [%3ds] %s\033[0m\n' "$(($(date +%s) - START))" "$*"; }

# --- set-up (as scripts/test.sh): .venv, CPU torch, the project ------------------------------------------------
step "Setting up .venv"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  "$VPY" -m pip install -q --upgrade pip >/dev/null
  "$VPY" -m pip install -q "torch==2.13.0"  # first, so no requirement pulls a CUDA build
fi
if ! "$VPY" -c "import ldm, omegaconf, pytorch_lightning, transformers, kornia, safetensors" >/dev/null 2>&1; then
  "$VPY" -m pip install -q -e .
fi
if [ -n "${THREADS:-}" ]; then export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS; fi

OUT=${OUT:-outputs/demo}
STEPS=${STEPS:-25}
N=${N:-8}
INV_STEPS=${INV_STEPS:-1000}
SCALE=3.0
AE_CONFIG=${AE_CONFIG:-$DEFAULT_AE}
if [ ! -f "$CKPT" ]; then
  echo "error: $CKPT is missing; make it with: $MAKE" >&2
  exit 1
fi
rm -rf "$OUT"
mkdir -p "$OUT"

sample() {  # outdir prompt [extra txt2img flags...]
  local outdir=$1 prompt=$2
  shift 2
  "$VPY" scripts/txt2img.py --config "$CONFIG" --ckpt "$CKPT" --H 64 --W 64 --ddim_steps "$STEPS" --scale "$SCALE" \
    --n_samples "$N" --seed 7 --prompt "$prompt" --outdir "$OUT/$outdir" --device cpu "$@" 2>&1 |
    grep -E "Samples are in|A&E excites|Error|error" || true
}

# --- (a) two subjects, without and with Attend-and-Excite --------------------------------------------------------
echo "ToyWorld $TOY: $CKPT, A&E setting $AE_CONFIG"
step "(a) two-subject prompts, plain and with Attend-and-Excite ($N samples each, $STEPS DDIM steps)"
for pair in "red circle|blue square" "green triangle|yellow diamond" "blue circle|red triangle"; do
  a=${pair%|*} b=${pair#*|}
  prompt="a $a and a $b"
  slug=$(echo "$prompt" | tr ' ' '-')
  echo "-- $prompt"
  sample "a_two_subjects/$slug/plain" "$prompt"
  sample "a_two_subjects/$slug/attend_excite" "$prompt" --ae_tokens "${a#* },${b#* }" --ae_config "$AE_CONFIG" \
    --save_attention
  if [ -n "${SECOND_AE:-}" ]; then
    sample "a_two_subjects/$slug/attend_excite_toy_preset" "$prompt" --ae_tokens "${a#* },${b#* }" \
      --ae_config "$SECOND_AE" --save_attention
  fi
done

# --- (b) textual inversion of the held-out shape ----------------------------------------------------------------
step "(b) textual inversion: learning '*' from $(ls data/toyworld/heldout | wc -l) images in data/toyworld/heldout ($INV_STEPS steps)"
"$VPY" main.py -t --base "$FINETUNE" -n star --logdir "$OUT/b_inversion" --accelerator cpu \
  --actual_resume "$CKPT" --data_root data/toyworld/heldout --init_word object --max_steps "$INV_STEPS" \
  lightning.trainer.enable_progress_bar=true 2>&1 | tr '\r' '\n' | grep -E --line-buffered "Epoch .*[05]0/|Restored|Error|error" || true
EMB=$(ls -t "$OUT"/b_inversion/*/checkpoints/embeddings.pt 2>/dev/null | head -n 1 || true)
if [ -z "$EMB" ]; then
  echo "error: the inversion wrote no embeddings.pt under $OUT/b_inversion" >&2
  exit 1
fi
echo "learned embedding: $EMB"

# --- (c) the learned word, alone and with another subject (A&E) -------------------------------------------------
step "(c) sampling with the learned '*'"
sample c_inverted/a-photo-of-star-init-word-only "a photo of *"  # "*" still at its init word "object": the baseline
sample c_inverted/a-photo-of-star "a photo of *" --embedding_path "$EMB" --ae_tokens "*" --ae_config "$AE_CONFIG" \
  --save_attention
sample c_inverted/a-star-and-a-blue-circle "a * and a blue circle" --embedding_path "$EMB" --ae_tokens "*,circle" \
  --ae_config "$AE_CONFIG" --save_attention

# --- (d) a second learned word, and both in one prompt ----------------------------------------------------------
step "(d) a second word: learning '@' from $(ls data/toyworld/yellow_diamond | wc -l) images in data/toyworld/yellow_diamond ($INV_STEPS steps), merged with '*'"
"$VPY" main.py -t --base "$FINETUNE" -n yellow_diamond --logdir "$OUT/d_second_word" --accelerator cpu \
  --actual_resume "$CKPT" --data_root data/toyworld/yellow_diamond --placeholder_string @ --init_word diamond \
  --max_steps "$INV_STEPS" lightning.trainer.enable_progress_bar=true 2>&1 | tr '\r' '\n' |
  grep -E --line-buffered "Epoch .*[05]0/|Restored|Error|error" || true
EMB2=$(ls -t "$OUT"/d_second_word/*/checkpoints/embeddings.pt 2>/dev/null | head -n 1 || true)
if [ -z "$EMB2" ]; then
  echo "error: the inversion wrote no embeddings.pt under $OUT/d_second_word" >&2
  exit 1
fi
WORDS="$OUT/d_second_word/learned_words.safetensors"
"$VPY" scripts/merge_embeddings.py --manager_ckpts "$EMB" "$EMB2" --output_path "$WORDS" --config "$CONFIG" 2>&1 |
  grep -E "Merged|error" || true
sample d_two_words/a-star-and-a-at "a * and a @" --embedding_path "$WORDS"
sample d_two_words/a-star-and-a-at-ae "a * and a @" --embedding_path "$WORDS" --ae_tokens "*,@" \
  --ae_config "$AE_CONFIG" --save_attention

# --- summary ----------------------------------------------------------------------------------------------------
step "Summary"
"$VPY" scripts/toyworld_demo.py "$OUT" --results docs/results.md --toy "$TOY"
cat <<EOF

Done in $(($(date +%s) - START)) s. Pictures:
  $OUT/a_two_subjects/<prompt>/{plain,attend_excite}/<prompt>.png   grids (attend_excite/attention/: token maps)
  $OUT/b_inversion/*/images/                                          inversion training logs
  $OUT/c_inverted/<prompt>/<prompt>.png                               samples with the learned "*"
  $OUT/d_two_words/<run>/<prompt>.png                                 "a * and a @" with both learned words
"*" counts as correct when the detector finds a star, "@" when it finds a yellow diamond; "init-word-only" uses "*"
before inversion (= "object").
EOF
