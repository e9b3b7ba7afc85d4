"""GeoParquet export of a real store: `geo` metadata, WKB footprints, bounding boxes, vectors."""

from __future__ import annotations

import json
import shutil

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
import typer
from typer.testing import CliRunner

from rsflow.cli.export import export as export_command
from rsflow.store import export as export_module
from rsflow.store.db import Store, StoreError
from rsflow.store.export import ExportError, export_geoparquet
from rsflow.store.schema import PAIRS_SCHEMA, texts_schema

PREFIX_SLOTS = 2
PRIOR_DIM = 3


@pytest.fixture(scope="module")
def store(lr_store_template, tmp_path_factory) -> Store:
    """The RSVQA low-resolution store with three texts: two points, a polygon, and one without place."""
    path = tmp_path_factory.mktemp("export") / "store"
    shutil.copytree(lr_store_template, path)
    opened = Store.open(path)
    chip = opened.table("images").to_arrow().slice(0, 1).to_pylist()[0]
    centre = shapely.Point(chip["lon"], chip["lat"])
    geometries = [centre, shapely.Point(chip["lon"] + 0.01, chip["lat"]), centre.buffer(0.001), None]

    schema = texts_schema(PREFIX_SLOTS, PRIOR_DIM)
    prior_type = schema.field("prior").type
    nested = pa.types.is_fixed_size_list(prior_type.value_type)
    shape = (PREFIX_SLOTS, PRIOR_DIM) if nested else (PREFIX_SLOTS * PRIOR_DIM,)
    texts = pa.table(
        {
            "text_id": [f"text-{index}" for index in range(4)],
            "text": ["a river", "a road", "a lake", "no place"],
            "kind": ["caption"] * 4,
            "source": ["test"] * 4,
            "geometry": [None if shape_ is None else shapely.to_wkb(shape_) for shape_ in geometries],
            "lon": [chip["lon"]] * 3 + [None],
            "lat": [chip["lat"]] * 3 + [None],
            "cell": [chip["cell"]] * 3 + [None],
            "image_ref": [None] * 4,
            "attributes": [None] * 4,
            "prior": [np.full(shape, index, np.float32).tolist() for index in range(4)],
        },
        schema=schema,
    )
    opened.add_rows("texts", "text_id", texts, schema)
    pairs = pa.table({"chip_id": [chip["chip_id"]], "text_id": ["text-0"], "how": ["cell"]})
    opened.replace_pairs(pairs.cast(PAIRS_SCHEMA))
    return opened


@pytest.fixture(scope="module")
def exported(store, tmp_path_factory) -> dict:
    paths = export_geoparquet(store, tmp_path_factory.mktemp("geoparquet") / "out", ("images", "texts", "pairs"))
    return {path.stem: path for path in paths}


def geo(path) -> dict:
    return json.loads(pq.read_schema(path).metadata[b"geo"])


def test_export_file_per_table(exported):
    assert sorted(exported) == ["images", "pairs", "texts"]
    assert all(path.name == f"{name}.parquet" for name, path in exported.items())


def test_export_images_geo_metadata(store, exported):
    metadata = geo(exported["images"])
    column = metadata["columns"]["footprint"]
    footprints = shapely.from_wkb(store.table("images").to_arrow()["footprint"].to_pylist())

    assert metadata["version"] == "1.1.0"
    assert metadata["primary_column"] == "footprint"
    assert list(metadata["columns"]) == ["footprint"]
    assert column["encoding"] == "WKB"
    assert column["geometry_types"] == ["Polygon"]
    assert "crs" not in column
    np.testing.assert_allclose(column["bbox"], shapely.total_bounds(footprints))
    assert column["covering"]["bbox"]["xmin"] == ["footprint_bbox", "xmin"]
    assert column["covering"]["bbox"]["ymax"] == ["footprint_bbox", "ymax"]


def test_export_footprints_round_trip(store, exported):
    written = pq.read_table(exported["images"]).sort_by("chip_id")
    stored = store.table("images").to_arrow().sort_by("chip_id")

    assert written.num_rows == stored.num_rows == 112
    assert written["chip_id"].to_pylist() == stored["chip_id"].to_pylist()
    decoded = shapely.from_wkb(written["footprint"].to_pylist())
    expected = shapely.from_wkb(stored["footprint"].to_pylist())
    assert shapely.equals_exact(decoded, expected, tolerance=0).all()


def test_export_bbox_column(exported):
    written = pq.read_table(exported["images"])
    boxes = written["footprint_bbox"].combine_chunks()
    bounds = shapely.bounds(shapely.from_wkb(written["footprint"].to_pylist()))

    assert written.schema.field("footprint_bbox").type.names == ["xmin", "ymin", "xmax", "ymax"]
    for index, name in enumerate(["xmin", "ymin", "xmax", "ymax"]):
        np.testing.assert_array_equal(boxes.field(name).to_numpy(), bounds[:, index])


def test_export_embeddings_fixed_size(store, exported):
    written = pq.read_table(exported["images"]).sort_by("chip_id")
    stored = store.table("images").to_arrow().sort_by("chip_id")

    assert written.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    np.testing.assert_array_equal(
        np.array(written["embedding"].to_pylist(), np.float32), np.array(stored["embedding"].to_pylist(), np.float32)
    )


def test_export_keeps_other_columns(store, exported):
    written = pq.read_table(exported["images"])
    stored = store.table("images").schema
    assert written.column_names == stored.names + ["footprint_bbox"]
    assert written.schema.field("window").type == stored.field("window").type
    assert written.schema.field("acquired").type == stored.field("acquired").type


def test_export_duckdb_reads_geometry(store, exported):
    """DuckDB's own GeoParquet reader turns the footprint into a GEOMETRY in OGC:CRS84."""
    connection = duckdb.connect()
    try:
        described = connection.sql(f"DESCRIBE SELECT * FROM read_parquet('{exported['images']}')").fetchall()
        types = {row[0]: row[1] for row in described}
        ((chip_id, text),) = connection.sql(
            f"SELECT chip_id, ST_AsText(footprint) FROM read_parquet('{exported['images']}') ORDER BY chip_id LIMIT 1"
        ).fetchall()
    finally:
        connection.close()
    stored = store.table("images").to_arrow().sort_by("chip_id").slice(0, 1).to_pylist()[0]

    assert types["footprint"] == "GEOMETRY('OGC:CRS84')"
    assert chip_id == stored["chip_id"]
    assert shapely.equals_exact(shapely.from_wkt(text), shapely.from_wkb(stored["footprint"]), tolerance=1e-12)


def test_export_texts_geometry_types(exported):
    column = geo(exported["texts"])["columns"]["geometry"]
    assert geo(exported["texts"])["primary_column"] == "geometry"
    assert column["geometry_types"] == ["Point", "Polygon"]


def test_export_null_geometry_bbox(exported):
    written = pq.read_table(exported["texts"]).sort_by("text_id").to_pylist()
    assert written[3]["geometry"] is None
    assert written[3]["geometry_bbox"] is None
    assert written[0]["geometry_bbox"]["xmin"] == pytest.approx(shapely.from_wkb(written[0]["geometry"]).x)


def test_export_texts_prior_kept(store, exported):
    written = pq.read_table(exported["texts"])
    assert written.schema.field("prior").type == store.table("texts").schema.field("prior").type


def test_export_pairs_plain_parquet(exported):
    schema = pq.read_schema(exported["pairs"])
    assert b"geo" not in schema.metadata
    assert schema.names == ["chip_id", "text_id", "how"]
    assert pq.read_table(exported["pairs"]).num_rows == 1


def test_export_records_store(store, exported):
    metadata = json.loads(pq.read_schema(exported["images"]).metadata[b"rsflow"])
    assert metadata["table"] == "images"
    assert metadata["table_version"] == store.version("images")
    assert metadata["manifest"]["encoder"]["embedding_dim"] == 32


def test_export_streams_small_batches(store, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "MAX_BATCH_ROWS", 10)
    (path,) = export_geoparquet(store, tmp_path / "chips.parquet", ["images"])
    metadata = pq.read_metadata(path)

    assert metadata.num_rows == 112
    assert metadata.num_row_groups >= 12
    assert geo(path)["columns"]["footprint"]["geometry_types"] == ["Polygon"]


def test_export_one_file_path(store, tmp_path):
    assert export_geoparquet(store, tmp_path / "texts.parquet", ["texts"]) == [tmp_path / "texts.parquet"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["texts.parquet"]


def test_export_file_two_tables(store, tmp_path):
    with pytest.raises(ExportError, match="a file path takes one table, but 2 were given"):
        export_geoparquet(store, tmp_path / "all.parquet", ["images", "texts"])


def test_export_missing_table(tmp_path, store):
    with pytest.raises(StoreError, match="no nothing table"):
        export_geoparquet(store, tmp_path / "out", ["images", "nothing"])
    assert not (tmp_path / "out").exists()


def test_export_no_tables(store, tmp_path):
    with pytest.raises(ExportError, match="No table to export"):
        export_geoparquet(store, tmp_path, [])


# Command line -------------------------------------------------------------------------------------


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    app.command()(export_command)

    @app.command()
    def unused() -> None:
        """Make typer keep `export` as a subcommand name."""

    return app


def test_cli_export_default_tables(app, store, tmp_path):
    result = CliRunner().invoke(app, ["export", str(tmp_path / "out"), "--store", str(store.path), "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads(result.stdout)
    assert [entry["table"] for entry in written] == ["images", "texts"]
    assert written[0]["rows"] == 112
    assert geo(written[1]["path"])["primary_column"] == "geometry"


def test_cli_export_rejects_format(app, store, tmp_path):
    result = CliRunner().invoke(app, ["export", str(tmp_path), "--store", str(store.path), "--format", "shapefile"])
    assert result.exit_code == 2
    assert "geoparquet" in result.output


def test_cli_export_file_two_tables(app, store, tmp_path):
    result = CliRunner().invoke(
        app, ["export", str(tmp_path / "x.parquet"), "--store", str(store.path), "-t", "images", "-t", "pairs"]
    )
    assert result.exit_code == 1
    assert "give a folder" in result.output
