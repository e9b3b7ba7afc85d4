"""Write the tiny RSVQA fixture in the published release layout.

Run from anywhere: ``python tests/data/rsvqa_tiny/make_rsvqa_tiny.py``. It rewrites this folder:

- RSVQA-LR: ``LR_split_{train,test}_{images,questions,answers}.json`` and ``Images_LR/<id>.tif``
  (three 32 x 32 windows cut from the bundled RSVQA-LR release GeoTIFFs, EPSG:3857).
- RSVQA-HR in ``hr/``: ``USGS_split_{test,test_phili}_{...}.json`` and ``hr/Data/<id>.tif``
  (two 64 x 64 windows cut from the bundled RSVQA-HR release GeoTIFF).

The JSON follows the authors' split script (``AutomaticDB/Splits.py`` in
https://github.com/syvlo/RSVQA): every split file lists all image ids, entries outside the split
are ``{"id": i, "active": false}``, and the question and answer lists hold inactive stubs for
the ids before the split's first question. The questions use the data set's own templates; the
answers are fixture values chosen for the tests, not read from OpenStreetMap.
"""

from __future__ import annotations

import json
from pathlib import Path

import rasterio
from rasterio.windows import Window

HERE = Path(__file__).resolve().parent
IMAGERY = HERE.parents[2] / "examples" / "data" / "imagery"

# (source GeoTIFF, window column, window row) for each LR image id.
LR_CUTS = {
    0: ("rsvqa_lr/55.tif", 200, 200),  # fields east of the river
    1: ("rsvqa_lr/52.tif", 100, 110),  # the town in the middle of the tile
    2: ("rsvqa_lr/62.tif", 60, 60),  # the lake
}
LR_SIZE = 32
LR_SPLITS = {"train": [0], "test": [1, 2]}

# (type, question, answer) per LR image id.
LR_QUESTIONS = {
    0: [
        ("rural_urban", "Is it a rural or an urban area", "rural"),
        ("presence", "Is there a farmland?", "yes"),
        ("count", "How many roads are there?", "2"),
    ],
    1: [
        ("rural_urban", "Is it a rural or an urban area", "urban"),
        ("presence", "Is there a residential building?", "yes"),
        ("presence", "Is there a water area?", "no"),
        ("count", "How many roads are there?", "14"),
        ("count", "What is the number of water areas?", "0"),
        ("comp", "Are there more residential buildings than roads?", "yes"),
    ],
    2: [
        ("rural_urban", "Is it a rural or an urban area", "rural"),
        ("presence", "Is there a water area?", "yes"),
        ("presence", "Is there a commercial building?", "no"),
        ("count", "What is the amount of water areas?", "1"),
        ("count", "How many buildings are there in the image?", "1203"),
        ("comp", "Are there less water areas than roads?", "yes"),
    ],
}

HR_CUTS = {0: ("rsvqa_hr/16.tif", 0, 0), 1: ("rsvqa_hr/16.tif", 256, 256)}
HR_SIZE = 64
HR_SPLITS = {"test": [0], "test_phili": [1]}
HR_QUESTIONS = {
    0: [
        ("presence", "Is there a road?", "yes"),
        ("count", "How many buildings are there?", "3"),
        ("area", "What is the area covered by residential buildings?", "636m2"),
        ("comp", "Are there more buildings than roads?", "yes"),
    ],
    1: [
        ("presence", "Is there a water area?", "no"),
        ("area", "What is the area covered by water areas?", "0m2"),
        ("area", "What is the area covered by roads?", "10632m2"),
    ],
}


def cut_image(source: Path, column: int, row: int, size: int, destination: Path) -> rasterio.Affine:
    """Copy a size x size window of `source` to a GeoTIFF and return the window's transform."""
    with rasterio.open(source) as src:
        window = Window(column, row, size, size)
        data = src.read(window=window)
        transform = src.window_transform(window)
        profile = {
            "driver": "GTiff",
            "width": size,
            "height": size,
            "count": src.count,
            "dtype": src.dtypes[0],
            "crs": src.crs,
            "transform": transform,
        }
    destination.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(destination, "w", **profile) as dst:
        dst.write(data)
    return transform


def image_record(
    image_id: int, transform: rasterio.Affine, resolution: str, question_ids: list[int], name: str
) -> dict:
    """Return an images JSON record in the release format."""
    return {
        "id": image_id,
        "date_added": 1579865382.0,
        "original_name": name,
        "sensor": "S2" if resolution == "10m" else "ULTRACAM_EAGLE_FALCON",
        "upperleft_map_x": transform.c,
        "upperleft_map_y": transform.f,
        "res_x": resolution,
        "res_y": resolution,
        "people_id": 0,
        "type": "0",
        "questions_ids": question_ids,
        "active": True,
    }


def build_records(
    questions: dict[int, list[tuple[str, str, str]]],
) -> tuple[list[dict], list[dict], dict[int, list[int]]]:
    """Number every question and answer globally, in image order, as the data set does."""
    question_records, answer_records, ids_by_image = [], [], {}
    for image_id in sorted(questions):
        ids_by_image[image_id] = []
        for question_type, text, answer in questions[image_id]:
            qid = len(question_records)
            ids_by_image[image_id].append(qid)
            question_records.append({
                "id": qid, "date_added": 1579865382.0, "img_id": image_id, "people_id": 0,
                "type": question_type, "question": text, "answers_ids": [qid], "active": True,
            })
            answer_records.append({
                "id": qid, "date_added": 1579865382.0, "question_id": qid, "people_id": 0,
                "answer": answer, "active": True,
            })
    return question_records, answer_records, ids_by_image


def split_list(records: list[dict], member_ids: set[int]) -> list[dict]:
    """Keep the split's records and put inactive stubs before the first one, as Splits.py does."""
    kept = [record for record in records if record["id"] in member_ids]
    first = kept[0]["id"]
    return [{"id": i, "active": False} for i in range(first)] + kept


def write_dataset(folder: Path, prefix: str, image_dir: str, cuts: dict, size: int, resolution: str,
                  questions: dict, splits: dict[str, list[int]]) -> None:
    """Write the images and the split JSON files of one data set."""
    question_records, answer_records, ids_by_image = build_records(questions)
    images = {}
    for image_id, (source, column, row) in cuts.items():
        transform = cut_image(IMAGERY / source, column, row, size, folder / image_dir / f"{image_id}.tif")
        name = f"{Path(source).stem}_{column}-{row}.tif"
        images[image_id] = image_record(image_id, transform, resolution, ids_by_image[image_id], name)

    for split, image_ids in splits.items():
        split_images = [images[i] if i in image_ids else {"id": i, "active": False} for i in sorted(images)]
        question_ids = {qid for i in image_ids for qid in ids_by_image[i]}
        payloads = {
            "images": {"images": split_images},
            "questions": {"questions": split_list(question_records, question_ids)},
            "answers": {"answers": split_list(answer_records, question_ids)},
        }
        for part, payload in payloads.items():
            text = json.dumps(payload, indent=1) + "\n"
            (folder / f"{prefix}{split}_{part}.json").write_text(text, encoding="utf-8")


def main() -> None:
    """Write the LR fixture here and the HR fixture in hr/."""
    write_dataset(HERE, "LR_split_", "Images_LR", LR_CUTS, LR_SIZE, "10m", LR_QUESTIONS, LR_SPLITS)
    write_dataset(HERE / "hr", "USGS_split_", "Data", HR_CUTS, HR_SIZE, ".1524m", HR_QUESTIONS, HR_SPLITS)


if __name__ == "__main__":
    main()
