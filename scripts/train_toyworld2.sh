#!/usr/bin/env bash
# ToyWorld 2 (the SD-v1-family toy: CLIP-architecture text tower trained with the UNet, caption noise), with main.py.
# Reuses the shipped ToyWorld autoencoder (models/toyworld/autoencoder.safetensors; scripts/train_toyworld.sh makes it)
# and, by default, warm-starts the UNet from the first toy's (WARM_START=models/toyworld/txt2img.safetensors): its
# UNet has the same layout except the 16x16 cross-attention blocks, which start as identities (zero proj_out). The text
# tower is new and random, so every word meaning is learnt again from these captions. WARM_START= (empty) trains from
# scratch.
#
#   SWEEP="0 0.1 0.2 0.3" bash scripts/train_toyworld2.sh   # short pilots, one per p; prints each pilot's
#                                                            # missing-subject rate (plain sampling, tuning seeds)
#   P_OVER=0.2 P_UNDER=0.1 bash scripts/train_toyworld2.sh   # the full run at the chosen p: phase 1, phase 2, export
#
# Full run: phase 1 configs/toyworld2/txt2img.yaml (LDM_STEPS), then phase 2 with the first toy's phase-2 overlay
# configs/toyworld/txt2img-phase2.yaml on top (LDM2_STEPS; more star-as-"object" captions, so "*" can be inverted),
# then models/toyworld2/txt2img.safetensors (fp16, EMA UNet) and its missing-subject rate (MEASURE=1).
# Sweep: for each p in SWEEP a pilot of PILOT_STEPS phase-1 steps with p_over_describe = p and
# p_under_describe = p * UNDER_RATIO, exported to <run>/pilot.safetensors and measured with
# scripts/toyworld2_neglect.py (N_PAIRS two-subject prompts). The issue asks for a model whose plain sampling misses
# a subject in roughly 25-50% of two-subject samples: pick p from the table, then run the full training with it.
#
# Resumable like scripts/train_toyworld.sh: a stage whose run folder (LOGDIR/*_<stage>) has checkpoints/last.ckpt but
# no DONE marker is continued with `main.py -r`; a finished stage (DONE) is skipped. Delete the folder to start over.
# Stage names carry p (toyworld2_ldm_p0.2, toyworld2_pilot_p0.1), so runs at different p never resume each other.
#
# Environment: PYTHON (.venv/bin/python), LOGDIR (logs/toyworld2), P_OVER (0.2), P_UNDER (0.1), LDM_STEPS (4500),
# LDM2_STEPS (2000), SWEEP (empty = full run), PILOT_STEPS (1500), UNDER_RATIO (0.5), N_PAIRS (64), MEASURE (1),
# ACCELERATOR (cpu), THREADS (torch threads, 1), WARM_START (models/toyworld/txt2img.safetensors; empty: none).
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0; fi
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
LOGDIR=${LOGDIR:-logs/toyworld2}
P_OVER=${P_OVER:-0.2}
P_UNDER=${P_UNDER:-0.1}
LDM_STEPS=${LDM_STEPS:-4500}
LDM2_STEPS=${LDM2_STEPS:-2000}
SWEEP=${SWEEP:-}
PILOT_STEPS=${PILOT_STEPS:-1500}
UNDER_RATIO=${UNDER_RATIO:-0.5}
N_PAIRS=${N_PAIRS:-64}
MEASURE=${MEASURE:-1}
ACCELERATOR=${ACCELERATOR:-cpu}
THREADS=${THREADS:-1}
WARM_START=${WARM_START-models/toyworld/txt2img.safetensors}
AE=models/toyworld/autoencoder.safetensors
OUT=models/toyworld2
CONFIG=configs/toyworld2/txt2img.yaml
PHASE2=configs/toyworld/txt2img-phase2.yaml
NOISE_KEY=data.params.train.params.dataset.params
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

if [[ ! -f "$AE" ]]; then
    echo "error: $AE not found; ToyWorld 2 reuses the first toy's autoencoder (bash scripts/train_toyworld.sh makes it)" >&2
    exit 2
fi

source scripts/toyworld_stages.sh  # latest_run, train_stage (resumable stages)

noise_overrides() {  # p_over p_under -> main.py dotlist overrides of the training captions' noise
    echo "$NOISE_KEY.p_over_describe=$1 $NOISE_KEY.p_under_describe=$2"
}

warm_start() {  # phase-1 overrides: the first toy's UNet (and autoencoder, scale_factor), not its BERT tower
    [[ -n "$WARM_START" ]] && echo "model.params.ckpt_path=$WARM_START model.params.ignore_keys=[cond_stage_model.]"
    return 0
}

measure() {  # label ckpt [json]
    "$PYTHON" scripts/toyworld2_neglect.py --label "$1" --ckpt "$2" --n "$N_PAIRS" ${3:+--out "$3"} \
        | tail -n 1
}

if [[ -n "$SWEEP" ]]; then
    results=()
    for p in $SWEEP; do
        under=$(awk -v p="$p" -v r="$UNDER_RATIO" 'BEGIN { printf "%g", p * r }')
        name="toyworld2_pilot_p$p"
        read -ra overrides <<< "$(noise_overrides "$p" "$under") $(warm_start)"
        train_stage "$name" "$CONFIG" "$PILOT_STEPS" "${overrides[@]}"
        run=$(latest_run "$name")
        [[ -f "$run/pilot.safetensors" ]] || \
            "$PYTHON" scripts/export_toyworld.py ldm "$run/checkpoints/last.ckpt" "$run/pilot.safetensors"
        results+=("$(measure "p_over=$p p_under=$under ($PILOT_STEPS steps):" "$run/pilot.safetensors" \
            "$run/neglect.json")")
    done
    echo "== sweep: plain sampling, $N_PAIRS two-subject prompts (tuning seeds), 25 DDIM steps, scale 3"
    printf '%s\n' "${results[@]}"
    exit 0
fi

read -ra overrides <<< "$(noise_overrides "$P_OVER" "$P_UNDER")"
read -ra warm <<< "$(warm_start)"
mkdir -p "$OUT"
train_stage "toyworld2_ldm_p$P_OVER" "$CONFIG" "$LDM_STEPS" "${overrides[@]}" "${warm[@]}"
# Phase 2 starts from the phase-1 checkpoint (weights and EMA weights; fresh optimizer and step counter).
# Its learning rate decays over the whole phase (the overlay's cycle is 3000 steps; here it is LDM2_STEPS).
train_stage "toyworld2_ldm2_p$P_OVER" "$CONFIG $PHASE2" "$LDM2_STEPS" "${overrides[@]}" \
    "model.params.scheduler_config.params.cycle_lengths=[$LDM2_STEPS]" \
    model.params.ckpt_path="$(latest_run "toyworld2_ldm_p$P_OVER")/checkpoints/last.ckpt"
"$PYTHON" scripts/export_toyworld.py ldm "$(latest_run "toyworld2_ldm2_p$P_OVER")/checkpoints/last.ckpt" \
    "$OUT/txt2img.safetensors"
chmod 644 "$OUT"/*.safetensors
du -h "$OUT"/*.safetensors
if [[ "$MEASURE" == 1 ]]; then
    measure "p_over=$P_OVER p_under=$P_UNDER (final):" "$OUT/txt2img.safetensors"
fi
echo "Sample with: $PYTHON scripts/txt2img.py --config configs/toyworld2/txt2img-inference.yaml" \
    "--ckpt $OUT/txt2img.safetensors --H 64 --W 64 --ddim_steps 25 --scale 3 --prompt 'a red circle and a blue square'" \
    "--ae_tokens circle,square --ae_config configs/guidance/attend_and_excite.yaml"
