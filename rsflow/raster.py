"""Reading rasters: opening, georeference, windows, bands, nodata and value scaling.

Every image that rsflow reads goes through this module, so the rules live in one place:

Bands
    Alpha bands (colour interpretation ``alpha``) are a mask, never a channel. Without ``bands`` the
    remaining bands are used in file order and their number must equal the encoder's input channels.
    ``bands`` (1-based, as rasterio and GDAL count) selects and orders bands, and may repeat one, so
    ``[1, 1, 1]`` feeds a single-band image to an RGB encoder.

Nodata
    A pixel is invalid where the dataset mask marks it so: the nodata value, an internal mask or an alpha
    band. A nodata value outside the range of the band's data type cannot occur in the data, so it
    is ignored (rasterio 1.4 already drops such a value when it opens the file; where a reader
    reports it, rsflow ignores it with a warning). Pixels outside the image (padded edge chips) are invalid too.
    Invalid pixels are never fed to the encoder as raw values: the encoder replaces them with its
    normalization mean, which is zero after normalization.

Value scaling, to [0, 1] before the encoder's own normalization
    ``uint8``: divided by 255. Any other data type (``uint16``, ``int16``, ``float32``, ...): a
    linear stretch per band from the 2nd to the 98th percentile of the image's valid pixels, read
    from a decimated copy of at most ``SCALING_SAMPLE_SIZE`` pixels on the long side, then clipped.
    All chips of one image share that stretch. ``value_range=(low, high)`` replaces the stretch with a
    fixed range for every band and image, for example ``(0, 10000)`` for Sentinel-2 reflectance, so
    that embeddings of different scenes stay comparable.

Chips
    Windows of ``chip_size`` pixels every ``stride`` pixels, row by row. With ``edge="pad"`` the
    last row and column of windows reach past the image and the outside is padded as nodata; with
    ``edge="drop"`` windows that do not fit are left out. An image smaller than one chip in both
    directions becomes a single chip covering the whole image, which the encoder resizes.

Georeference
    An image with a CRS and a geotransform has a footprint: the window's outline, densified and
    transformed to EPSG:4326, cut at the antimeridian. An image without a CRS (JPEG, PNG, a TIFF
    without geotags) has none; it is never placed at a made-up position. A `Georef` passed from
    outside, such as the RSVQA images JSON, places such an image.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_geom
from rasterio.windows import Window

logger = logging.getLogger(__name__)

RASTER_SUFFIXES = {".tif", ".tiff"}
PICTURE_SUFFIXES = {".jpg", ".jpeg", ".png"}
IMAGE_SUFFIXES = RASTER_SUFFIXES | PICTURE_SUFFIXES

SCALING_SAMPLE_SIZE = 1024
MIN_BLOCK_CACHE = 64 * 2**20
STRETCH_PERCENTILES = (2.0, 98.0)
# Points added along each edge of a chip outline before reprojection, so that a footprint in
# EPSG:4326 follows the curved image of a straight projected edge.
FOOTPRINT_POINTS_PER_EDGE = 16

# TIFF and GDAL metadata keys that may carry an acquisition time, most specific first.
ACQUISITION_TAGS = ("ACQUISITIONDATETIME", "ACQUISITION_DATE", "DATE_ACQUIRED", "TIFFTAG_DATETIME")


class RasterError(ValueError):
    """An image that cannot be used, with a message that names the file and what to do."""


@dataclass(frozen=True)
class Georef:
    """A georeference given from outside the file (for example the RSVQA images JSON).

    `crs` is any string rasterio's `CRS.from_user_input` accepts ("EPSG:3857"), and
    `transform` maps pixel (column, row) to CRS coordinates of the pixel's upper-left corner.
    """

    crs: str
    transform: Affine


@dataclass
class ImageInfo:
    """The facts about an opened image that rsflow needs before it reads any pixel."""

    path: Path
    width: int
    height: int
    band_count: int
    dtype: str
    crs: CRS | None
    transform: Affine
    data_bands: list[int]
    alpha_band: int | None
    nodata: float | None
    acquired: datetime | None
    warnings: list[str] = field(default_factory=list)

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None


@dataclass(frozen=True)
class ValueScaling:
    """A per-band linear map ``(value - low) / (high - low)`` to [0, 1], then clipped."""

    low: np.ndarray
    high: np.ndarray

    def apply(self, values: np.ndarray) -> np.ndarray:
        low = self.low.reshape(-1, 1, 1)
        span = np.maximum(self.high - self.low, np.finfo(np.float32).eps).reshape(-1, 1, 1)
        return np.clip((values.astype(np.float32) - low) / span, 0.0, 1.0)


@dataclass
class Chip:
    """One window of an image: values scaled to [0, 1], and where they are valid."""

    window: Window
    values: np.ndarray  # float32 [bands, height, width]
    valid: np.ndarray  # bool [height, width]

    @property
    def valid_fraction(self) -> float:
        return float(self.valid.mean()) if self.valid.size else 0.0


@contextmanager
def open_image(path: str | Path, georef: Georef | None = None) -> Iterator[tuple[rasterio.DatasetReader, ImageInfo]]:
    """Open an image with rasterio and describe it, raising `RasterError` for unusable files."""
    path = Path(path)
    if not path.is_file():
        raise RasterError(f"{path}: file not found.")
    if path.stat().st_size == 0:
        raise RasterError(f"{path}: the file is empty (0 bytes). Replace it with a complete copy.")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            dataset = rasterio.open(path)
        except RasterioIOError as error:
            raise RasterError(
                f"{path}: not a readable image ({error}). Check that it is a complete GeoTIFF, "
                "JPEG or PNG file."
            ) from error

    with dataset:
        info = describe(dataset, path, georef)
        yield dataset, info


def describe(dataset: rasterio.DatasetReader, path: Path, georef: Georef | None = None) -> ImageInfo:
    """Collect the bands, mask, georeference and acquisition time of an open dataset."""
    notes: list[str] = []
    alpha = [i + 1 for i, ci in enumerate(dataset.colorinterp) if ci == ColorInterp.alpha]
    data_bands = [i for i in range(1, dataset.count + 1) if i not in alpha]

    if georef is not None:
        crs, transform = CRS.from_user_input(georef.crs), georef.transform
    elif dataset.crs is not None and not dataset.transform.is_identity:
        crs, transform = dataset.crs, dataset.transform
    else:
        crs, transform = None, dataset.transform

    return ImageInfo(
        path=path,
        width=dataset.width,
        height=dataset.height,
        band_count=dataset.count,
        dtype=dataset.dtypes[0],
        crs=crs,
        transform=transform,
        data_bands=data_bands,
        alpha_band=alpha[0] if alpha else None,
        nodata=_usable_nodata(dataset, path, notes),
        acquired=_acquisition_time(dataset),
        warnings=notes,
    )


def _usable_nodata(dataset: rasterio.DatasetReader, path: Path, notes: list[str]) -> float | None:
    nodata = dataset.nodata
    if nodata is None or np.isnan(nodata):
        return nodata
    dtype = np.dtype(dataset.dtypes[0])
    if np.issubdtype(dtype, np.integer):
        limits = np.iinfo(dtype)
        if not (limits.min <= nodata <= limits.max) or nodata != int(nodata):
            notes.append(
                f"{path}: nodata value {nodata} is outside the range of {dtype} "
                f"({limits.min} to {limits.max}), so no pixel can carry it; it is ignored."
            )
            return None
    return nodata


def _acquisition_time(dataset: rasterio.DatasetReader) -> datetime | None:
    tags = dataset.tags()
    for key in ACQUISITION_TAGS:
        text = tags.get(key)
        if not text:
            continue
        for pattern in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
            try:
                stamp = datetime.strptime(text.strip().rstrip("Z")[:19], pattern)
            except ValueError:
                continue
            return stamp.replace(tzinfo=timezone.utc)
    return None


def select_bands(info: ImageInfo, channels: int, bands: list[int] | None = None) -> list[int]:
    """Return the 1-based band indexes to read, checked against the encoder's `channels`."""
    if bands:
        wrong = [b for b in bands if not 1 <= b <= info.band_count]
        if wrong:
            raise RasterError(
                f"{info.path}: band {wrong[0]} does not exist; the image has bands 1 to {info.band_count}."
            )
        if len(bands) != channels:
            raise RasterError(
                f"{info.path}: {len(bands)} bands selected ({_band_list(bands)}) but the encoder takes "
                f"{channels} channels. Select exactly {channels} bands with --bands."
            )
        return list(bands)

    if len(info.data_bands) != channels:
        alpha = " plus an alpha band (used as mask)" if info.alpha_band else ""
        hint = ",".join(["1"] * channels) if len(info.data_bands) == 1 else "4,3,2"
        raise RasterError(
            f"{info.path}: the image has {_bands_phrase(len(info.data_bands))}{alpha} but the encoder takes "
            f"{channels} channels. Choose {channels} bands with --bands (for example --bands {hint})."
        )
    return list(info.data_bands)


def _bands_phrase(count: int) -> str:
    return "1 data band" if count == 1 else f"{count} data bands"


def _band_list(bands: list[int]) -> str:
    return ",".join(str(b) for b in bands)


def chip_windows(width: int, height: int, chip_size: int, stride: int, edge: str = "pad") -> list[Window]:
    """Cut a `width` x `height` image into square windows, as the module docstring describes."""
    if chip_size < 1 or stride < 1:
        raise ValueError(f"chip size and stride must be positive, got {chip_size} and {stride}.")
    if edge not in ("pad", "drop"):
        raise ValueError(f"edge must be 'pad' or 'drop', got {edge!r}.")
    if width <= chip_size and height <= chip_size:
        return [Window(0, 0, width, height)]

    def offsets(length: int) -> list[int]:
        if length <= chip_size:
            return [0]
        last = length - 1 if edge == "pad" else length - chip_size
        return list(range(0, last + 1, stride))

    return [Window(col, row, chip_size, chip_size) for row in offsets(height) for col in offsets(width)]


def block_cache_bytes(dataset: rasterio.DatasetReader, info: ImageInfo, chip_size: int, bands: list[int]) -> int:
    """Return a GDAL block cache size that holds the tiles of one row of chips, at least 64 MiB.

    Chips are read row by row, so the cache only needs the block rows that one row of chips
    touches, plus one. GDAL's default (5% of the machine's RAM) lets memory grow with the scene.
    """
    block_height = dataset.block_shapes[0][0] if dataset.block_shapes else 1
    block_rows = -(-chip_size // max(block_height, 1)) + 1
    itemsize = np.dtype(info.dtype).itemsize
    needed = info.width * block_height * block_rows * len(set(bands)) * itemsize
    return int(max(MIN_BLOCK_CACHE, needed))


def value_scaling(
    dataset: rasterio.DatasetReader,
    info: ImageInfo,
    bands: list[int],
    value_range: tuple[float, float] | None = None,
) -> ValueScaling:
    """Choose the map of raw values to [0, 1] for `bands`, as the module docstring describes."""
    count = len(bands)
    if value_range is not None:
        low, high = value_range
        if not high > low:
            raise ValueError(f"value range must have high > low, got {value_range}.")
        return ValueScaling(np.full(count, low, np.float32), np.full(count, high, np.float32))
    if info.dtype == "uint8":
        return ValueScaling(np.zeros(count, np.float32), np.full(count, 255.0, np.float32))

    factor = max(1, int(np.ceil(max(info.width, info.height) / SCALING_SAMPLE_SIZE)))
    shape = (max(1, info.height // factor), max(1, info.width // factor))
    sample = _read_masked(dataset, info, bands, None, out_shape=shape, resampling=Resampling.nearest)
    low = np.zeros(count, np.float32)
    high = np.ones(count, np.float32)
    for i in range(count):
        valid = sample.values[i][sample.valid]
        valid = valid[np.isfinite(valid)]
        if valid.size:
            low[i], high[i] = np.percentile(valid, STRETCH_PERCENTILES)
        if high[i] <= low[i]:
            high[i] = low[i] + 1.0
    return ValueScaling(low, high)


def read_chip(
    dataset: rasterio.DatasetReader,
    info: ImageInfo,
    window: Window,
    bands: list[int],
    scaling: ValueScaling,
) -> Chip:
    """Read one window of `bands`, scaled to [0, 1], with its validity mask."""
    raw = _read_masked(dataset, info, bands, window)
    values = scaling.apply(np.nan_to_num(raw.values, nan=0.0, posinf=0.0, neginf=0.0))
    valid = raw.valid & np.all(np.isfinite(raw.values), axis=0)
    values[:, ~valid] = 0.0
    return Chip(window=window, values=values, valid=valid)


def _read_masked(
    dataset: rasterio.DatasetReader,
    info: ImageInfo,
    bands: list[int],
    window: Window | None,
    out_shape: tuple[int, int] | None = None,
    resampling: Resampling = Resampling.nearest,
) -> Chip:
    boundless = window is not None and (
        window.col_off < 0
        or window.row_off < 0
        or window.col_off + window.width > info.width
        or window.row_off + window.height > info.height
    )
    kwargs = {"window": window, "boundless": boundless, "resampling": resampling}
    if out_shape is not None:
        kwargs["out_shape"] = (len(bands), *out_shape)
    try:
        values = dataset.read(bands, **kwargs)
        unique_bands = sorted(set(bands))
        mask_kwargs = dict(kwargs)
        if out_shape is not None:
            mask_kwargs["out_shape"] = (len(unique_bands), *out_shape)
        masks = dataset.read_masks(unique_bands, **mask_kwargs)
    except RasterioIOError as error:
        where = f"window {window}" if window is not None else "overview sample"
        raise RasterError(
            f"{info.path}: reading the {where} failed ({error}). The file may be truncated or "
            "corrupt; replace it with a complete copy."
        ) from error

    valid = np.all(masks > 0, axis=0)
    if info.nodata is not None and not np.isnan(info.nodata):
        valid &= np.all(values != info.nodata, axis=0)
    if boundless:
        valid &= _inside_image(window, info, valid.shape)
    return Chip(window=window, values=values.astype(np.float32), valid=valid)


def _inside_image(window: Window, info: ImageInfo, shape: tuple[int, int]) -> np.ndarray:
    rows = np.arange(shape[0]) + int(window.row_off)
    cols = np.arange(shape[1]) + int(window.col_off)
    return ((rows >= 0) & (rows < info.height))[:, None] & ((cols >= 0) & (cols < info.width))[None, :]


@dataclass(frozen=True)
class Place:
    """A chip's place on Earth: WKB footprint in EPSG:4326 and the centroid in degrees."""

    footprint: bytes
    lon: float
    lat: float


def chip_places(info: ImageInfo, windows: list[Window]) -> list[Place | None]:
    """Return the footprint and centre of the part of each window inside the image.

    Returns Nones for an image without georeference. All outlines are reprojected in one call; an
    outline that crosses the antimeridian is redone with GDAL's antimeridian cutting.
    """
    if info.crs is None:
        return [None] * len(windows)
    if not windows:
        return []

    outlines = [_outline(info, window) for window in windows]
    centers = np.array([_center(info, window) for window in windows])
    points = np.concatenate([*outlines, centers])
    lons, lats = (np.asarray(values) for values in warp_transform(info.crs, "EPSG:4326", points[:, 0], points[:, 1]))
    center_lons, center_lats = lons[-len(windows):], lats[-len(windows):]

    places: list[Place | None] = []
    start = 0
    for i, (window, outline) in enumerate(zip(windows, outlines)):
        ring_lon, ring_lat = lons[start : start + len(outline)], lats[start : start + len(outline)]
        start += len(outline)
        ring_ok = np.all(np.isfinite(ring_lon)) and np.all(np.isfinite(ring_lat))
        if not (ring_ok and np.isfinite(center_lons[i]) and np.isfinite(center_lats[i])):
            raise RasterError(
                f"{info.path}: window {window} does not map to valid longitude and latitude; check the CRS."
            )
        if np.ptp(ring_lon) > 180.0:
            footprint = _antimeridian_footprint(info, window)
        else:
            footprint = shapely.Polygon(np.column_stack([ring_lon, ring_lat]))
        places.append(
            Place(
                footprint=shapely.to_wkb(shapely.make_valid(footprint)),
                lon=float(center_lons[i]),
                lat=float(center_lats[i]),
            )
        )
    return places


def chip_place(info: ImageInfo, window: Window) -> Place | None:
    """Return the footprint and centre of one window; see `chip_places`."""
    return chip_places(info, [window])[0]


def _inside_bounds(info: ImageInfo, window: Window) -> tuple[float, float, float, float]:
    # A padded edge chip holds data only inside the image, so its footprint stops at the image edge.
    col0, row0 = max(float(window.col_off), 0.0), max(float(window.row_off), 0.0)
    col1 = min(float(window.col_off + window.width), float(info.width))
    row1 = min(float(window.row_off + window.height), float(info.height))
    return col0, row0, col1, row1


def _outline(info: ImageInfo, window: Window) -> np.ndarray:
    """Return the window outline in CRS coordinates, `FOOTPRINT_POINTS_PER_EDGE` points per edge."""
    col0, row0, col1, row1 = _inside_bounds(info, window)
    steps = np.linspace(0.0, 1.0, FOOTPRINT_POINTS_PER_EDGE, endpoint=False)
    cols = np.concatenate([col0 + (col1 - col0) * steps, np.full_like(steps, col1),
                           col1 - (col1 - col0) * steps, np.full_like(steps, col0)])
    rows = np.concatenate([np.full_like(steps, row0), row0 + (row1 - row0) * steps,
                           np.full_like(steps, row1), row1 - (row1 - row0) * steps])
    a, b, c, d, e, f = info.transform[:6]
    return np.column_stack([a * cols + b * rows + c, d * cols + e * rows + f])


def _antimeridian_footprint(info: ImageInfo, window: Window):
    outline = shapely.Polygon(_outline(info, window))
    geometry = transform_geom(
        info.crs, "EPSG:4326", shapely.geometry.mapping(outline), antimeridian_cutting=True, precision=-1
    )
    return shapely.geometry.shape(geometry)


def _center(info: ImageInfo, window: Window) -> tuple[float, float]:
    col0, row0, col1, row1 = _inside_bounds(info, window)
    return info.transform @ ((col0 + col1) / 2, (row0 + row1) / 2)
