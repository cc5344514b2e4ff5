#!/usr/bin/env bash
# pptkit's main job on the embedded default: synthesize three scene styles, preprocess them,
# joint-train one model with Point Prompt Training (tiny CPU recipe), and score it per style.
# Usage: scripts/demo.sh [DIR]   (make demo runs it in ./demo; re-running starts afresh)
set -euo pipefail
DIR=${1:-demo}
PPTKIT=${PPTKIT:-.venv/bin/pptkit}
STYLES=(structured3d scannet s3dis)
declare -A SCENES=([structured3d]=24 [scannet]=16 [s3dis]=16)

mkdir -p "$DIR"
for style in "${STYLES[@]}"; do
  echo "== $style: synthesize ${SCENES[$style]} rooms in its native format"
  $PPTKIT synth --style "$style" --out "$DIR/raw/$style" --scenes "${SCENES[$style]}" --seed 0 --overwrite
  for split in train val; do
    echo "== $style: preprocess the $split split"
    $PPTKIT preprocess --dataset "$style" --input "$DIR/raw/$style" --split "$split" \
      --output "$DIR/h5/${style}_${split}.h5" --workers 2 --overwrite
  done
  $PPTKIT info "$DIR/h5/${style}_train.h5"
done

echo "== joint training (recipes/ppt-tiny.toml)"
rm -rf "$DIR/run"
data=()
for style in "${STYLES[@]}"; do data+=(--data "$style=$DIR/h5/${style}_train.h5"); done
# No --val: the evaluation below scores the final model on every original point.
$PPTKIT joint-train --recipe recipes/ppt-tiny.toml "${data[@]}" --out "$DIR/run" --seed 0 --device auto

echo "== evaluation on every original point of each style's validation split"
evaldata=()
for style in "${STYLES[@]}"; do evaldata+=(--data "$style=$DIR/h5/${style}_val.h5"); done
$PPTKIT eval --checkpoint "$DIR/run" "${evaldata[@]}" --export-ply "$DIR/run/eval/ply"
echo "== done: confusion matrices in $DIR/run/eval/confusion_<style>.png, coloured prediction PLYs in $DIR/run/eval/ply/<style>/"
