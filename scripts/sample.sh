#!/usr/bin/env bash
# Set up .venv (see scripts/setup.sh) and run the whole rsflow pipeline on the bundled sample data:
# ingest imagery, ingest geo-located text, train the flow, evaluate it against its baselines, and
# ask a real RSVQA question about a real image that the flow did not train on.
#
# The models are tiny and have random weights, because real checkpoints cannot be bundled. Every
# step runs on real imagery and real text, but the answers carry no meaning. Output goes to
# sample-output/ (models, store, evaluation); a rerun starts a new store.
set -euo pipefail

cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
OUT=sample-output
STORE="$OUT/store"
RSFLOW=.venv/bin/rsflow
DATA=examples/data/imagery
RSVQA=examples/data/rsvqa_lr
rm -rf "$STORE"

.venv/bin/python examples/make_sample_models.py "$OUT/models"
ENCODER="$OUT/models/encoder"
LLM="$OUT/models/llm"

echo "== 1. ingest imagery: GeoTIFF, COG, JPEG, PNG, in UTM, EPSG:4326 and EPSG:3857 =="
"$RSFLOW" ingest "$DATA/rsvqa_lr" "$DATA/rsvqa_hr" "$DATA/landsat" "$DATA/cog" "$DATA/ucmerced" "$DATA/rsicd" \
    --store "$STORE" --encoder "$ENCODER"
# Sentinel-2 has 13 bands: red, green and blue are bands 4, 3 and 2, reflectance 0 to 10000.
"$RSFLOW" ingest "$DATA/eurosat_ms" --store "$STORE" --bands 4,3,2 --value-range 0,10000
# A single-band scene, repeated into the encoder's three channels.
"$RSFLOW" ingest "$DATA/ljubljana/import-tiff-test1.tiff" --store "$STORE" --bands 1,1,1
# RSVQA low-resolution images 0 to 15, placed on the map by the dataset's images JSON. Images 16
# to 19 are held out: the question at the end is about image 19.
"$RSFLOW" ingest "$RSVQA"/images/{0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15}.png --rsvqa "$RSVQA" \
    --store "$STORE" --chip-size 128

echo "== 2. ingest geo-located text as LLM token-embedding priors, paired with chips by place =="
"$RSFLOW" ingest-text "$RSVQA" --rsvqa-images 0-15 --store "$STORE" --llm "$LLM" --prefix-slots 8
"$RSFLOW" ingest-text examples/texts/points.jsonl examples/texts/areas.csv "$DATA/eurosat_ms" \
    "$DATA/rsicd/stadium_1_captions.jsonl" --store "$STORE"
"$RSFLOW" ingest-text "$DATA/ljubljana/TestEOPatch_LULC.gpkg" --text-field LULC_NAME --store "$STORE" \
    || echo "(some land-use polygons have no name; they are reported above and skipped)"
"$RSFLOW" info --store "$STORE"

echo "== 3. train the flow from image embeddings to LLM prefix vectors =="
"$RSFLOW" train --store "$STORE" --epochs 3 --transforms 4

echo "== 4. evaluate on the held-out cells, beside the ridge map and nearest-neighbour baselines =="
"$RSFLOW" evaluate --store "$STORE" --output "$OUT/evaluation.md"

echo "== 5. ask a real RSVQA question about image 19, which the flow never saw =="
echo "(the benchmark's answer is: yes)"
"$RSFLOW" ask "$RSVQA/images/19.png" "Is there a water area?" --rsvqa "$RSVQA" --store "$STORE" --chip-size 128
echo
echo "The models above are tiny and untrained, so the answer is noise. With real checkpoints:"
echo "  rsflow ingest IMAGES --store my-store --encoder facebook/vit-mae-large"
echo "  rsflow ingest-text TEXTS --store my-store --llm meta-llama/Llama-2-7b-chat-hf"
