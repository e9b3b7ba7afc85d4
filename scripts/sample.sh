#!/usr/bin/env bash
# Set up .venv (see scripts/setup.sh) and run rsflow on the bundled sample imagery.
#
# The models are tiny and have random weights (real checkpoints cannot be bundled), so the
# embeddings carry no meaning; the run shows every step on real imagery. Output goes to
# sample-output/ (store, models); rerunning it reuses what is there.
set -euo pipefail

cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
OUT=sample-output
STORE="$OUT/store"
RSFLOW=.venv/bin/rsflow
DATA=examples/data/imagery

.venv/bin/python examples/make_sample_models.py "$OUT/models" > /dev/null
ENCODER="$OUT/models/encoder"

echo "== ingest RGB imagery (GeoTIFF, COG, JPEG, PNG) =="
"$RSFLOW" ingest "$DATA/rsvqa_lr" "$DATA/rsvqa_hr" "$DATA/landsat" "$DATA/cog" "$DATA/ucmerced" "$DATA/rsicd" \
    --store "$STORE" --encoder "$ENCODER"
echo "== ingest Sentinel-2 (13 bands, red-green-blue = bands 4,3,2, reflectance 0-10000) =="
"$RSFLOW" ingest "$DATA/eurosat_ms" --store "$STORE" --bands 4,3,2 --value-range 0,10000
echo "== ingest a single-band Landsat-like scene, repeated into three channels =="
"$RSFLOW" ingest "$DATA/ljubljana/import-tiff-test1.tiff" --store "$STORE" --bands 1,1,1
echo "== the store =="
"$RSFLOW" info --store "$STORE"
