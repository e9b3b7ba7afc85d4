"""RSVQA data sets: file layout, image georeference, answer normalization and scoring.

RSVQA (Lobry, Marcos, Murray and Tuia, "RSVQA: Visual Question Answering for Remote Sensing
Data", IEEE TGRS 58(12), 2020, https://doi.org/10.1109/TGRS.2020.2988782) pairs remote-sensing
images with questions and answers that were generated from OpenStreetMap:

- low resolution (LR): 256 x 256 Sentinel-2 RGB tiles over the Netherlands, published as Zenodo
  record 6344334 (https://zenodo.org/records/6344334). Question types: ``rural_urban``,
  ``presence``, ``count``, ``comp``.
- high resolution (HR): 512 x 512 USGS aerial RGB tiles of New York, published as Zenodo record
  6344367 (https://zenodo.org/records/6344367), with two test sets: ``test`` (New York) and
  ``test_phili`` (Philadelphia). Question types: ``presence``, ``count``, ``comp``, ``area``.

Two layouts are read, detected from the files present in the folder:

- the Zenodo release: ``LR_split_{train,val,test}_{images,questions,answers}.json`` with images
  in ``Images_LR/<id>.tif``, or ``USGS_split_{train,val,test,test_phili}_{...}.json`` with
  images in ``Data/<id>.tif``.
- the subset shown on the authors' web site: ``imagesS2_reduced.json``,
  ``questionsS2_reduced.json``, ``answersS2_reduced.json`` (LR) or
  ``USGS_split_train_{images,questions,answers}_reduced.json`` (HR), with PNG images in
  ``images/<id>.png`` (or the site's own folder names ``data_S2_reduced/`` and
  ``dataUSGS_reduced/``). Its only split is called ``reduced``.

Every JSON file contains one list: ``{"images": [...]}``, ``{"questions": [...]}`` or
``{"answers": [...]}``, where an entry's ``id`` is its index. An image has ``questions_ids``,
``upperleft_map_x``/``upperleft_map_y`` (EPSG:3857 metres) and ``res_x`` (a string such as
"10m"); a question has ``img_id``, ``type``, ``question`` and ``answers_ids``; an answer has
``answer``. A split file marks its members with ``active``: the authors' split script
(``AutomaticDB/Splits.py`` in https://github.com/syvlo/RSVQA) writes ``{"id": i, "active":
false}`` for entries outside the split. Where an active question or answer carries no text, the
text is taken from ``all_questions.json`` / ``all_answers.json`` beside the split files.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rasterio
import shapely
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from rasterio.warp import transform as transform_coords

from rsflow.raster import Georef

logger = logging.getLogger(__name__)

LR_TYPES = ("rural_urban", "presence", "count", "comp")
HR_TYPES = ("presence", "count", "comp", "area")
QUESTION_TYPES = {"LR": LR_TYPES, "HR": HR_TYPES}

# Tile sizes of the published sets (LR 256 x 256, HR 512 x 512), used for the footprint only
# when an image file is missing.
TILE_SIZE = {"LR": 256, "HR": 512}

# Ground pixel size in metres when an image record has no `res_x`.
DEFAULT_RESOLUTION_M = {"LR": 10.0, "HR": 0.1524}

WEBSITE_SPLIT = "reduced"

# Bins used by the authors' answer encoder (`VQA_model/VocabEncoder.py` in
# https://github.com/syvlo/RSVQA, commit 34ae7c3): 0 keeps its own class, then (0, 10],
# (10, 100], (100, 1000] and above 1000. Area answers ("10632m2") always use these bins; count
# answers use them only when the caller asks (`count_bins=True`).
COUNT_BINS = ("0", "between 0 and 10", "between 10 and 100", "between 100 and 1000", "more than 1000")
AREA_BINS = (
    "0m2",
    "between 0m2 and 10m2",
    "between 10m2 and 100m2",
    "between 100m2 and 1000m2",
    "more than 1000m2",
)


@dataclass(frozen=True)
class RsvqaImage:
    """One RSVQA image: where its file is and where it lies on the map.

    `upper_left` is the (x, y) corner in EPSG:3857 metres from the images JSON, or None when the
    record has no corner. `resolution_m` is the ground pixel size that the JSON states ("10m").
    `pixel_size` is the pixel size in EPSG:3857 units: the file's own when it is a georeferenced
    GeoTIFF, otherwise `resolution_m` scaled by the Mercator factor 1 / cos(latitude).
    `footprint` is a WKB polygon in EPSG:4326, or None without a corner.
    """

    id: int
    path: Path
    upper_left: tuple[float, float] | None
    resolution_m: float
    pixel_size: float | None
    width: int
    height: int
    footprint: bytes | None
    original_name: str | None

    def georef(self) -> Georef:
        """Return the image's georeference in EPSG:3857, built from the JSON corner."""
        if self.upper_left is None or self.pixel_size is None:
            raise ValueError(
                f"RSVQA image {self.id} ({self.path}) has no upper-left corner in its images "
                "JSON, so it cannot be placed on the map"
            )
        x, y = self.upper_left
        size = self.pixel_size
        return Georef(crs="EPSG:3857", transform=Affine(size, 0.0, x, 0.0, -size, y))


@dataclass(frozen=True)
class RsvqaQuestion:
    """One question with its reference answer, as written in the data set."""

    id: int
    image_id: int
    type: str
    question: str
    answer: str


@dataclass(frozen=True)
class RsvqaDataset:
    """One split of an RSVQA data set."""

    root: Path
    dataset: str  # "LR" or "HR"
    split: str
    layout: str  # "release" or "website"
    questions_file: Path
    images: dict[int, RsvqaImage]
    questions: tuple[RsvqaQuestion, ...]

    def image_of(self, question: RsvqaQuestion) -> RsvqaImage:
        """Return the image that `question` is about."""
        return self.images[question.image_id]


@dataclass(frozen=True)
class RsvqaLayout:
    """The file names, image folders and splits of one detected RSVQA layout."""

    kind: str  # "release" or "website"
    dataset: str  # "LR" or "HR"
    splits: tuple[str, ...]
    image_dirs: tuple[str, ...]
    image_suffix: str
    release_prefix: str = ""
    website_names: tuple[str, str, str] = ("", "", "")

    def split_files(self, root: Path, split: str) -> tuple[Path, Path, Path]:
        """Return the images, questions and answers JSON paths of `split`."""
        if self.kind == "website":
            images, questions, answers = self.website_names
            return root / images, root / questions, root / answers
        prefix = f"{self.release_prefix}{split}_"
        return root / f"{prefix}images.json", root / f"{prefix}questions.json", root / f"{prefix}answers.json"

    def image_dir(self, root: Path) -> Path:
        """Return the first image folder of the layout that exists (else the first name)."""
        for name in self.image_dirs:
            if (root / name).is_dir():
                return root / name
        return root / self.image_dirs[0]


_RELEASE = {
    "LR": ("LR_split_", ("Images_LR",), ("train", "val", "test")),
    "HR": ("USGS_split_", ("Data",), ("train", "val", "test", "test_phili")),
}
_WEBSITE = {
    "LR": (
        ("imagesS2_reduced.json", "questionsS2_reduced.json", "answersS2_reduced.json"),
        ("images", "data_S2_reduced"),
    ),
    "HR": (
        (
            "USGS_split_train_images_reduced.json",
            "USGS_split_train_questions_reduced.json",
            "USGS_split_train_answers_reduced.json",
        ),
        ("images", "dataUSGS_reduced"),
    ),
}


def _detect_layouts(root: Path) -> list[RsvqaLayout]:
    """List every RSVQA layout whose files are present in `root`."""
    found = []
    for dataset, (prefix, dirs, splits) in _RELEASE.items():
        present = tuple(s for s in splits if (root / f"{prefix}{s}_images.json").is_file())
        if present:
            found.append(RsvqaLayout("release", dataset, present, dirs, ".tif", release_prefix=prefix))
    for dataset, (names, dirs) in _WEBSITE.items():
        if (root / names[0]).is_file():
            found.append(RsvqaLayout("website", dataset, (WEBSITE_SPLIT,), dirs, ".png", website_names=names))
    return found


def is_rsvqa_folder(path: str | Path) -> bool:
    """Return whether `path` is a folder with the JSON files of an RSVQA layout."""
    path = Path(path)
    return path.is_dir() and bool(_detect_layouts(path))


def detect_layout(dataset_dir: str | Path) -> RsvqaLayout:
    """Detect which RSVQA layout `dataset_dir` contains, from the JSON file names present."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"RSVQA folder not found: {root}")
    found = _detect_layouts(root)
    if not found:
        raise ValueError(
            f"{root} contains no RSVQA JSON files: expected LR_split_<split>_images.json, "
            "USGS_split_<split>_images.json, imagesS2_reduced.json or "
            "USGS_split_train_images_reduced.json"
        )
    if len(found) > 1:
        names = ", ".join(f"{layout.dataset} {layout.kind}" for layout in found)
        raise ValueError(
            f"{root} contains more than one RSVQA layout ({names}); pass a folder with one layout"
        )
    return found[0]


def load_rsvqa(dataset_dir: str | Path, split: str | None = None) -> RsvqaDataset:
    """Load one split of an RSVQA data set (release or web-site layout) with its georeference.

    `split` is one of the split files present (``train``, ``val``, ``test``, ``test_phili``)
    for the release, and ``reduced`` (or None) for the web-site subset. Image files are opened
    with rasterio for their width and height; a missing file gets the set's tile size and a
    warning.
    """
    root = Path(dataset_dir).resolve()
    layout = detect_layout(root)
    split = _check_split(root, layout, split)
    images_file, questions_file, answers_file = layout.split_files(root, split)

    image_records = _read_json_list(images_file, "images")
    question_records = _read_json_list(questions_file, "questions")
    answer_records = _read_json_list(answers_file, "answers")

    questions = _collect_questions(root, questions_file, question_records, answers_file, answer_records)
    image_ids = sorted({question.image_id for question in questions})
    images = _collect_images(root, layout, images_file, image_records, image_ids)

    logger.info(
        "Loaded RSVQA %s %s split %r from %s: %d images, %d questions",
        layout.dataset, layout.kind, split, root, len(images), len(questions),
    )
    return RsvqaDataset(
        root=root,
        dataset=layout.dataset,
        split=split,
        layout=layout.kind,
        questions_file=questions_file,
        images=images,
        questions=tuple(questions),
    )


def image_georefs(dataset: RsvqaDataset) -> dict[str, Georef]:
    """Map each image's absolute path to its georeference, for images the JSON places on the map."""
    georefs = {}
    for image in dataset.images.values():
        if image.upper_left is None:
            continue
        georefs[str(image.path)] = image.georef()
    return georefs


def _check_split(root: Path, layout: RsvqaLayout, split: str | None) -> str:
    """Return the split to read, or raise when `split` is not present in `root`."""
    if split is None and layout.kind == "website":
        return WEBSITE_SPLIT
    if split is None:
        raise ValueError(
            f"{root} contains the RSVQA-{layout.dataset} release; name the split to read: "
            f"{', '.join(layout.splits)}"
        )
    if split not in layout.splits:
        raise ValueError(
            f"split {split!r} not found in {root}: the {layout.dataset} {layout.kind} files there "
            f"have the splits {', '.join(layout.splits)}"
        )
    return split


def _read_json_list(path: Path, key: str) -> list[Any]:
    """Read `{key: [...]}` from a JSON file, raising an error that names the file."""
    if not path.is_file():
        raise FileNotFoundError(f"RSVQA file not found: {path}")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a valid UTF-8 JSON file: {error}") from error
    if not isinstance(payload, dict) or not isinstance(payload.get(key), list):
        raise ValueError(f"{path} has no top-level {key!r} list, so it is not an RSVQA {key} file")
    return payload[key]


class _Fallback:
    """Records of `all_questions.json` or `all_answers.json`, read once on first use."""

    def __init__(self, root: Path, name: str, key: str):
        self.path = root / name
        self.key = key
        self._by_id: dict[int, dict] | None = None

    def get(self, record_id: int, referrer: Path) -> dict:
        """Return the full record `record_id`, raising when the fallback file lacks it."""
        if self._by_id is None:
            if not self.path.is_file():
                raise FileNotFoundError(
                    f"{referrer} marks {self.key[:-1]} {record_id} active but has no text for it; the "
                    f"RSVQA release keeps the text in {self.path.name}, which is missing from "
                    f"{self.path.parent}"
                )
            self._by_id = _index_by_id(_read_json_list(self.path, self.key))
        if record_id not in self._by_id:
            raise ValueError(f"{self.key[:-1]} {record_id} of {referrer} is not in {self.path}")
        return self._by_id[record_id]


def _require(record: dict, keys: Sequence[str], path: Path) -> None:
    """Raise when a JSON record of `path` lacks one of `keys`."""
    missing = [key for key in keys if key not in record]
    if missing:
        raise ValueError(f"record {record.get('id', '?')} of {path} lacks the field(s) {', '.join(missing)}")


def _index_by_id(records: list[Any]) -> dict[int, dict]:
    """Index JSON records by their integer `id`."""
    return {record["id"]: record for record in records if isinstance(record, dict) and "id" in record}


def _collect_questions(
    root: Path,
    questions_file: Path,
    question_records: list[Any],
    answers_file: Path,
    answer_records: list[Any],
) -> list[RsvqaQuestion]:
    """Build the split's questions: active entries, with text from the fallback files if needed."""
    all_questions = _Fallback(root, "all_questions.json", "questions")
    all_answers = _Fallback(root, "all_answers.json", "answers")
    answers_by_id = _index_by_id(answer_records)

    questions = []
    for record in question_records:
        if not isinstance(record, dict) or not record.get("active"):
            continue
        _require(record, ("id",), questions_file)
        if not {"img_id", "type", "question"} <= record.keys():
            record = all_questions.get(record["id"], questions_file)
            _require(record, ("img_id", "type", "question"), all_questions.path)
        answer = _answer_of(record, questions_file, answers_by_id, answers_file, all_answers)
        questions.append(
            RsvqaQuestion(
                id=int(record["id"]),
                image_id=int(record["img_id"]),
                type=str(record["type"]),
                question=str(record["question"]),
                answer=answer,
            )
        )
    if not questions:
        raise ValueError(f"{questions_file} has no active questions; check the split name")
    return questions


def _answer_of(
    question: dict,
    questions_file: Path,
    answers_by_id: dict[int, dict],
    answers_file: Path,
    fallback: _Fallback,
) -> str:
    """Return the answer text of `question` (its first `answers_ids` entry)."""
    answer_ids = question.get("answers_ids") or []
    if not answer_ids:
        raise ValueError(f"question {question['id']} of {questions_file} has no answers_ids")
    answer_id = answer_ids[0]
    record = answers_by_id.get(answer_id)
    if record is None or "answer" not in record:
        record = fallback.get(answer_id, answers_file)
        _require(record, ("answer",), fallback.path)
    return str(record["answer"])


def _collect_images(
    root: Path, layout: RsvqaLayout, images_file: Path, image_records: list[Any], image_ids: Sequence[int]
) -> dict[int, RsvqaImage]:
    """Build the images that the split's questions refer to."""
    by_id = _index_by_id(image_records)
    image_dir = layout.image_dir(root)
    images = {}
    for image_id in image_ids:
        record = by_id.get(image_id, {})
        path = image_dir / f"{image_id}{layout.image_suffix}"
        images[image_id] = _build_image(image_id, record, path, layout.dataset, images_file)
    return images


def _build_image(image_id: int, record: dict, path: Path, dataset: str, images_file: Path) -> RsvqaImage:
    """Combine the JSON record and the image file header into an `RsvqaImage`."""
    upper_left = None
    if "upperleft_map_x" in record and "upperleft_map_y" in record:
        upper_left = (float(record["upperleft_map_x"]), float(record["upperleft_map_y"]))
    else:
        logger.warning("RSVQA image %d has no upper-left corner in %s", image_id, images_file)
    resolution_m = _parse_resolution(record.get("res_x"), DEFAULT_RESOLUTION_M[dataset], images_file)

    width, height, file_pixel_size = _read_image_grid(path, upper_left, TILE_SIZE[dataset])
    pixel_size = file_pixel_size
    if pixel_size is None and upper_left is not None:
        pixel_size = mercator_pixel_size(resolution_m, upper_left[1])

    footprint = None
    if upper_left is not None and pixel_size is not None:
        footprint = footprint_wkb(upper_left, pixel_size, width, height)
    return RsvqaImage(
        id=image_id,
        path=path,
        upper_left=upper_left,
        resolution_m=resolution_m,
        pixel_size=pixel_size,
        width=width,
        height=height,
        footprint=footprint,
        original_name=record.get("original_name"),
    )


def _parse_resolution(value: Any, default: float, images_file: Path) -> float:
    """Parse a `res_x` string such as "10m" or ".1524m" into metres."""
    if value is None:
        return default
    text = str(value).strip().lower().removesuffix("m")
    try:
        resolution = float(text)
    except ValueError as error:
        raise ValueError(
            f"invalid res_x {value!r} in {images_file}: expected metres such as '10m'"
        ) from error
    if not resolution > 0:
        raise ValueError(f"invalid res_x {value!r} in {images_file}: the pixel size must be positive")
    return resolution


def _read_image_grid(
    path: Path, upper_left: tuple[float, float] | None, tile_size: int
) -> tuple[int, int, float | None]:
    """Return (width, height, EPSG:3857 pixel size or None) read from the image file.

    The pixel size comes from the file only when it is georeferenced in EPSG:3857, as the
    release GeoTIFFs are. The web-site PNGs carry no georeference.
    """
    if not path.is_file():
        logger.warning(
            "RSVQA image file %s is missing; its footprint assumes %d x %d pixels", path, tile_size, tile_size
        )
        return tile_size, tile_size, None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            width, height, crs, transform = src.width, src.height, src.crs, src.transform
    if crs is None or crs.to_epsg() != 3857:
        return width, height, None

    if upper_left is not None:
        dx, dy = abs(transform.c - upper_left[0]), abs(transform.f - upper_left[1])
        if max(dx, dy) > abs(transform.a):
            logger.warning(
                "%s: the GeoTIFF origin (%.3f, %.3f) is more than one pixel from the JSON corner "
                "(%.3f, %.3f); the JSON corner is used",
                path, transform.c, transform.f, upper_left[0], upper_left[1],
            )
    return width, height, float(transform.a)


def mercator_pixel_size(resolution_m: float, y: float) -> float:
    """Convert a ground pixel size in metres to EPSG:3857 units at map northing `y`.

    Web Mercator stretches distances by 1 / cos(latitude).
    NOTE: the latitude of the upper-left corner is used, which makes this an estimate. On the
    seven bundled RSVQA-LR release GeoTIFFs it is off by -0.42 % to +0.63 %, up to about 1.6
    pixels across a 256-pixel tile. The release used one scale factor per source scene, not per
    tile.
    """
    latitude = math.degrees(2.0 * math.atan(math.exp(y / 6378137.0)) - math.pi / 2.0)
    return resolution_m / math.cos(math.radians(latitude))


def footprint_wkb(upper_left: tuple[float, float], pixel_size: float, width: int, height: int) -> bytes:
    """Return the EPSG:4326 footprint (WKB polygon) of a north-up EPSG:3857 image.

    Web Mercator maps meridians and parallels to straight lines, so the four transformed corners
    give the footprint exactly.
    """
    x0, y0 = upper_left
    x1, y1 = x0 + pixel_size * width, y0 - pixel_size * height
    lons, lats = transform_coords("EPSG:3857", "EPSG:4326", [x0, x1], [y1, y0])
    polygon = shapely.box(lons[0], lats[0], lons[1], lats[1])
    return shapely.to_wkb(polygon)


def _check_type(question_type: str, dataset: str) -> None:
    """Raise when `question_type` is not a question type of the RSVQA set `dataset`."""
    if dataset not in QUESTION_TYPES:
        raise ValueError(f"unknown RSVQA data set {dataset!r}: expected 'LR' or 'HR'")
    if question_type not in QUESTION_TYPES[dataset]:
        raise ValueError(
            f"unknown RSVQA-{dataset} question type {question_type!r}: expected one of "
            f"{', '.join(QUESTION_TYPES[dataset])}"
        )


def _bin_label(value: float, labels: tuple[str, ...]) -> str:
    """Return the bin label of a non-negative count or area (see `COUNT_BINS`)."""
    if value <= 0:
        return labels[0]
    if value <= 10:
        return labels[1]
    if value <= 100:
        return labels[2]
    if value <= 1000:
        return labels[3]
    return labels[4]


def _clean(answer: str) -> str:
    """Lower-case an answer and strip spaces and a trailing full stop."""
    return answer.strip().lower().rstrip(".").strip()


def normalize_answer(
    answer: str, question_type: str, dataset: str = "LR", *, count_bins: bool = False
) -> str:
    """Normalize a reference or predicted answer the way the benchmark compares answers.

    - ``presence``, ``comp``, ``rural_urban``: lower case, without spaces or a trailing full stop.
    - ``count``: the integer as digits ("007" -> "7"), or with `count_bins` the bin label of
      `COUNT_BINS`. The authors' training script bins LR counts (``range_numbers=True`` in
      ``VQA_model/train.py`` of https://github.com/syvlo/RSVQA). Use ``count_bins=True`` to
      compare with the LR count accuracy of that model.
    - ``area`` (HR): always the bin label of `AREA_BINS`, from answers such as "10632m2".

    An answer that cannot be parsed comes back cleaned but otherwise unchanged, so it matches
    no reference. A bin label passes through unchanged.
    """
    _check_type(question_type, dataset)
    text = _clean(answer)

    if question_type == "count":
        if text in COUNT_BINS:
            return text
        if not re.fullmatch(r"\d+", text):
            return text
        return _bin_label(int(text), COUNT_BINS) if count_bins else str(int(text))

    if question_type == "area":
        if text in AREA_BINS:
            return text
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*m2", text)
        if match is None:
            return text
        return _bin_label(float(match.group(1)), AREA_BINS)

    return text


_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
    "eighty": 80, "ninety": 90,
}
_SCALES = {"hundred": 100, "thousand": 1000}
_NUMBER_WORDS = set(_UNITS) | set(_TENS) | set(_SCALES)
_TOKEN = re.compile(r"\d[\d,]*(?:\.\d+)?|[a-z]+")


def _words_to_number(words: list[str]) -> int:
    """Convert number words ("twenty three", "one hundred and five") to an integer."""
    total, current = 0, 0
    for word in words:
        if word in _UNITS:
            current += _UNITS[word]
        elif word in _TENS:
            current += _TENS[word]
        elif word == "hundred":
            current = max(current, 1) * 100
        elif word == "thousand":
            total += max(current, 1) * 1000
            current = 0
    return total + current


def _first_number(text: str) -> float | None:
    """Return the first number in `text`, written in digits or in words, or None."""
    tokens = _TOKEN.findall(text.lower().replace("-", " "))
    for index, token in enumerate(tokens):
        if token[0].isdigit():
            return float(token.replace(",", ""))

        before_scale = token == "a" and index + 1 < len(tokens) and tokens[index + 1] in _SCALES
        if token in _NUMBER_WORDS or before_scale:
            # Collect the run of number words, with "and" and "a" inside it ("a hundred and five").
            words = []
            for word in tokens[index:]:
                if word not in _NUMBER_WORDS and word not in ("and", "a"):
                    break
                words.append(word)
            return float(_words_to_number(words))
    return None


_AREA_UNITS = (
    (re.compile(r"^(km2|km²|square kilomet(?:er|re)s?|sq km)"), 1e6),
    (re.compile(r"^(ha|hectares?)\b"), 1e4),
)


def _free_area(text: str) -> str:
    """Map free text to an area answer "<n>m2", reading a km² or hectare unit after the number."""
    # "0m2" is left out because "100m2" contains it.
    for label in AREA_BINS[:0:-1]:
        if label in text:
            return label
    match = re.search(r"(\d[\d,]*(?:\.\d+)?)\s*", text)
    if match is None:
        number = _first_number(text)
        if number is not None:
            return f"{round(number)}m2"
        return "0m2" if re.search(r"\b(no|none)\b", text) else ""
    value = float(match.group(1).replace(",", ""))
    rest = text[match.end():]
    for unit, factor in _AREA_UNITS:
        if unit.match(rest):
            value *= factor
            break
    return f"{round(value)}m2"


def _free_count(text: str) -> str:
    """Map free text to a count: the first number, or 0 for "no"/"none" without any number."""
    for label in COUNT_BINS[:0:-1]:
        if label in text:
            return label
    number = _first_number(text)
    if number is not None:
        return str(round(number))
    return "0" if re.search(r"\b(no|none)\b", text) else ""


def map_free_answer(generated: str, question_type: str) -> str:
    """Map a free-form LLM answer to the RSVQA answer vocabulary.

    - ``presence``, ``comp``: the first word "yes" or "no".
    - ``rural_urban``: the first of the words "rural" and "urban".
    - ``count``: the first number, in digits ("12", "1,200") or words ("twenty-three"). The
      words "no" or "none" give "0" when the text contains no number. A count bin label in the
      text is kept.
    - ``area``: the first number as "<n>m2", converted from km² or hectares when that unit
      follows it. An area bin label in the text is kept.

    Returns "" when nothing maps, which matches no reference. Pass the result through
    `normalize_answer` (as `score` does) before comparing.
    """
    text = generated.strip().lower()
    if question_type in ("presence", "comp"):
        match = re.search(r"\b(yes|no)\b", text)
        return match.group(1) if match else ""
    if question_type == "rural_urban":
        match = re.search(r"\b(rural|urban)\b", text)
        return match.group(1) if match else ""
    if question_type == "count":
        return _free_count(text)
    if question_type == "area":
        return _free_area(text)
    known = ", ".join(LR_TYPES + ("area",))
    raise ValueError(f"unknown RSVQA question type {question_type!r}: expected one of {known}")


def score(
    predictions: Sequence[str],
    references: Sequence[str],
    types: Sequence[str],
    *,
    dataset: str = "LR",
    count_bins: bool = False,
) -> dict[str, Any]:
    """Score predictions against references as the RSVQA benchmark reports them.

    Both sides pass through `normalize_answer` first. Returns ``per_type`` (for each question
    type: ``accuracy``, ``correct``, ``total``), ``average_accuracy`` (the mean of the per-type
    accuracies, over the types present), ``overall_accuracy`` (correct answers over all
    questions), ``correct`` and ``total``. Accuracies are fractions in [0, 1].
    """
    if not (len(predictions) == len(references) == len(types)):
        raise ValueError(
            f"predictions, references and types must have the same length; got {len(predictions)}, "
            f"{len(references)} and {len(types)}"
        )
    if not references:
        raise ValueError("references is empty, so there are no answers to score")

    correct: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for prediction, reference, question_type in zip(predictions, references, types):
        expected = normalize_answer(reference, question_type, dataset, count_bins=count_bins)
        given = normalize_answer(prediction, question_type, dataset, count_bins=count_bins)
        total[question_type] += 1
        correct[question_type] += int(given == expected)

    order = [t for t in QUESTION_TYPES[dataset] if t in total]
    per_type = {
        t: {"accuracy": correct[t] / total[t], "correct": correct[t], "total": total[t]} for t in order
    }
    return {
        "per_type": per_type,
        "average_accuracy": sum(entry["accuracy"] for entry in per_type.values()) / len(per_type),
        "overall_accuracy": sum(correct.values()) / sum(total.values()),
        "correct": sum(correct.values()),
        "total": sum(total.values()),
    }
