"""Reading rasters: windows, bands, nodata, scaling and footprints, on the real sample imagery."""

from __future__ import annotations

from pathlib import Path

import h3
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window

from rsflow.raster import (
    RasterError,
    chip_place,
    chip_windows,
    open_image,
    read_chip,
    select_bands,
    _usable_nodata,
    value_scaling,
)


def write_geotiff(path: Path, data: np.ndarray, crs: str, transform, nodata=None) -> Path:
    with rasterio.open(
        path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
        dtype=data.dtype, crs=crs, transform=transform, nodata=nodata,
    ) as dst:
        dst.write(data)
    return path


def test_windows_pad_cover_whole_image():
    windows = chip_windows(100, 70, 32, 32, "pad")
    assert len(windows) == 4 * 3
    assert max(w.col_off + w.width for w in windows) >= 100
    assert max(w.row_off + w.height for w in windows) >= 70


def test_windows_drop_stay_inside():
    windows = chip_windows(100, 70, 32, 32, "drop")
    assert len(windows) == 3 * 2
    assert all(w.col_off + w.width <= 100 and w.row_off + w.height <= 70 for w in windows)


def test_windows_overlap_with_stride():
    windows = chip_windows(64, 32, 32, 16, "drop")
    assert [int(w.col_off) for w in windows] == [0, 16, 32]


def test_windows_small_image_is_one_chip():
    assert chip_windows(20, 10, 32, 32) == [Window(0, 0, 20, 10)]


def test_windows_reject_bad_sizes():
    with pytest.raises(ValueError, match="positive"):
        chip_windows(10, 10, 0, 1)
    with pytest.raises(ValueError, match="edge"):
        chip_windows(10, 10, 4, 4, "wrap")


def test_bands_multispectral_need_selection(imagery_dir):
    with open_image(imagery_dir / "eurosat_ms" / "Pasture" / "Pasture_300.tif") as (_, info):
        assert info.band_count == 13
        with pytest.raises(RasterError, match="13 data bands.*--bands"):
            select_bands(info, 3)
        assert select_bands(info, 3, [4, 3, 2]) == [4, 3, 2]
        with pytest.raises(RasterError, match="band 14 does not exist"):
            select_bands(info, 3, [14, 3, 2])
        with pytest.raises(RasterError, match="2 bands selected"):
            select_bands(info, 3, [4, 3])


def test_bands_single_band_repeat(imagery_dir):
    with open_image(imagery_dir / "ljubljana" / "import-tiff-test1.tiff") as (_, info):
        with pytest.raises(RasterError, match="--bands 1,1,1"):
            select_bands(info, 3)
        assert select_bands(info, 3, [1, 1, 1]) == [1, 1, 1]


def test_rgba_alpha_is_mask(test_data_dir):
    path = test_data_dir / "RGBA.uint16.tif"
    with open_image(path) as (dataset, info):
        assert info.alpha_band == 4
        assert select_bands(info, 3) == [1, 2, 3]
        alpha = dataset.read(4)
        scaling = value_scaling(dataset, info, [1, 2, 3])
        chip = read_chip(dataset, info, Window(0, 0, info.width, info.height), [1, 2, 3], scaling)
    np.testing.assert_array_equal(chip.valid, alpha > 0)


def test_nodata_border_masked(imagery_dir):
    path = imagery_dir / "landsat" / "RGB.byte.tif"
    with open_image(path) as (dataset, info):
        assert info.nodata == 0
        window = Window(0, 0, 64, 64)
        scaling = value_scaling(dataset, info, [1, 2, 3])
        chip = read_chip(dataset, info, window, [1, 2, 3], scaling)
        raw = dataset.read([1, 2, 3], window=window)
    expected = np.all(raw != 0, axis=0)
    np.testing.assert_array_equal(chip.valid, expected)
    assert not chip.valid.all()
    assert np.all(chip.values[:, ~chip.valid] == 0)


def test_all_nodata_has_no_valid_pixel(test_data_dir):
    with open_image(test_data_dir / "all-nodata.tif") as (dataset, info):
        bands = [1, 2, 3]
        scaling = value_scaling(dataset, info, bands)
        chip = read_chip(dataset, info, Window(0, 0, 64, 64), bands, scaling)
    assert not chip.valid.any()


def test_nodata_out_of_dtype_range_ignored(tmp_path):
    data = np.full((3, 8, 8), 7, dtype=np.uint8)
    path = write_geotiff(tmp_path / "n.tif", data, "EPSG:4326", from_origin(10, 50, 0.01, 0.01), nodata=255)
    # rasterio refuses to write such a value, so patch the GDAL_NODATA tag text "255" to "-99".
    raw = path.read_bytes()
    assert raw.count(b"255\x00") == 1
    path.write_bytes(raw.replace(b"255\x00", b"-99\x00"))
    with open_image(path) as (dataset, info):
        assert info.nodata is None
        chip = read_chip(dataset, info, Window(0, 0, 8, 8), [1, 2, 3], value_scaling(dataset, info, [1, 2, 3]))
    assert chip.valid.all()


def test_nodata_out_of_range_warning(tmp_path):
    class FakeDataset:
        nodata = 300.0
        dtypes = ("uint8",)

    notes: list[str] = []
    assert _usable_nodata(FakeDataset(), tmp_path / "x.tif", notes) is None
    assert "nodata value 300.0 is outside the range of uint8" in notes[0]


def test_padded_edge_outside_is_invalid(imagery_dir):
    path = imagery_dir / "rsvqa_lr" / "52.tif"
    with open_image(path) as (dataset, info):
        window = Window(224, 224, 64, 64)
        chip = read_chip(dataset, info, window, [1, 2, 3], value_scaling(dataset, info, [1, 2, 3]))
    assert chip.values.shape == (3, 64, 64)
    assert chip.valid[:32, :32].all()
    assert not chip.valid[32:, :].any()
    assert not chip.valid[:, 32:].any()


def test_scaling_uint8_divides_by_255(imagery_dir):
    with open_image(imagery_dir / "rsvqa_lr" / "52.tif") as (dataset, info):
        scaling = value_scaling(dataset, info, [1, 2, 3])
        chip = read_chip(dataset, info, Window(0, 0, 16, 16), [1, 2, 3], scaling)
        raw = dataset.read([1, 2, 3], window=Window(0, 0, 16, 16))
    np.testing.assert_allclose(chip.values, raw / 255.0, atol=1e-6)


def test_scaling_uint16_stretch(imagery_dir):
    path = imagery_dir / "eurosat_ms" / "Pasture" / "Pasture_300.tif"
    with open_image(path) as (dataset, info):
        scaling = value_scaling(dataset, info, [4, 3, 2])
        raw = dataset.read([4, 3, 2]).astype(np.float64)
    for i in range(3):
        low, high = np.percentile(raw[i], [2, 98])
        assert scaling.low[i] == pytest.approx(low, rel=1e-5)
        assert scaling.high[i] == pytest.approx(high, rel=1e-5)


def test_scaling_fixed_range(imagery_dir):
    path = imagery_dir / "eurosat_ms" / "Pasture" / "Pasture_300.tif"
    with open_image(path) as (dataset, info):
        scaling = value_scaling(dataset, info, [4, 3, 2], value_range=(0, 10000))
        chip = read_chip(dataset, info, Window(0, 0, 64, 64), [4, 3, 2], scaling)
        raw = dataset.read([4, 3, 2])
    np.testing.assert_allclose(chip.values, np.clip(raw / 10000.0, 0, 1), atol=1e-6)


@pytest.mark.parametrize(
    "relative, crs",
    [
        ("landsat/RGB.byte.tif", "EPSG:32618"),
        ("rsvqa_lr/52.tif", "EPSG:3857"),
        ("ljubljana/import-tiff-test2.tiff", "EPSG:4326"),
        ("eurosat_ms/AnnualCrop/AnnualCrop_1.tif", "EPSG:32635"),
    ],
)
def test_place_matches_rasterio(imagery_dir, relative, crs):
    with open_image(imagery_dir / relative) as (dataset, info):
        assert info.crs.to_string() == crs
        window = Window(0, 0, min(32, info.width), min(32, info.height))
        place = chip_place(info, window)
        left, top = dataset.transform @ (0, 0)
        right, bottom = dataset.transform @ (window.width, window.height)
        (lon,), (lat,) = warp_transform(dataset.crs, "EPSG:4326", [(left + right) / 2], [(top + bottom) / 2])
        corner_lons, corner_lats = warp_transform(
            dataset.crs, "EPSG:4326", [left, right, right, left], [top, top, bottom, bottom]
        )

    assert place.lon == pytest.approx(lon, abs=1e-9)
    assert place.lat == pytest.approx(lat, abs=1e-9)
    footprint = shapely.from_wkb(place.footprint)
    assert footprint.is_valid
    for corner in zip(corner_lons, corner_lats):
        assert footprint.distance(shapely.Point(corner)) < 1e-9
    assert footprint.contains(shapely.Point(lon, lat))
    assert h3.latlng_to_cell(place.lat, place.lon, 7) == h3.latlng_to_cell(lat, lon, 7)


def test_place_padded_chip_stops_at_edge(imagery_dir):
    with open_image(imagery_dir / "rsvqa_lr" / "52.tif") as (dataset, info):
        place = chip_place(info, Window(224, 224, 64, 64))
        bounds = rasterio.warp.transform_bounds(dataset.crs, "EPSG:4326", *dataset.bounds)
    west, south, east, north = shapely.from_wkb(place.footprint).bounds
    assert east <= bounds[2] + 1e-9
    assert south >= bounds[1] - 1e-9


def test_place_across_antimeridian(tmp_path):
    # UTM zone 60 near Fiji: the 180th meridian runs through this 6.4 km scene.
    x0, y0 = 814000.0, 8010000.0
    transform = from_origin(x0, y0, 100.0, 100.0)
    data = np.full((3, 64, 64), 100, dtype=np.uint8)
    path = write_geotiff(tmp_path / "am.tif", data, "EPSG:32760", transform)
    with open_image(path) as (_, info):
        place = chip_place(info, Window(0, 0, 64, 64))
    footprint = shapely.from_wkb(place.footprint)
    assert footprint.geom_type == "MultiPolygon"
    lons = shapely.get_coordinates(footprint)[:, 0]
    assert lons.min() >= -180
    assert lons.max() <= 180
    assert (lons > 179).any()
    assert (lons < -179).any()
    assert -180 <= place.lon <= 180


def test_place_none_without_georeference(imagery_dir):
    with open_image(imagery_dir / "ucmerced" / "forest" / "forest10.tif") as (_, info):
        assert not info.georeferenced
        assert chip_place(info, Window(0, 0, 32, 32)) is None


def test_open_rejects_bad_files(tmp_path, imagery_dir):
    empty = tmp_path / "empty.tif"
    empty.touch()
    text = tmp_path / "notes.tif"
    text.write_text("this is not an image\n")
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes((imagery_dir / "rsvqa_lr" / "52.tif").read_bytes()[:50_000])

    with pytest.raises(RasterError, match="empty.tif: the file is empty"):
        with open_image(empty):
            pass
    with pytest.raises(RasterError, match="notes.tif: not a readable image"):
        with open_image(text):
            pass
    with pytest.raises(RasterError, match="truncated.tif: reading .* failed"):
        with open_image(truncated) as (dataset, info):
            read_chip(dataset, info, Window(0, 192, 64, 64), [1, 2, 3], value_scaling(dataset, info, [1, 2, 3]))
    with pytest.raises(RasterError, match="file not found"):
        with open_image(tmp_path / "missing.tif"):
            pass
