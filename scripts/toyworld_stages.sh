# Stage helpers shared by scripts/train_toyworld.sh and scripts/train_toyworld2.sh (sourced, not run).
# The caller sets PYTHON, LOGDIR and ACCELERATOR. A stage is resumable: a run folder with checkpoints/last.ckpt and no
# DONE marker is continued with `main.py -r`; a finished one (DONE) is skipped.

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then  # run, not sourced: say what this file is
    awk 'NR <= 3 {sub(/^# ?/, ""); print}' "$0"
    [[ "${1:-}" == -h || "${1:-}" == --help ]] && exit 0
    echo "error: scripts/toyworld_stages.sh is sourced by scripts/train_toyworld.sh and scripts/train_toyworld2.sh, not run" >&2
    exit 2
fi

latest_run() {  # latest run folder of a stage (name suffix), or nothing
    ls -d "$LOGDIR"/*_"$1" 2>/dev/null | sort | tail -n 1 || true
}

train_stage() {  # name "config [config...]" steps [overrides...]
    local name=$1 steps=$3 config
    read -ra config <<< "$2"
    shift 3
    local run
    run=$(latest_run "$name")
    if [[ -n "$run" && -f "$run/DONE" ]]; then
        echo "== $name: done in $run (delete the folder to train again)"
    elif [[ -n "$run" && -f "$run/checkpoints/last.ckpt" ]]; then
        echo "== $name: resuming $run up to step $steps"
        "$PYTHON" main.py -r "$run" -t --logdir "$LOGDIR" --accelerator "$ACCELERATOR" --scale_lr False \
            --max_steps "$steps" "$@"
        touch "$run/DONE"
    else
        echo "== $name: training ${config[*]} for $steps steps"
        "$PYTHON" main.py -t --base "${config[@]}" -n "$name" --logdir "$LOGDIR" --accelerator "$ACCELERATOR" \
            --scale_lr False --seed 23 --max_steps "$steps" "$@"
        run=$(latest_run "$name")
        touch "$run/DONE"
    fi
}
