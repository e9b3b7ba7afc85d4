"""Tests of the geo-located text readers on the bundled examples and on hand-made bad files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyogrio
import pytest
import rasterio
import shapely
from rasterio.warp import transform_bounds, transform_geom

from rsflow.rsvqa import load_rsvqa
from rsflow.texts import (
    KINDS,
    TextSourceError,
    detect_text_layout,
    question_answer_text,
    read_texts,
    split_class_name,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "texts"
IMAGERY = REPO / "examples" / "data" / "imagery"
LULC = IMAGERY / "ljubljana" / "TestEOPatch_LULC.gpkg"
TINY = REPO / "tests" / "data" / "rsvqa_tiny"


def _scene_footprint(name: str) -> shapely.Polygon:
    with rasterio.open(IMAGERY / name) as src:
        return shapely.box(*transform_bounds(src.crs, "EPSG:4326", *src.bounds))


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_read_points_inside_their_scenes():
    result = read_texts(EXAMPLES / "points.jsonl")

    assert result.accepted == 17
    assert result.rejected == []
    for record in result:
        point = shapely.from_wkb(record.geometry)
        assert point.geom_type == "Point"
        assert _scene_footprint(record.attributes["image"]).contains(point), record.text
        assert record.kind == "map feature"
        assert record.image_ref is None
        assert record.source == str(EXAMPLES / "points.jsonl")
    assert [r.line for r in result] == list(range(1, 18))


def test_read_csv_polygons_overlap_scenes():
    result = read_texts(EXAMPLES / "areas.csv")

    assert result.accepted == 4
    for record in result:
        polygon = shapely.from_wkb(record.geometry)
        assert polygon.geom_type == "Polygon"
        assert _scene_footprint(record.attributes["image"]).intersects(polygon)
    assert [r.line for r in result] == [2, 3, 4, 5]
    assert result.records[0].text == "open water of a lake"


def test_read_geojson_subset():
    result = read_texts(EXAMPLES / "ljubljana_lulc.geojson", text_field="LULC_NAME")

    assert result.accepted == 17
    assert {r.text for r in result} <= {"grassland", "schrubland", "forest", "artificial surface", "cultivated land"}
    scene = _scene_footprint("ljubljana/import-tiff-test2.tiff")
    for record in result:
        assert shapely.from_wkb(record.geometry).intersects(scene)
        assert record.attributes["LULC_NAME"] == record.text


def test_read_gpkg_reprojects_to_4326():
    result = read_texts(LULC, text_field="LULC_NAME", kind="label")

    assert result.rows == 88
    assert result.accepted == 84
    assert [r.line for r in result.rejected] == [16, 40, 41, 46]
    assert all(r.reason == "empty text" for r in result.rejected)
    assert all(r.kind == "label" for r in result)

    meta, table = pyogrio.read_arrow(LULC)
    first = shapely.from_wkb(table.column(meta["geometry_name"])[0].as_py())
    expected = shapely.geometry.shape(transform_geom("EPSG:32633", "EPSG:4326", shapely.geometry.mapping(first)))
    got = shapely.from_wkb(result.records[0].geometry)
    assert got.equals_exact(expected, tolerance=1e-9)
    assert 14.5 < got.centroid.x < 14.6
    assert 45.8 < got.centroid.y < 45.9


def test_read_gpkg_text_fields():
    result = read_texts(LULC, text_fields=["LULC_NAME", "LULC_ID"])

    assert result.records[0].text == "LULC_NAME=grassland; LULC_ID=3"
    assert result.accepted == 88


def test_read_osm_tags_text_fields(tmp_path):
    features = [
        {"type": "Feature", "properties": {"landuse": "farmland", "crop": "maize"},
         "geometry": {"type": "Point", "coordinates": [5.08, 51.66]}},
        {"type": "Feature", "properties": {"landuse": "forest", "crop": None},
         "geometry": {"type": "Point", "coordinates": [5.09, 51.67]}},
        {"type": "Feature", "properties": {"landuse": None, "crop": None},
         "geometry": {"type": "Point", "coordinates": [5.10, 51.68]}},
    ]
    path = _write(tmp_path / "osm.geojson", json.dumps({"type": "FeatureCollection", "features": features}))

    result = read_texts(path, text_fields=["landuse", "crop"])

    assert [r.text for r in result] == ["landuse=farmland; crop=maize", "landuse=forest"]
    assert len(result.rejected) == 1
    assert result.rejected[0].line == 3
    assert "empty text" in result.rejected[0].reason


def test_read_features_missing_field_names_fields():
    with pytest.raises(TextSourceError, match="LULC_NAME"):
        read_texts(LULC, text_field="name")
    with pytest.raises(TextSourceError, match="LULC_NAME"):
        read_texts(LULC)


def test_read_features_invalid_geometry_repaired(tmp_path):
    bow_tie = [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]
    features = [
        {"type": "Feature", "properties": {"name": "bow tie"}, "geometry": {"type": "Polygon", "coordinates": bow_tie}},
        {"type": "Feature", "properties": {"name": "no geometry"}, "geometry": None},
    ]
    path = _write(tmp_path / "bad.geojson", json.dumps({"type": "FeatureCollection", "features": features}))

    result = read_texts(path, text_field="name")

    assert result.accepted == 1
    assert shapely.from_wkb(result.records[0].geometry).is_valid
    assert result.repaired[0].line == 1
    assert "Self-intersection" in result.repaired[0].reason
    assert result.rejected[0].line == 2
    assert result.rejected[0].reason == "feature has no geometry"


BAD_ROW_REASONS = {
    2: "malformed JSON line",
    3: "missing coordinates",
    4: "lat/lon swapped?",
    5: "lon 200 is beyond ±180",
    6: "empty text",
    7: "invalid lat 'north'",
    9: "empty geometry",
    10: "invalid WKT",
}


def test_read_bad_rows_example():
    path = EXAMPLES / "bad_rows.jsonl"
    result = read_texts(path)

    assert result.rows == 10
    assert [r.line for r in result] == [1, 8]
    assert {r.line: r.reason for r in result.rejected}.keys() == BAD_ROW_REASONS.keys()
    for rejection in result.rejected:
        assert BAD_ROW_REASONS[rejection.line] in rejection.reason
        assert rejection.source == str(path)
        assert str(rejection).startswith(f"{path}:{rejection.line}: ")
    assert [r.line for r in result.repaired] == [8]
    assert "repaired with make_valid" in result.repaired[0].reason


def test_read_csv_malformed_rows(tmp_path):
    path = _write(
        tmp_path / "rows.csv",
        "text,lon,lat\n"
        "good row,5.08,51.66\n"
        "too many,5.08,51.66,extra\n"
        "too few,5.08\n"
        '"bad"quote,5.08,51.66\n'
        "swapped,100,128.5\n"
        "not a number,five,51.66\n"
        "last good row,5.09,51.67\n",
    )

    result = read_texts(path)

    assert [r.text for r in result] == ["good row", "last good row"]
    reasons = {r.line: r.reason for r in result.rejected}
    assert "4 fields, the header has 3" in reasons[3]
    assert "2 fields, the header has 3" in reasons[4]
    assert "malformed CSV row" in reasons[5]
    assert "lat/lon swapped?" not in reasons[6]
    assert "lat 128.5 is beyond ±90" in reasons[6]
    assert "invalid lon 'five'" in reasons[7]
    assert result.rows == 7


def test_read_csv_swapped_hint(tmp_path):
    path = _write(tmp_path / "rows.csv", "text,lon,lat\nswapped,51.66,5.08\nswapped south,-33.9,151.2\n")

    result = read_texts(path)

    assert result.accepted == 1
    assert result.rejected[0].line == 3
    assert result.rejected[0].reason == "coordinates out of range: lat 151.2 is beyond ±90; lat/lon swapped?"


def test_read_csv_with_bom_and_wkt(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufefftext,wkt\nfield,\"POINT (5.08 51.66)\"\n".encode("utf-8"))

    result = read_texts(path)

    assert result.records[0].text == "field"
    assert shapely.from_wkb(result.records[0].geometry).equals(shapely.Point(5.08, 51.66))


def test_read_csv_header_missing_columns(tmp_path):
    path = _write(tmp_path / "rows.csv", "caption,x,y\nfield,5,51\n")

    with pytest.raises(TextSourceError, match="text, lon and lat, or wkt"):
        read_texts(path)


def test_read_wkt_out_of_range_and_nan(tmp_path):
    rows = [
        {"text": "far east", "wkt": "POLYGON ((179 0, 181 0, 181 1, 179 1, 179 0))"},
        {"text": "nan", "lon": float("nan"), "lat": 1.0},
    ]
    path = _write(tmp_path / "rows.jsonl", "\n".join(json.dumps(row) for row in rows) + "\n")

    result = read_texts(path)

    assert result.accepted == 0
    assert "lon 181 is beyond ±180" in result.rejected[0].reason
    assert "not a finite number" in result.rejected[1].reason


def test_read_not_utf8_names_offset(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "ok", "lon": 1, "lat": 2}\n{"text": "caf\xe9", "lon": 1, "lat": 2}\n')

    with pytest.raises(TextSourceError, match=r"latin1.jsonl is not UTF-8: byte 0xe9 at byte offset 48 \(line 2\)"):
        read_texts(path)


def test_read_missing_file():
    with pytest.raises(FileNotFoundError, match="no-such.jsonl"):
        read_texts(EXAMPLES / "no-such.jsonl")


def test_read_kind_rules(tmp_path):
    rows = [
        {"text": "a", "lon": 1, "lat": 2, "kind": "caption"},
        {"text": "b", "lon": 1, "lat": 2},
        {"text": "c", "lon": 1, "lat": 2, "kind": "poem"},
    ]
    path = _write(tmp_path / "rows.jsonl", "\n".join(json.dumps(row) for row in rows))

    result = read_texts(path)
    forced = read_texts(path, kind="label")

    assert [r.kind for r in result] == ["caption", "map feature"]
    assert "unknown kind 'poem'" in result.rejected[0].reason
    assert [r.kind for r in forced] == ["label", "label", "label"]
    with pytest.raises(ValueError, match="unknown text kind"):
        read_texts(path, kind="poem")


def test_read_attributes_keep_other_fields(tmp_path):
    path = _write(tmp_path / "rows.jsonl", json.dumps({"note": "n1", "text": "a", "lon": 1, "lat": 2, "id": 7}))

    record = read_texts(path).records[0]

    assert record.attributes == {"note": "n1", "id": 7}


def test_read_captions_jsonl_example():
    path = IMAGERY / "rsicd" / "stadium_1_captions.jsonl"
    result = read_texts(path)

    assert result.rows == 5
    assert result.duplicates == 1
    assert result.accepted == 4
    for record in result:
        assert record.kind == "caption"
        assert record.geometry is None
        assert record.image_ref == str(IMAGERY / "rsicd" / "stadium_1.jpg")


def test_read_rsicd_json(tmp_path):
    (tmp_path / "RSICD_images").mkdir()
    shutil.copy(IMAGERY / "rsicd" / "stadium_1.jpg", tmp_path / "RSICD_images" / "stadium_1.jpg")
    payload = {
        "images": [
            {"filename": "stadium_1.jpg", "imgid": 0, "split": "train",
             "sentences": [{"raw": "a stadium with a baseball field ."}, {"raw": "  "}]},
            {"filename": "airport_9.jpg", "imgid": 1, "sentences": [{"raw": "an airport ."}]},
            {"imgid": 2, "sentences": [{"raw": "no file name"}]},
        ]
    }
    path = _write(tmp_path / "dataset_rsicd.json", json.dumps(payload))

    result = read_texts(path)

    assert [(r.text, r.line) for r in result] == [("a stadium with a baseball field .", 1), ("an airport .", 2)]
    assert result.records[0].image_ref == str(tmp_path / "RSICD_images" / "stadium_1.jpg")
    assert result.records[0].attributes == {"imgid": 0, "split": "train", "sentence_index": 0}
    assert result.records[1].image_ref == "airport_9.jpg"
    assert [r.line for r in result.rejected] == [1, 3]


def test_read_rsvqa_release_split():
    result = read_texts(TINY, split="test")
    dataset = load_rsvqa(TINY, "test")

    assert result.accepted == 12
    record = result.records[2]
    assert record.text == "Is there a water area? no"
    assert record.kind == "question-answer"
    assert record.attributes == {"type": "presence", "answer": "no", "question_id": 5, "image_id": 1}
    assert record.geometry == dataset.images[1].footprint
    assert record.image_ref == str(TINY / "Images_LR" / "1.tif")
    assert record.source == str(TINY / "LR_split_test_questions.json")


def test_read_rsvqa_release_needs_split():
    with pytest.raises(ValueError, match="name the split"):
        read_texts(TINY)


def test_read_rsvqa_website():
    result = read_texts(REPO / "examples" / "data" / "rsvqa_lr")

    assert result.accepted == 2002
    assert result.records[0].text == "Is it a rural or an urban area? rural"
    assert result.records[0].image_ref.endswith("images/0.png")
    assert all(r.geometry is not None for r in result)


def test_question_answer_text():
    assert question_answer_text("Is there a road?", "yes") == "Is there a road? yes"
    assert question_answer_text("Is it a rural or an urban area", "rural") == "Is it a rural or an urban area? rural"


def test_read_class_folders():
    result = read_texts(IMAGERY / "eurosat_ms")

    assert [(r.text, Path(r.image_ref).name) for r in result] == [
        ("annual crop", "AnnualCrop_1.tif"),
        ("pasture", "Pasture_300.tif"),
    ]
    assert all(r.kind == "label" and r.geometry is None for r in result)
    assert result.records[0].attributes == {"class": "AnnualCrop"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("AnnualCrop", "annual crop"),
        ("HerbaceousVegetation", "herbaceous vegetation"),
        ("SeaLake", "sea lake"),
        ("storage_tanks", "storage tanks"),
        ("RGBImage", "rgb image"),
        ("airplane", "airplane"),
        ("baseballdiamond", "baseballdiamond"),
    ],
)
def test_split_class_name_cases(name, expected):
    assert split_class_name(name) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (EXAMPLES / "points.jsonl", "jsonl"),
        (EXAMPLES / "areas.csv", "csv"),
        (EXAMPLES / "ljubljana_lulc.geojson", "features"),
        (LULC, "features"),
        (IMAGERY / "rsicd" / "stadium_1_captions.jsonl", "captions-jsonl"),
        (TINY, "rsvqa"),
        (IMAGERY / "ucmerced", "class-folders"),
    ],
)
def test_detect_text_layout_cases(path, expected):
    assert detect_text_layout(path) == expected


def test_detect_text_layout_unknown(tmp_path):
    with pytest.raises(TextSourceError, match="pass layout="):
        detect_text_layout(_write(tmp_path / "notes.txt", "hello"))
    with pytest.raises(TextSourceError, match="neither GeoJSON nor an RSICD"):
        detect_text_layout(_write(tmp_path / "other.json", "{}"))


def test_kinds_constant():
    assert KINDS == ("caption", "label", "question-answer", "map feature")
