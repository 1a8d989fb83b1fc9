# Stage helpers shared by scripts/train_toyworld.sh and scripts/train_toyworld2.sh (sourced, not run).
# The caller sets PYTHON, LOGDIR and ACCELERATOR. A stage is resumable: a run folder with checkpoints/last.ckpt and no
# DONE marker is continued with `main.py -r`; a finished one (DONE) is skipped.

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
