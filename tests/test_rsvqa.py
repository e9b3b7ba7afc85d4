"""Tests of the RSVQA reader, answer normalization and scoring, on the tiny release fixture."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import rasterio
import shapely
from rasterio.warp import transform, transform_bounds

from rsflow.raster import Georef
from rsflow.rsvqa import (
    AREA_BINS,
    COUNT_BINS,
    footprint_wkb,
    image_georefs,
    load_rsvqa,
    map_free_answer,
    mercator_pixel_size,
    normalize_answer,
    score,
)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "rsvqa_tiny"
TINY_HR = TINY / "hr"
WEBSITE_LR = REPO / "examples" / "data" / "rsvqa_lr"
RELEASE_LR_52 = REPO / "examples" / "data" / "imagery" / "rsvqa_lr" / "52.tif"


def test_load_release_test_split():
    dataset = load_rsvqa(TINY, "test")

    assert dataset.dataset == "LR"
    assert dataset.layout == "release"
    assert dataset.split == "test"
    assert [q.id for q in dataset.questions] == list(range(3, 15))
    assert sorted(dataset.images) == [1, 2]
    assert {q.type for q in dataset.questions} == {"rural_urban", "presence", "count", "comp"}
    first = dataset.questions[0]
    assert first.image_id == 1
    assert first.type == "rural_urban"
    assert first.question == "Is it a rural or an urban area"
    assert first.answer == "urban"


def test_load_split_membership_by_active():
    train = load_rsvqa(TINY, "train")

    assert [q.id for q in train.questions] == [0, 1, 2]
    assert list(train.images) == [0]


def test_georef_matches_release_geotiff():
    dataset = load_rsvqa(TINY, "test")

    for image in dataset.images.values():
        with rasterio.open(image.path) as src:
            georef = image.georef()
            assert isinstance(georef, Georef)
            assert georef.crs == "EPSG:3857"
            assert georef.transform.almost_equals(src.transform, precision=1e-6)
            assert (image.width, image.height) == (src.width, src.height)
            expected = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        footprint = shapely.from_wkb(image.footprint)
        assert footprint.bounds == pytest.approx(expected, abs=1e-9)


def test_image_georefs_keys_are_absolute_paths():
    dataset = load_rsvqa(TINY, "test")
    georefs = image_georefs(dataset)

    assert len(georefs) == 2
    for path, georef in georefs.items():
        assert Path(path).is_absolute()
        assert Path(path).is_file()
        assert georef == dataset.images[int(Path(path).stem)].georef()


def test_load_hr_test_phili_split():
    dataset = load_rsvqa(TINY_HR, "test_phili")

    assert dataset.dataset == "HR"
    assert [q.type for q in dataset.questions] == ["presence", "area", "area"]
    image = dataset.images[1]
    assert image.resolution_m == pytest.approx(0.1524)
    assert image.pixel_size == pytest.approx(0.20122693451565615)
    assert image.path == TINY_HR / "Data" / "1.tif"


def test_load_website_layout():
    dataset = load_rsvqa(WEBSITE_LR)

    assert (dataset.layout, dataset.dataset, dataset.split) == ("website", "LR", "reduced")
    assert len(dataset.images) == 20
    assert len(dataset.questions) == 2002
    image = dataset.images[0]
    assert image.path == WEBSITE_LR / "images" / "0.png"
    assert (image.width, image.height) == (256, 256)
    assert image.original_name == "419.png"


def test_website_pixel_size_close_to_release():
    # Website image 15 has the easting of the release tile 52.tif, seven tiles further south.
    # The Mercator estimate must be within 0.5 % of that tile's pixel size.
    dataset = load_rsvqa(WEBSITE_LR)
    image = dataset.images[15]
    with rasterio.open(RELEASE_LR_52) as src:
        release_size = src.transform.a
        assert image.upper_left[0] == pytest.approx(src.transform.c)

    assert image.pixel_size == pytest.approx(release_size, rel=5e-3)


def test_mercator_pixel_size_equator_and_60_degrees():
    _, ys = transform("EPSG:4326", "EPSG:3857", [0.0], [60.0])

    assert mercator_pixel_size(10.0, 0.0) == pytest.approx(10.0)
    assert mercator_pixel_size(10.0, ys[0]) == pytest.approx(20.0, rel=1e-9)


def test_footprint_wkb_is_lonlat_box():
    footprint = shapely.from_wkb(footprint_wkb((0.0, 0.0), 10.0, 100, 100))

    west, south, east, north = footprint.bounds
    assert west == pytest.approx(0.0)
    assert north == pytest.approx(0.0)
    assert east == pytest.approx(1000 / 6378137.0 * 180 / 3.141592653589793, rel=1e-9)
    assert south < 0


def _copy_fixture(tmp_path: Path) -> Path:
    root = tmp_path / "lr"
    shutil.copytree(TINY, root, ignore=shutil.ignore_patterns("*.py", "hr"))
    return root


def _flag_only(path: Path, key: str) -> list[dict]:
    records = json.loads(path.read_text())[key]
    path.write_text(json.dumps({key: [{"id": r["id"], "active": r["active"]} for r in records]}))
    return records


def test_load_flag_only_split_uses_all_files(tmp_path):
    root = _copy_fixture(tmp_path)
    questions = _flag_only(root / "LR_split_test_questions.json", "questions")
    answers = _flag_only(root / "LR_split_test_answers.json", "answers")
    (root / "all_questions.json").write_text(json.dumps({"questions": questions}))
    (root / "all_answers.json").write_text(json.dumps({"answers": answers}))

    dataset = load_rsvqa(root, "test")

    assert dataset.questions == load_rsvqa(TINY, "test").questions


def test_load_flag_only_without_all_questions(tmp_path):
    root = _copy_fixture(tmp_path)
    _flag_only(root / "LR_split_test_questions.json", "questions")

    with pytest.raises(FileNotFoundError, match="all_questions.json"):
        load_rsvqa(root, "test")


def test_load_missing_image_uses_tile_size(tmp_path, caplog):
    root = _copy_fixture(tmp_path)
    (root / "Images_LR" / "1.tif").unlink()

    with caplog.at_level(logging.WARNING, logger="rsflow.rsvqa"):
        dataset = load_rsvqa(root, "test")

    image = dataset.images[1]
    assert (image.width, image.height) == (256, 256)
    assert image.pixel_size == pytest.approx(mercator_pixel_size(10.0, image.upper_left[1]))
    assert "is missing" in caplog.text


def test_load_errors():
    with pytest.raises(ValueError, match="splits train, test"):
        load_rsvqa(TINY, "val")
    with pytest.raises(ValueError, match="name the split"):
        load_rsvqa(TINY)
    with pytest.raises(ValueError, match="contains no RSVQA JSON files"):
        load_rsvqa(REPO / "examples" / "data" / "imagery")
    with pytest.raises(FileNotFoundError):
        load_rsvqa(REPO / "no-such-folder")


def test_load_invalid_json_names_file(tmp_path):
    root = _copy_fixture(tmp_path)
    (root / "LR_split_test_answers.json").write_text("{not json")

    with pytest.raises(ValueError, match="LR_split_test_answers.json"):
        load_rsvqa(root, "test")


def test_georef_without_corner_raises(tmp_path):
    root = _copy_fixture(tmp_path)
    path = root / "LR_split_test_images.json"
    images = json.loads(path.read_text())
    del images["images"][1]["upperleft_map_x"]
    path.write_text(json.dumps(images))

    dataset = load_rsvqa(root, "test")

    assert dataset.images[1].footprint is None
    with pytest.raises(ValueError, match="no upper-left corner"):
        dataset.images[1].georef()
    assert len(image_georefs(dataset)) == 1


NORMALIZE_CASES = [
    ("Yes", "presence", "LR", False, "yes"),
    (" no. ", "comp", "LR", False, "no"),
    ("Urban", "rural_urban", "LR", False, "urban"),
    ("007", "count", "LR", False, "7"),
    ("0", "count", "LR", True, "0"),
    ("1", "count", "LR", True, "between 0 and 10"),
    ("10", "count", "LR", True, "between 0 and 10"),
    ("11", "count", "LR", True, "between 10 and 100"),
    ("100", "count", "HR", True, "between 10 and 100"),
    ("101", "count", "HR", True, "between 100 and 1000"),
    ("1000", "count", "HR", True, "between 100 and 1000"),
    ("1001", "count", "HR", True, "more than 1000"),
    ("between 10 and 100", "count", "LR", True, "between 10 and 100"),
    ("many", "count", "LR", False, "many"),
    ("0m2", "area", "HR", False, "0m2"),
    ("5m2", "area", "HR", False, "between 0m2 and 10m2"),
    ("10m2", "area", "HR", False, "between 0m2 and 10m2"),
    ("11m2", "area", "HR", False, "between 10m2 and 100m2"),
    ("636m2", "area", "HR", False, "between 100m2 and 1000m2"),
    ("10632m2", "area", "HR", False, "more than 1000m2"),
    ("10632 m2", "area", "HR", False, "more than 1000m2"),
    ("more than 1000m2", "area", "HR", False, "more than 1000m2"),
]


@pytest.mark.parametrize(("answer", "question_type", "dataset", "count_bins", "expected"), NORMALIZE_CASES)
def test_normalize_answer_cases(answer, question_type, dataset, count_bins, expected):
    assert normalize_answer(answer, question_type, dataset, count_bins=count_bins) == expected


def test_normalize_answer_bins_are_authors_labels():
    assert COUNT_BINS == (
        "0", "between 0 and 10", "between 10 and 100", "between 100 and 1000", "more than 1000"
    )
    assert AREA_BINS[-1] == "more than 1000m2"


def test_normalize_answer_rejects_unknown_type():
    with pytest.raises(ValueError, match="area"):
        normalize_answer("5m2", "area", "LR")
    with pytest.raises(ValueError, match="'LR' or 'HR'"):
        normalize_answer("yes", "presence", "MR")


FREE_ANSWER_CASES = [
    ("Yes, there is a water area.", "presence", "yes"),
    ("No. The image shows only fields.", "presence", "no"),
    ("I cannot tell.", "presence", ""),
    ("It is not known", "comp", ""),
    ("The answer is yes", "comp", "yes"),
    ("This is an urban area with dense buildings.", "rural_urban", "urban"),
    ("Mostly rural farmland", "rural_urban", "rural"),
    ("There are 12 roads.", "count", "12"),
    ("About 1,200 buildings", "count", "1200"),
    ("I count twenty-three buildings", "count", "23"),
    ("one hundred and five", "count", "105"),
    ("a hundred", "count", "100"),
    ("There are no water areas.", "count", "0"),
    ("between 10 and 100", "count", "between 10 and 100"),
    ("cannot say", "count", ""),
    ("The residential area covers 636 m2.", "area", "636m2"),
    ("About 2.5 km2", "area", "2500000m2"),
    ("1.2 hectares", "area", "12000m2"),
    ("approximately 100m2", "area", "100m2"),
    ("There is none.", "area", "0m2"),
    ("between 10m2 and 100m2", "area", "between 10m2 and 100m2"),
]


@pytest.mark.parametrize(("generated", "question_type", "expected"), FREE_ANSWER_CASES)
def test_map_free_answer_cases(generated, question_type, expected):
    assert map_free_answer(generated, question_type) == expected


def test_map_free_answer_unknown_type():
    with pytest.raises(ValueError, match="question type"):
        map_free_answer("yes", "color")


# Predictions for the twelve test questions of the fixture, in question order (ids 3 to 14).
PREDICTIONS = ["urban", "Yes.", "yes", "14", "3", "yes", "urban", "yes", "no", "2", "1500", "yes"]


def test_score_exact_counts_by_hand():
    dataset = load_rsvqa(TINY, "test")
    references = [q.answer for q in dataset.questions]
    types = [q.type for q in dataset.questions]

    result = score(PREDICTIONS, references, types)

    # rural_urban 1/2, presence 3/4, count 1/4 (only 14), comp 2/2
    assert result["per_type"]["rural_urban"] == {"accuracy": 0.5, "correct": 1, "total": 2}
    assert result["per_type"]["presence"] == {"accuracy": 0.75, "correct": 3, "total": 4}
    assert result["per_type"]["count"] == {"accuracy": 0.25, "correct": 1, "total": 4}
    assert result["per_type"]["comp"] == {"accuracy": 1.0, "correct": 2, "total": 2}
    assert result["average_accuracy"] == pytest.approx((0.5 + 0.75 + 0.25 + 1.0) / 4)
    assert result["overall_accuracy"] == pytest.approx(7 / 12)
    assert (result["correct"], result["total"]) == (7, 12)
    assert list(result["per_type"]) == ["rural_urban", "presence", "count", "comp"]


def test_score_count_bins_by_hand():
    dataset = load_rsvqa(TINY, "test")
    references = [q.answer for q in dataset.questions]
    types = [q.type for q in dataset.questions]

    result = score(PREDICTIONS, references, types, count_bins=True)

    # 14 vs 14, 2 vs 1 and 1500 vs 1203 share a bin; 3 vs 0 does not
    assert result["per_type"]["count"]["accuracy"] == 0.75
    assert result["average_accuracy"] == pytest.approx((0.5 + 0.75 + 0.75 + 1.0) / 4)
    assert result["overall_accuracy"] == pytest.approx(9 / 12)


def test_score_hr_area_by_hand():
    predictions = ["636m2", "between 0m2 and 10m2", "5000m2", "yes"]
    references = ["636m2", "0m2", "10632m2", "no"]
    types = ["area", "area", "area", "presence"]

    result = score(predictions, references, types, dataset="HR")

    assert result["per_type"]["area"]["accuracy"] == pytest.approx(2 / 3)
    assert result["per_type"]["presence"]["accuracy"] == 0.0
    assert result["average_accuracy"] == pytest.approx(1 / 3)
    assert result["overall_accuracy"] == pytest.approx(2 / 4)


def test_score_free_answers_after_mapping():
    generated = ["It looks urban.", "There are fourteen roads.", "No, I see none."]
    types = ["rural_urban", "count", "presence"]
    mapped = [map_free_answer(text, t) for text, t in zip(generated, types)]

    result = score(mapped, ["urban", "14", "yes"], types)

    assert mapped == ["urban", "14", "no"]
    assert result["overall_accuracy"] == pytest.approx(2 / 3)


def test_score_input_errors():
    with pytest.raises(ValueError, match="same length"):
        score(["yes"], ["yes", "no"], ["presence"])
    with pytest.raises(ValueError, match="empty"):
        score([], [], [])
