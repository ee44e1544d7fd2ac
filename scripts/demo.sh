#!/usr/bin/env bash
# End-to-end demo on the built-in synthetic street set (CPU, minutes):
# generate data -> train (multi-branch) -> fuse -> evaluate -> export SavedModel -> predict.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN=runs/demo

echo "== model summary"
$PY -m lps_keras.summary --preset lps_tiny --input-size 192x384

echo "== training (recipes/demo.json; resumes if $RUN exists)"
$PY train.py --recipe recipes/demo.json --run-dir "$RUN"

echo "== evaluation of the fused deploy model"
$PY evaluate.py --recipe recipes/demo.json --weights "$RUN/deploy.keras" --save-predictions "$RUN/predictions"

echo "== export for TF Serving"
$PY export.py --recipe recipes/demo.json --weights "$RUN/deploy.keras" --output savedmodels/demo --overwrite

echo "== prediction with the exported SavedModel"
IMAGES=$(find data/synthetic/leftImg8bit/val -name '*.png' | sort | head -n 2)
$PY predict.py $IMAGES --model savedmodels/demo/1 --output "$RUN/predict"
# The shipped LPS-S trained on real CamVid (savedmodels/camvid_lps_s/1) on a real street image, when the
# shared CamVid copy is beside the checkout (the project itself does not need it).
CAMVID_IMAGE=../shared/data/camvid_segnet/val/0016E5_07959.png
if [ -f savedmodels/camvid_lps_s/1/saved_model.pb ] && [ -f "$CAMVID_IMAGE" ]; then
  echo "== the shipped CamVid LPS-S on a real street image"
  $PY predict.py "$CAMVID_IMAGE" --model savedmodels/camvid_lps_s/1 --output "$RUN/predict_camvid"
fi
echo "Demo done: see $RUN (TensorBoard: $(dirname "$PY")/tensorboard --logdir $RUN/tensorboard), savedmodels/demo/1, $RUN/predict"
