#!/usr/bin/env bash
# The recipe of the shipped weights/detector.onnx (run plates_v1), every stage, as one command:
#
#   bash training/recipes/plates_v1.sh
#
# About 7 h on a 2-core CPU: ~1 h to render the synthetic pool, ~5.8 h of training (52 epochs, ~400 s an epoch
# of 4000 images when the box is otherwise idle). Every step resumes: re-running the script skips
# finished synthetic sets, and a killed training stage continues with
#   .venv/bin/python -m training.train --resume runs/plates_v1/last.pt   (then re-run this script's later stages)
# How the shipped run differed from this script (it was trained across sessions while the pool was
# being rendered): weights/MODEL_CARD.md, "Recipe".
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python

$PY -m training.prepare_data   # real splits under data_cache/real (symlinks into ../shared)

# the synthetic pool: seven sets, 17,982 images (docs/DATA.md lists generator version and options of each);
# columns: name, images, seed, real-plate-swap share, class weights, [close-up share of cards and labels]
render() {
  while read -r name n seed real weights closeup; do
    [ -f "data_cache/synth/$name/manifest.json" ] && continue
    nice -n 19 $PY -m training.synth.generate --out "data_cache/synth/$name" --n "$n" --seed "$seed" \
      --workers 2 --real-fraction "$real" --class-weights "$weights" --closeup "${closeup:-0.3}"
  done
}
render <<'SETS'
v1 2500 1 0 0.4,0.3,0.3
v2 3000 2 0.2 0.4,0.3,0.3
v3 1482 3 0.15 0.4,0.3,0.3
v4 3000 4 0.1 0.3,0.35,0.35
v5 3000 5 0.1 0.3,0.35,0.35
v6 2000 6 0.1 0.3,0.35,0.35
v7 3000 7 0.1 0.3,0.35,0.35
SETS

# stage 1: epochs 1-7 of a cosine schedule over 8 epochs
nice -n 19 $PY -m training.train --config training/configs/plates_v1.json --stop-after-epoch 7
# stage 2: the schedule extended to 20 epochs (a warm restart of the learning rate): epochs 8-9
nice -n 19 $PY -m training.train --resume runs/plates_v1/last.pt --epochs 20 --stop-after-epoch 9
# stage 3: epoch 10 with the objectness target 0.5 + 0.5 * IoU instead of IoU (--loss-gr 0.5; kept from here on)
nice -n 19 $PY -m training.train --resume runs/plates_v1/last.pt --epochs 20 --loss-gr 0.5 --stop-after-epoch 10
# stage 4: the schedule extended to 22 epochs: epoch 11
nice -n 19 $PY -m training.train --resume runs/plates_v1/last.pt --epochs 22 --stop-after-epoch 11
# stage 5: epochs 12-22 with more synthetic samples (ID cards and labels have no real training data)
nice -n 19 $PY -m training.train --resume runs/plates_v1/last.pt --epochs 22 \
  --source-weight uc3m_train=0.3 --source-weight synth=0.7 --stop-after-epoch 22
# an eighth set, 2,000 images with twice the close-ups of cards and labels (joins the pool for stage 6)
render <<'SETS'
v8 2000 8 0.1 0.2,0.4,0.4 0.6
SETS
# stage 6: the schedule extended to 38 epochs, objectness target 0.75 + 0.25 * IoU, mosaic on half of the
# samples (a whole frame-filling card or label is seen again: mosaic crops cut them), v8's close-ups
nice -n 19 $PY -m training.train --resume runs/plates_v1/last.pt --epochs 38 --loss-gr 0.25 --aug mosaic=0.5
# stage 7: the schedule extended to 52 epochs, objectness target 1 for every matched anchor (--loss-gr 0);
# epochs 46-52 are kept and their EMA weights averaged (the label and ID scores wobble from epoch to epoch)
nice -n 19 $PY -m training.train --resume runs/plates_v1/last.pt --epochs 52 --loss-gr 0 --stop-after-epoch 45
for e in 46 47 48 49 50 51 52; do
  nice -n 19 $PY -m training.train --resume runs/plates_v1/last.pt --stop-after-epoch "$e"
  cp runs/plates_v1/last.pt "runs/plates_v1/epoch$e.pt"
done
$PY -m training.average --weights runs/plates_v1/epoch{46,47,48,49,50,51,52}.pt --out runs/plates_v1/avg46_52.pt

$PY -m training.export --weights runs/plates_v1/avg46_52.pt --out weights/detector.onnx --imgsz 416
