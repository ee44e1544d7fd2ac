#!/usr/bin/env bash
# The long CPU runs behind the open issues' published results, in order, one at a time (never two heavy
# jobs on a 2-core machine): rerun it to continue; a finished step is skipped.
#
#   nohup scripts/cpu_queue.sh > /dev/null 2>&1 &      # log: runs/cpu_queue.log, each step's output in runs/<step>.log
#
# Run directories (runs/) are not kept with the project, and a new checkout starts without them. So every
# finished step copies its small result files (metrics, recipe, environment, log; no weights) to
# docs/runs/<name>/, and a step counts as finished when either copy says so: commit docs/runs/ as steps land
# and a later checkout skips them. A training cut short by the end of a session resumes from its backup only on
# the machine that has its run directory; elsewhere it starts again. The fidelity study resumes anywhere from
# its partial copy (below).
#
# Steps: issue 25 item 4 (TinyMRMS on CamVid, 7500 it.) -> issue 22 item 5 (the fidelity study's step 2)
# -> issue 27 (HMSeg search, its derived network x2 seeds, TinyMRMS at the proof schedule x2 seeds, budget check).
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs docs/runs
PY="nice ${PY:-.venv/bin/python}"
LOG=runs/cpu_queue.log
say() { echo "$(date -u +%FT%T) $*" | tee -a "$LOG"; }

finished() {  # DIR holds a metrics.json whose run reached its last iteration
  python3 -c "import json,sys; m=json.load(open(sys.argv[1])); sys.exit(0 if m.get('iterations') and m.get('final_step')==m['iterations'] else 1)" \
    "$1/metrics.json" 2>/dev/null
}

publish() {  # copy a finished run's small files to docs/runs/<name>/ (no weights)
  local dir=$1 dest=docs/runs/$(basename "$1")
  mkdir -p "$dest"
  for f in metrics.json recipe.json environment.json train_log.jsonl state.json; do
    [ -f "$dir/$f" ] && cp "$dir/$f" "$dest/$f"
  done
  say "published $dir -> $dest (commit it)"
}

train() {  # train RUN_DIR RECIPE [train.py options]
  local dir=$1; shift
  finished "docs/runs/$(basename "$dir")" && return 0
  if ! finished "$dir"; then
    say "train $dir"
    $PY train.py --run-dir "$dir" "$@" >> "$dir.log" 2>&1 || { say "FAILED $dir (see $dir.log)"; exit 1; }
  fi
  publish "$dir"
}

train runs/camvid_tinymrms_cpu --recipe recipes/camvid_tinymrms_cpu.json

# A study's journals and its latencies are small and are all it needs to resume (a killed candidate restarts),
# so while it runs they are copied to docs/runs/<name>/partial/ every 10 minutes: commit that, and a later
# checkout, on any machine, continues the study where the copy left it instead of starting again.
snapshot() {  # snapshot RUN_DIR: copied whole into a staging directory, then swapped in (never a half copy)
  local dest=docs/runs/$(basename "$1")/partial
  local tmp=$dest.tmp.$$
  rm -rf "$tmp" && mkdir -p "$tmp" || return 1
  (cd "$1" && find . \( -name journal.json -o -name study_latencies.json \) -print0 \
    | xargs -0 -r cp --parents -t "$OLDPWD/$tmp") || { rm -rf "$tmp"; return 1; }
  rm -rf "$dest.old" && { [ ! -d "$dest" ] || mv "$dest" "$dest.old"; } && mv "$tmp" "$dest" && rm -rf "$dest.old"
}
restore() {  # restore RUN_DIR: start it from its published partial copy when this checkout lacks it
  local src=docs/runs/$(basename "$1")/partial
  if [ ! -d "$1" ] && [ -d "$src" ]; then mkdir -p "$1" && cp -r "$src"/. "$1"/ && say "restored $1 from $src"; fi
}

# Issue 22 item 5, step 2: the study's start network is the step-1 reference winner (docs/proxy_fidelity_camvid.md).
# Its latencies come from the OpenVINO profile of a 2-core AVX2 EPYC, not a measurement: the study is about the
# accuracy proxy, and single measurements here inverted the order of nested networks ({1,1,3,3,3} at 4.07 ms
# against {1,3,3,3,3} at 3.21 ms), while the profile is deterministic, monotone in every block and the same
# in every session and on every CPU kind the study resumes on.
if [ ! -f docs/runs/fid_step2/regret.md ]; then
  if [ ! -f runs/fid_step2/regret.md ]; then
    say "fidelity step 2"
    restore runs/fid_step2
    (while sleep 600; do snapshot runs/fid_step2; done) &
    SNAP=$!
    # killed or failed, the queue stops its snapshot loop and takes a last snapshot (nothing runs twice)
    # (a TERM runs the EXIT trap once the study's process has ended: stop the queue with
    #  pkill -f scripts/cpu_queue.sh; pkill -f benchmarks/proxy_fidelity.py)
    trap 'kill $SNAP 2>/dev/null; wait $SNAP 2>/dev/null; snapshot runs/fid_step2' EXIT
    trap 'exit 1' TERM INT HUP
    $PY benchmarks/proxy_fidelity.py --recipe recipes/expand_camvid.json --output runs/fid_step2 \
      --seeds 3 --ref-seeds 3 --ref-factor 4 --warm-iterations '' --set search.proxy.label_stride=null \
      --set search.latency.source=profile:profiles/epyc_avx2_2core_openvino_fp32_360x480.json \
      --variant 'stride4:label_stride=4' --set model.preset=null \
      --set 'model.arch={"depth":[1,1,1,1,1],"width":[8,16,32,64,64],"resolution":[0.5,0,0]}' \
      >> runs/fid_step2.log 2>&1 || { say "FAILED fidelity step 2 (see runs/fid_step2.log)"; exit 1; }
    trap - EXIT TERM INT HUP; kill $SNAP 2>/dev/null; wait $SNAP 2>/dev/null; snapshot runs/fid_step2
  fi
  mkdir -p docs/runs/fid_step2 && cp runs/fid_step2/*.json runs/fid_step2/*.md docs/runs/fid_step2/ && say "published runs/fid_step2"
fi

# Issue 27: the search (its directory's small files are published too: the trainings read derived_recipe.json).
SEARCH=runs/hmseg_search_camvid
if [ ! -f docs/runs/hmseg_search_camvid/derived_recipe.json ]; then
  if [ ! -f $SEARCH/derived_recipe.json ]; then
    say "hmseg search"
    $PY search.py --recipe recipes/hmseg_search_camvid.json >> $SEARCH.log 2>&1 \
      || { say "FAILED search (see $SEARCH.log)"; exit 1; }
  fi
  mkdir -p docs/runs/hmseg_search_camvid && cp $SEARCH/*.json $SEARCH/log.jsonl docs/runs/hmseg_search_camvid/ \
    && say "published $SEARCH"
fi
DERIVED=docs/runs/hmseg_search_camvid/derived_recipe.json
train runs/hmseg_derived_s0 --recipe $DERIVED
train runs/hmseg_derived_s1 --recipe $DERIVED --set train.seed=1
train runs/camvid_tinymrms_proof_s0 --recipe recipes/camvid_tinymrms_proof_cpu.json
train runs/camvid_tinymrms_proof_s1 --recipe recipes/camvid_tinymrms_proof_cpu.json --set train.seed=1

if [ ! -f docs/runs/hmseg_budget_check/budget_check.md ]; then
  say "budget check"
  $PY benchmarks/nas_budget_check.py --recipe recipes/hmseg_search_camvid.json --scales 0.5,1,2 --steps 1000 \
    --set nas.arch_lr=0.003 --output runs/hmseg_budget_check >> runs/hmseg_budget_check.log 2>&1 \
    || { say "FAILED budget check (see runs/hmseg_budget_check.log)"; exit 1; }
  mkdir -p docs/runs/hmseg_budget_check && cp runs/hmseg_budget_check/*.md runs/hmseg_budget_check/*.json \
    docs/runs/hmseg_budget_check/ && say "published runs/hmseg_budget_check"
fi
say "queue done"
