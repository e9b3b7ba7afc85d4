"""Geo-located text sources: read captions, labels, question-answer pairs and map features.

`read_texts` yields one `TextRecord` per text, with its geometry in EPSG:4326 (WKB) or the image
file it names, and a `Rejection` for every row it could not use. These layouts are read; with
``layout="auto"`` the layout is chosen from the file suffix and, for JSON, the content.

``jsonl``
    One JSON object per line: ``text`` (or the field named by `text_field`), and either ``lon``
    and ``lat`` (EPSG:4326 degrees) or ``wkt`` (EPSG:4326). An optional ``kind`` sets the kind of
    that row. Other fields become the record's attributes. Default kind: "map feature".
``csv``
    The same fields as columns of a CSV file with a header row.
``features``
    GeoJSON, GeoPackage, zipped shapefile or any vector file that GDAL reads (through pyogrio),
    first layer. Geometries are reprojected from the layer's CRS to EPSG:4326; a layer without a
    CRS is taken as EPSG:4326. The text is one property (`text_field`) or several (`text_fields`)
    joined as ``"name=value; name=value"``, for example OpenStreetMap tags
    ``"landuse=farmland; crop=maize"``. Default kind: "map feature".
``rsicd-json``
    The RSICD / UCM-captions JSON: ``{"images": [{"filename": ..., "sentences": [{"raw": ...}]}]}``.
    One caption per sentence; the image is looked up beside the JSON file and in its
    ``RSICD_images/``, ``images/`` or ``imgs/`` folder.
``captions-jsonl``
    The CLIP-rsicd JSONL: one ``{"filename": ..., "captions": [...]}`` object per line. The image
    is looked up under the file name as written, then by its base name, beside the JSONL file.
``rsvqa``
    An RSVQA folder (see `rsflow.rsvqa`). The text of a question-answer pair is the question, with
    "?" appended when it has none, a space, and the answer as written: ``"Is there a water
    area? yes"``. The geometry is the image footprint; `split` selects the split.
``class-folders``
    Imagery sorted into class folders (EuroSAT layout ``ROOT/<ClassName>/<file>.tif``). The folder
    name split into lower-case words ("AnnualCrop" -> "annual crop") is the label of each image.

Caption layouts skip a caption that repeats an earlier caption of the same image word for word
(`TextReadResult.duplicates` counts them), since it would only duplicate a pair.

A row that cannot be used becomes a `Rejection` naming the file, the line, row or feature number
and the problem; reading goes on. A whole file that cannot be read (missing, not UTF-8, not the
expected JSON, a CSV header without the needed columns) raises an error naming the file.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyogrio
import shapely
from rasterio.warp import transform_geom

from rsflow import rsvqa

logger = logging.getLogger(__name__)

KINDS = ("caption", "label", "question-answer", "map feature")
LAYOUTS = ("auto", "jsonl", "csv", "features", "rsicd-json", "captions-jsonl", "rsvqa", "class-folders")
FEATURE_SUFFIXES = (".geojson", ".gpkg", ".shp", ".zip", ".fgb", ".gml", ".kml", ".sqlite")
IMAGE_SUFFIXES = (".tif", ".tiff", ".jpg", ".jpeg", ".png", ".jp2")
_RSICD_IMAGE_DIRS = ("", "RSICD_images", "images", "imgs")


@dataclass(frozen=True)
class TextRecord:
    """One geo-located text.

    `geometry` is WKB in EPSG:4326, or None when only `image_ref` ties the text to a place.
    `image_ref` is the absolute path of the image the text names when that file exists where the
    layout puts it, else the file name as written. `line` is the 1-based line, row or feature
    number in `source`, for messages.
    """

    text: str
    kind: str
    source: str
    geometry: bytes | None
    image_ref: str | None
    line: int | None
    attributes: dict


@dataclass(frozen=True)
class Rejection:
    """A row that was not read, or was read only after a repair: where it is and what is wrong."""

    source: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {self.reason}"


@dataclass
class TextReadResult:
    """The records read from one source, the rows rejected, and counters.

    `repaired` lists rows that were kept after `shapely.make_valid` fixed their geometry. `rows`
    counts the input rows, features, captions, questions or images examined.
    """

    records: list[TextRecord] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    repaired: list[Rejection] = field(default_factory=list)
    rows: int = 0
    duplicates: int = 0

    @property
    def accepted(self) -> int:
        """Number of records read."""
        return len(self.records)

    def __iter__(self) -> Iterator[TextRecord]:
        return iter(self.records)


class TextSourceError(ValueError):
    """A whole text source cannot be read: wrong encoding, layout or columns."""


@dataclass(frozen=True)
class _Options:
    """The `read_texts` arguments that the readers share."""

    text_field: str
    text_fields: tuple[str, ...] | None
    kind: str | None


class _Collector:
    """Accumulates the records and rejections of one source file."""

    def __init__(self, result: TextReadResult, source: Path):
        self.result = result
        self.source = str(source)
        self._seen: set[tuple[str | None, str]] = set()

    def reject(self, line: int | None, reason: str) -> None:
        self.result.rejected.append(Rejection(self.source, line, reason))

    def note_repair(self, line: int | None, reason: str) -> None:
        self.result.repaired.append(Rejection(self.source, line, reason))

    def add(self, record: TextRecord, *, skip_duplicates: bool = False) -> None:
        if skip_duplicates:
            key = (record.image_ref, " ".join(record.text.lower().split()))
            if key in self._seen:
                self.result.duplicates += 1
                return
            self._seen.add(key)
        self.result.records.append(record)


def read_texts(
    path: str | Path,
    *,
    text_field: str | None = None,
    text_fields: Iterable[str] | None = None,
    kind: str | None = None,
    layout: str = "auto",
    split: str | None = None,
    image_ids: Iterable[int] | None = None,
) -> TextReadResult:
    """Read the texts of one source file or folder into `TextRecord`s and `Rejection`s.

    `text_field` names the field holding the text (default "text" for JSONL and CSV; required
    for vector files unless `text_fields` is given). `text_fields` builds the text from several
    fields as "name=value; name=value". `kind` sets the kind of every record (one of `KINDS`),
    and without it each layout sets its own. `layout` is one of `LAYOUTS`. `split` selects the
    RSVQA split. The release layout needs one because reading the test split's answers into a
    store would leak them into evaluation. `image_ids` keeps the RSVQA questions of those images
    only, for example to hold images out of the website subset, which has no splits.
    """
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"text source not found: {path}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown text layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown text kind {kind!r}: expected one of {', '.join(KINDS)}")
    if text_field is not None and text_fields is not None:
        raise ValueError("give text_field or text_fields, not both")

    if layout == "auto":
        layout = detect_text_layout(path)
    options = _Options(text_field or "text", tuple(text_fields) if text_fields is not None else None, kind)
    result = TextReadResult()
    readers = {
        "jsonl": _read_jsonl,
        "csv": _read_csv,
        "features": _read_features,
        "rsicd-json": _read_rsicd_json,
        "captions-jsonl": _read_captions_jsonl,
        "class-folders": _read_class_folders,
    }
    if layout == "rsvqa":
        _read_rsvqa(path, split, options, result, None if image_ids is None else set(image_ids))
    else:
        if split is not None or image_ids is not None:
            raise ValueError(f"split and image_ids apply to the rsvqa layout only, not to {layout}")
        readers[layout](path, options, result)

    logger.info(
        "Read %d texts from %s (%s layout): %d rows, %d rejected, %d repaired, %d duplicates",
        result.accepted, path, layout, result.rows,
        len(result.rejected), len(result.repaired), result.duplicates,
    )
    return result


def detect_text_layout(path: Path) -> str:
    """Choose the layout of `path` from its suffix and, for JSON files, its content."""
    if path.is_dir():
        if rsvqa.is_rsvqa_folder(path):
            return "rsvqa"
        if _class_folders(path):
            return "class-folders"
        raise TextSourceError(
            f"{path} is neither an RSVQA folder nor a folder of class folders with images; "
            "pass layout= to say how to read it"
        )

    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _detect_jsonl_layout(path)
    if suffix == ".csv":
        return "csv"
    if suffix in FEATURE_SUFFIXES:
        return "features"
    if suffix == ".json":
        return _detect_json_layout(path)
    raise TextSourceError(
        f"cannot tell the text layout of {path} from its suffix; "
        f"pass layout= (one of {', '.join(LAYOUTS[1:])})"
    )


def _detect_jsonl_layout(path: Path) -> str:
    """Return "captions-jsonl" when the first object has `filename` and `captions`, else "jsonl"."""
    for line in _decode(path).split("\n"):
        if not line.strip():
            continue
        try:
            first = json.loads(line)
        except json.JSONDecodeError:
            return "jsonl"
        if isinstance(first, dict) and "filename" in first and "captions" in first:
            return "captions-jsonl"
        return "jsonl"
    return "jsonl"


def _detect_json_layout(path: Path) -> str:
    """Tell an RSICD captions JSON from a GeoJSON file."""
    payload = _load_json(path)
    if isinstance(payload, dict) and payload.get("type") in ("FeatureCollection", "Feature"):
        return "features"
    images = payload.get("images") if isinstance(payload, dict) else None
    if isinstance(images, list) and images and isinstance(images[0], dict) and "sentences" in images[0]:
        return "rsicd-json"
    raise TextSourceError(
        f"{path} is neither GeoJSON nor an RSICD captions JSON (with images[].sentences); pass layout="
    )


def _decode(path: Path) -> str:
    """Read a text file as UTF-8 (a byte-order mark is dropped), naming the first bad byte."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise TextSourceError(
            f"{path} is not UTF-8: byte 0x{data[error.start]:02x} at byte offset {error.start} "
            f"(line {line}) is invalid ({error.reason}); re-encode the file as UTF-8"
        ) from error
    return text.removeprefix("\ufeff")


def _load_json(path: Path) -> Any:
    """Parse a whole JSON file, raising `TextSourceError` naming the file."""
    try:
        return json.loads(_decode(path))
    except json.JSONDecodeError as error:
        raise TextSourceError(
            f"{path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        ) from error


# ---------------------------------------------------------------------------------------------
# Text and geometry of one row
# ---------------------------------------------------------------------------------------------


def _row_text(row: dict, options: _Options) -> tuple[str | None, str | None]:
    """Return (text, None) or (None, problem) for one row or feature's properties."""
    if options.text_fields is not None:
        parts = []
        for name in options.text_fields:
            value = row.get(name)
            if value is not None and str(value).strip():
                parts.append(f"{name}={str(value).strip()}")
        if not parts:
            return None, f"empty text: the fields {', '.join(options.text_fields)} are all empty"
        return "; ".join(parts), None

    value = row.get(options.text_field)
    if value is None:
        return None, f"missing text field {options.text_field!r}"
    if not isinstance(value, str):
        return None, f"text field {options.text_field!r} is a {type(value).__name__}, not a string"
    if not value.strip():
        return None, "empty text"
    return value.strip(), None


def _parse_coordinate(value: Any, name: str) -> tuple[float | None, str | None]:
    """Parse one coordinate (a number or a numeric string) into a finite float."""
    if isinstance(value, bool):
        return None, f"invalid {name} {value!r}: not a number"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None, f"invalid {name} {value!r}: not a number"
    if not math.isfinite(number):
        return None, f"invalid {name} {value!r}: not a finite number"
    return number, None


def _range_problem(min_lon: float, min_lat: float, max_lon: float, max_lat: float) -> str | None:
    """Describe coordinates outside EPSG:4326 degrees, with a hint when lat and lon look swapped."""
    lon_ok = -180 <= min_lon and max_lon <= 180
    lat_ok = -90 <= min_lat and max_lat <= 90
    if lon_ok and lat_ok:
        return None
    if lat_ok:
        where = f"lon {min_lon:g}" if min_lon < -180 else f"lon {max_lon:g}"
        problem = f"coordinates out of range: {where} is beyond ±180"
    else:
        where = f"lat {min_lat:g}" if min_lat < -90 else f"lat {max_lat:g}"
        problem = f"coordinates out of range: {where} is beyond ±90"
    swapped_ok = -90 <= min_lon and max_lon <= 90 and -180 <= min_lat and max_lat <= 180
    if swapped_ok:
        problem += "; lat/lon swapped?"
    return problem


_GeometryCheck = tuple[shapely.Geometry | None, str | None, str | None]


def _check_geometry(geometry: shapely.Geometry | None) -> _GeometryCheck:
    """Return (geometry, problem, repair note) for an EPSG:4326 geometry.

    An invalid geometry is repaired with `shapely.make_valid` when that leaves something.
    """
    if geometry is None:
        return None, "missing geometry", None
    if geometry.is_empty:
        return None, "empty geometry", None
    bounds = geometry.bounds
    if not all(math.isfinite(value) for value in bounds):
        return None, "geometry has non-finite coordinates", None
    problem = _range_problem(*bounds)
    if problem:
        return None, problem, None
    geometry = shapely.force_2d(geometry)
    if geometry.is_valid:
        return geometry, None, None

    reason = shapely.is_valid_reason(geometry)
    fixed = shapely.make_valid(geometry)
    if fixed.is_empty:
        return None, f"invalid geometry ({reason}) and make_valid left nothing", None
    return fixed, None, f"invalid geometry ({reason}) repaired with make_valid"


def _row_geometry(row: dict) -> _GeometryCheck:
    """Build the geometry of a JSONL or CSV row from `wkt`, or from `lon` and `lat`."""
    wkt = row.get("wkt")
    if wkt is not None and str(wkt).strip():
        try:
            geometry = shapely.from_wkt(str(wkt))
        except shapely.errors.GEOSException as error:
            return None, f"invalid WKT: {error}", None
        return _check_geometry(geometry)

    lon_value, lat_value = row.get("lon"), row.get("lat")
    if lon_value in (None, "") or lat_value in (None, ""):
        return None, "missing coordinates: needs lon and lat, or wkt", None
    lon, lon_problem = _parse_coordinate(lon_value, "lon")
    lat, lat_problem = _parse_coordinate(lat_value, "lat")
    if lon_problem or lat_problem:
        return None, "; ".join(p for p in (lon_problem, lat_problem) if p), None
    return _check_geometry(shapely.Point(lon, lat))


_PLACE_FIELDS = {"lon", "lat", "wkt", "kind"}


def _add_row(collector: _Collector, row: dict, line: int, options: _Options) -> None:
    """Turn one JSONL object or CSV row into a record, or a rejection listing its problems."""
    text, text_problem = _row_text(row, options)
    geometry, geometry_problem, repair = _row_geometry(row)

    kind = options.kind or row.get("kind") or "map feature"
    kind_problem = None if kind in KINDS else f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}"

    problems = [p for p in (text_problem, geometry_problem, kind_problem) if p]
    if problems:
        collector.reject(line, "; ".join(problems))
        return
    if repair:
        collector.note_repair(line, repair)

    text_fields = set(options.text_fields) if options.text_fields is not None else {options.text_field}
    used = _PLACE_FIELDS | text_fields
    attributes = {key: value for key, value in row.items() if key not in used and key is not None}
    collector.add(
        TextRecord(
            text=text,
            kind=kind,
            source=collector.source,
            geometry=shapely.to_wkb(geometry),
            image_ref=None,
            line=line,
            attributes=attributes,
        )
    )


# ---------------------------------------------------------------------------------------------
# Readers, one per layout
# ---------------------------------------------------------------------------------------------


def _read_jsonl(path: Path, options: _Options, result: TextReadResult) -> None:
    """Read one JSON object per line; blank lines are skipped."""
    collector = _Collector(result, path)
    # Split on "\n" only: JSON strings may hold U+2028, which str.splitlines() would split on.
    for number, line in enumerate(_decode(path).split("\n"), start=1):
        if not line.strip():
            continue
        result.rows += 1
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            collector.reject(number, f"malformed JSON line: {error.msg} at column {error.colno}")
            continue
        if not isinstance(row, dict):
            collector.reject(number, f"expected a JSON object, got {type(row).__name__}")
            continue
        _add_row(collector, row, number, options)


def _check_csv_header(path: Path, header: list[str] | None, options: _Options) -> None:
    """Raise when the CSV header lacks the text column or the coordinate columns."""
    if not header:
        raise TextSourceError(f"{path} has no header row; the first row must name the columns")
    needed = list(options.text_fields) if options.text_fields is not None else [options.text_field]
    missing = [name for name in needed if name not in header]
    has_place = "wkt" in header or {"lon", "lat"} <= set(header)
    if missing or not has_place:
        wanted = ", ".join(missing + ([] if has_place else ["lon and lat, or wkt"]))
        raise TextSourceError(f"{path} lacks the column(s) {wanted}; its header is: {', '.join(header)}")


def _read_csv(path: Path, options: _Options, result: TextReadResult) -> None:
    """Read a CSV file with a header row; a malformed row is rejected and reading goes on."""
    collector = _Collector(result, path)
    reader = csv.DictReader(io.StringIO(_decode(path), newline=""), strict=True)
    try:
        header = reader.fieldnames
    except csv.Error as error:
        raise TextSourceError(f"{path} has a malformed header row: {error}") from error
    _check_csv_header(path, list(header or []), options)

    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            # The reader has not counted the failing line yet.
            result.rows += 1
            collector.reject(reader.line_num + 1, f"malformed CSV row: {error}")
            continue
        result.rows += 1
        line = reader.line_num
        if None in row:
            fields = len(header) + len(row[None])
            collector.reject(line, f"malformed CSV row: {fields} fields, the header has {len(header)}")
            continue
        if any(value is None for value in row.values()):
            filled = sum(value is not None for value in row.values())
            collector.reject(line, f"malformed CSV row: {filled} fields, the header has {len(header)}")
            continue
        _add_row(collector, row, line, options)


def _feature_properties(table: Any, geometry_name: str) -> list[dict]:
    """Return each feature's properties as a dict of plain Python values."""
    names = [name for name in table.column_names if name != geometry_name]
    rows = table.select(names).to_pylist()
    for row in rows:
        for key, value in row.items():
            if value is not None and not isinstance(value, (str, int, float, bool)):
                row[key] = str(value)
    return rows


def _read_vector(path: Path) -> tuple[str | None, list[dict], list[bytes | None]]:
    """Read the first layer of a vector file: CRS, properties and WKB geometries."""
    try:
        meta, table = pyogrio.read_arrow(path)
    except pyogrio.errors.DataSourceError as error:
        raise TextSourceError(f"{path} cannot be read as a vector file: {error}") from error
    geometry_name = meta.get("geometry_name") or "wkb_geometry"
    if geometry_name not in table.column_names:
        raise TextSourceError(f"{path} has no geometry column; a text source needs a geometry per feature")
    return meta.get("crs"), _feature_properties(table, geometry_name), table.column(geometry_name).to_pylist()


def _to_4326(geometries: list[shapely.Geometry], crs: str | None, path: Path) -> list[shapely.Geometry]:
    """Reproject geometries from the layer CRS to EPSG:4326 with rasterio (GDAL)."""
    if crs is None:
        logger.warning("%s has no CRS; its coordinates are taken as EPSG:4326", path)
        return geometries
    if not geometries:
        return []
    mapped = transform_geom(crs, "EPSG:4326", [shapely.geometry.mapping(g) for g in geometries])
    return [shapely.geometry.shape(g) for g in mapped]


def _feature_geometry(wkb: bytes | None, collector: _Collector, line: int) -> shapely.Geometry | None:
    """Parse and validate one feature geometry in its own CRS, repairing it when invalid."""
    if wkb is None:
        collector.reject(line, "feature has no geometry")
        return None
    geometry = shapely.from_wkb(wkb)
    if geometry.is_empty:
        collector.reject(line, "empty geometry")
        return None
    if geometry.is_valid:
        return geometry
    reason = shapely.is_valid_reason(geometry)
    fixed = shapely.make_valid(geometry)
    if fixed.is_empty:
        collector.reject(line, f"invalid geometry ({reason}) and make_valid left nothing")
        return None
    collector.note_repair(line, f"invalid geometry ({reason}) repaired with make_valid")
    return fixed


def _read_features(path: Path, options: _Options, result: TextReadResult) -> None:
    """Read vector features through pyogrio, reprojecting them to EPSG:4326."""
    collector = _Collector(result, path)
    crs, properties, geometries = _read_vector(path)
    fields = list(properties[0]) if properties else []
    needed = list(options.text_fields) if options.text_fields is not None else [options.text_field]
    missing = [name for name in needed if name not in fields]
    if properties and missing:
        raise TextSourceError(
            f"{path} has no field(s) {', '.join(missing)}; "
            f"pass text_field or text_fields naming one of: {', '.join(fields)}"
        )

    kept: list[tuple[int, dict, str, shapely.Geometry]] = []
    for index, (row, wkb) in enumerate(zip(properties, geometries), start=1):
        result.rows += 1
        text, problem = _row_text(row, options)
        if problem:
            collector.reject(index, problem)
            continue
        geometry = _feature_geometry(wkb, collector, index)
        if geometry is not None:
            kept.append((index, row, text, geometry))

    projected = _to_4326([geometry for *_, geometry in kept], crs, path)
    for (index, row, text, _), geometry in zip(kept, projected):
        geometry, problem, _ = _check_geometry(geometry)
        if problem:
            collector.reject(index, problem)
            continue
        kind = options.kind or "map feature"
        collector.add(TextRecord(text, kind, collector.source, shapely.to_wkb(geometry), None, index, row))


def _resolve_image(base: Path, filename: str, subdirs: tuple[str, ...]) -> str:
    """Return the absolute path of an image named by a caption file, or the name as written."""
    names = [filename, Path(filename).name]
    for subdir in subdirs:
        for name in names:
            candidate = base / subdir / name
            if candidate.is_file():
                return str(candidate.resolve())
    return filename


def _add_caption(
    collector: _Collector, text: Any, image_ref: str, line: int, attributes: dict, options: _Options
) -> None:
    """Add one caption of an image, or reject it when it is not a non-empty string."""
    if text is not None and not isinstance(text, str):
        collector.reject(line, f"caption for {image_ref} is a {type(text).__name__}, not a string")
        return
    if text is None or not text.strip():
        collector.reject(line, f"empty caption for {image_ref}")
        return

    kind = options.kind or "caption"
    record = TextRecord(text.strip(), kind, collector.source, None, image_ref, line, attributes)
    collector.add(record, skip_duplicates=True)


def _read_rsicd_json(path: Path, options: _Options, result: TextReadResult) -> None:
    """Read the RSICD / UCM-captions JSON; `line` is the 1-based image entry number."""
    collector = _Collector(result, path)
    payload = _load_json(path)
    images = payload.get("images") if isinstance(payload, dict) else None
    if not isinstance(images, list):
        raise TextSourceError(f"{path} has no top-level 'images' list, so it is not an RSICD captions JSON")

    for number, entry in enumerate(images, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            result.rows += 1
            collector.reject(number, "image entry without a 'filename' string")
            continue
        sentences = entry.get("sentences")
        if not isinstance(sentences, list):
            result.rows += 1
            collector.reject(number, f"image {entry['filename']} has no 'sentences' list")
            continue
        image_ref = _resolve_image(path.parent, entry["filename"], _RSICD_IMAGE_DIRS)
        base = {key: entry[key] for key in ("imgid", "split") if key in entry}
        for index, sentence in enumerate(sentences):
            result.rows += 1
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            _add_caption(collector, raw, image_ref, number, {**base, "sentence_index": index}, options)


def _read_captions_jsonl(path: Path, options: _Options, result: TextReadResult) -> None:
    """Read CLIP-rsicd JSONL lines ``{"filename": ..., "captions": [...]}``."""
    collector = _Collector(result, path)
    for number, line in enumerate(_decode(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            result.rows += 1
            collector.reject(number, f"malformed JSON line: {error.msg} at column {error.colno}")
            continue
        valid = (
            isinstance(entry, dict)
            and isinstance(entry.get("filename"), str)
            and isinstance(entry.get("captions"), list)
        )
        if not valid:
            result.rows += 1
            collector.reject(number, "expected an object with a 'filename' string and a 'captions' list")
            continue
        image_ref = _resolve_image(path.parent, entry["filename"], ("",))
        for index, caption in enumerate(entry["captions"]):
            result.rows += 1
            _add_caption(collector, caption, image_ref, number, {"caption_index": index}, options)


def question_answer_text(question: str, answer: str) -> str:
    """Join an RSVQA question and its answer into one text: "Is there a road? yes"."""
    question = question.strip()
    if not question.endswith("?"):
        question += "?"
    return f"{question} {answer.strip()}"


def _read_rsvqa(
    path: Path, split: str | None, options: _Options, result: TextReadResult, image_ids: set[int] | None = None
) -> None:
    """Read an RSVQA split: one question-answer text per question, placed on its image footprint."""
    dataset = rsvqa.load_rsvqa(path, split)
    collector = _Collector(result, dataset.questions_file)
    for question in dataset.questions:
        if image_ids is not None and question.image_id not in image_ids:
            continue
        result.rows += 1
        image = dataset.image_of(question)
        image_ref = str(image.path) if image.path.is_file() else image.path.name
        attributes = {
            "type": question.type,
            "answer": question.answer,
            "question_id": question.id,
            "image_id": question.image_id,
        }
        text = question_answer_text(question.question, question.answer)
        kind = options.kind or "question-answer"
        collector.add(TextRecord(text, kind, collector.source, image.footprint, image_ref, None, attributes))


def split_class_name(name: str) -> str:
    """Split a class folder name into lower-case words: "HerbaceousVegetation" -> "herbaceous vegetation"."""
    words = re.sub(r"[_\-\s]+", " ", name)
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", words)
    # An acronym followed by a word: "RGBImage" -> "RGB Image".
    words = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", " ", words)
    return " ".join(words.lower().split())


def _class_folders(root: Path) -> list[tuple[Path, list[Path]]]:
    """List the class folders of `root` that hold images, each with its image files, sorted."""
    folders = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            folders.append((folder, images))
    return folders


def _read_class_folders(path: Path, options: _Options, result: TextReadResult) -> None:
    """Read one label per image from `ROOT/<ClassName>/<file>`; `source` is the image file."""
    folders = _class_folders(path)
    if not folders:
        raise TextSourceError(f"{path} has no class folders holding images ({', '.join(IMAGE_SUFFIXES)})")
    for folder, images in folders:
        label = split_class_name(folder.name)
        for image in images:
            result.rows += 1
            collector = _Collector(result, image)
            if not label:
                collector.reject(None, f"class folder name {folder.name!r} has no words")
                continue
            kind = options.kind or "label"
            record = TextRecord(label, kind, str(image), None, str(image), None, {"class": folder.name})
            collector.add(record)
