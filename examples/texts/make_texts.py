"""Write the example text sources of examples/texts/ from the bundled sample imagery.

Run ``python examples/texts/make_texts.py``. Coordinates come from the sample rasters themselves
(rasterio reads their transforms and converts pixel positions to EPSG:4326 degrees), so every
text lies inside the scene it describes. Each text describes what the image shows at that
place, read by eye from the bundled rasters. The texts name no towns because the scenes were
not checked against a map.

Files written:

- ``points.jsonl``: points inside the RSVQA-LR release tiles, the Landsat scene and the
  cloud-optimized GeoTIFF scene, one JSON object per line (``text``, ``lon``, ``lat``,
  ``image``).
- ``areas.csv``: WKT polygons (EPSG:4326) that cover parts of those scenes.
- ``ljubljana_lulc.geojson``: the land-use polygons of ``TestEOPatch_LULC.gpkg`` that overlap
  ``import-tiff-test2.tiff``, reprojected to EPSG:4326 (text in ``LULC_NAME``).
- ``bad_rows.jsonl``: deliberately broken rows for the documentation of rejections; the reader
  keeps one row, repairs one and rejects the others (see docs/texts.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyogrio
import rasterio
import shapely
from rasterio.warp import transform as transform_coords
from rasterio.warp import transform_geom

HERE = Path(__file__).resolve().parent
IMAGERY = HERE.parent / "data" / "imagery"

# (raster, fraction across, fraction down, text): what the image shows at that pixel.
POINTS = [
    ("rsvqa_lr/52.tif", 0.50, 0.55, "dense residential streets in the centre of a small town"),
    ("rsvqa_lr/52.tif", 0.08, 0.40, "arable fields in long narrow strips"),
    ("rsvqa_lr/55.tif", 0.12, 0.50, "a wide river with boats on it"),
    ("rsvqa_lr/55.tif", 0.35, 0.15, "large industrial buildings beside a road"),
    ("rsvqa_lr/55.tif", 0.75, 0.75, "arable fields"),
    ("rsvqa_lr/62.tif", 0.35, 0.35, "open water of a lake"),
    ("rsvqa_lr/62.tif", 0.45, 0.92, "houses of a village south of a lake"),
    ("rsvqa_lr/63.tif", 0.10, 0.88, "large flat-roofed buildings"),
    ("rsvqa_lr/63.tif", 0.85, 0.60, "fields next to woodland"),
    ("rsvqa_lr/78.tif", 0.15, 0.10, "a residential area with houses and gardens"),
    ("rsvqa_lr/78.tif", 0.55, 0.93, "bare sand at the edge of woodland"),
    ("landsat/RGB.byte.tif", 0.35, 0.45, "vegetated land on an island under small scattered clouds"),
    ("landsat/RGB.byte.tif", 0.65, 0.50, "deep dark water with small scattered clouds"),
    ("landsat/RGB.byte.tif", 0.10, 0.55, "shallow turquoise water west of an island"),
    ("cog/cogeo.tif", 0.55, 0.20, "snow-covered open ground"),
    ("cog/cogeo.tif", 0.48, 0.45, "a road at a tunnel portal in a snowy hillside"),
    ("cog/cogeo.tif", 0.30, 0.75, "forest with snow on the ground"),
]

# (raster, polygon ring in pixel (column, row) positions, text).
AREAS = [
    ("rsvqa_lr/62.tif", [(60, 40), (140, 40), (140, 150), (60, 150)], "open water of a lake"),
    ("rsvqa_lr/52.tif", [(80, 60), (200, 60), (200, 230), (80, 230)], "built-up area of a small town"),
    ("rsvqa_lr/55.tif", [(15, 0), (70, 0), (80, 256), (35, 256)], "a wide river with boats on it"),
    ("cog/cogeo.tif", [(200, 180), (300, 180), (300, 260), (200, 260)], "a road entering a tunnel in a snowy hillside"),
]

BAD_ROWS = [
    '{"text": "a valid point row", "lon": 5.0847, "lat": 51.6655}',
    '{"text": "a row cut off in the middle", "lon": 5.08',
    '{"text": "no place given"}',
    '{"text": "lat and lon written the wrong way round", "lon": 37.668, "lat": 128.658}',
    '{"text": "longitude beyond the date line", "lon": 200.0, "lat": 10.0}',
    '{"text": "   ", "lon": 5.08, "lat": 51.66}',
    '{"text": "latitude that is not a number", "lon": 5.08, "lat": "north"}',
    '{"text": "a polygon that crosses itself", "wkt": "POLYGON ((5.06 51.65, 5.10 51.67, 5.10 51.65, 5.06 51.67, 5.06 51.65))"}',
    '{"text": "an empty polygon", "wkt": "POLYGON EMPTY"}',
    '{"text": "broken WKT", "wkt": "POLYGON ((5.06 51.65, 5.10"}',
]


def pixel_to_lonlat(src: rasterio.DatasetReader, column: float, row: float) -> tuple[float, float]:
    """Convert a pixel position of `src` to EPSG:4326 longitude and latitude."""
    x, y = src.xy(row, column, offset="ul")
    lons, lats = transform_coords(src.crs, "EPSG:4326", [x], [y])
    return round(lons[0], 6), round(lats[0], 6)


def check_not_nodata(src: rasterio.DatasetReader, column: int, row: int, name: str) -> None:
    """Raise when the pixel is the scene's black border, so no text lands outside the picture."""
    values = src.read(window=((row, row + 1), (column, column + 1)))[:, 0, 0]
    if not values.any():
        raise ValueError(f"pixel ({column}, {row}) of {name} is nodata; move the point inside the scene")


def write_points(path: Path) -> None:
    """Write points.jsonl."""
    lines = []
    for name, fx, fy, text in POINTS:
        with rasterio.open(IMAGERY / name) as src:
            column, row = int(fx * src.width), int(fy * src.height)
            check_not_nodata(src, column, row, name)
            lon, lat = pixel_to_lonlat(src, column + 0.5, row + 0.5)
        lines.append(json.dumps({"text": text, "lon": lon, "lat": lat, "image": name}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_areas(path: Path) -> None:
    """Write areas.csv with one WKT polygon per row."""
    rows = ["text,wkt,image"]
    for name, ring, text in AREAS:
        with rasterio.open(IMAGERY / name) as src:
            corners = [pixel_to_lonlat(src, column, row) for column, row in ring]
        polygon = shapely.Polygon(corners)
        rows.append(f'"{text}","{shapely.to_wkt(polygon, rounding_precision=6)}",{name}')
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def write_lulc(path: Path) -> None:
    """Write the LULC polygons that overlap import-tiff-test2.tiff as EPSG:4326 GeoJSON."""
    with rasterio.open(IMAGERY / "ljubljana" / "import-tiff-test2.tiff") as src:
        scene = shapely.box(*src.bounds)
    meta, table = pyogrio.read_arrow(IMAGERY / "ljubljana" / "TestEOPatch_LULC.gpkg")
    geometries = [shapely.from_wkb(wkb) for wkb in table.column(meta["geometry_name"]).to_pylist()]
    properties = table.drop_columns([meta["geometry_name"]]).to_pylist()

    features = []
    for props, geometry in zip(properties, geometries):
        mapped = transform_geom(meta["crs"], "EPSG:4326", shapely.geometry.mapping(geometry), precision=7)
        if not props["LULC_NAME"] or not shapely.geometry.shape(mapped).intersects(scene):
            continue
        keep = {key: props[key] for key in ("RABA_ID", "LULC_ID", "LULC_NAME", "AREA", "DATE")}
        features.append({"type": "Feature", "properties": keep, "geometry": mapped})
    collection = {"type": "FeatureCollection", "features": features}
    path.write_text(json.dumps(collection) + "\n", encoding="utf-8")


def main() -> None:
    """Write every example file next to this script."""
    write_points(HERE / "points.jsonl")
    write_areas(HERE / "areas.csv")
    write_lulc(HERE / "ljubljana_lulc.geojson")
    (HERE / "bad_rows.jsonl").write_text("\n".join(BAD_ROWS) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
