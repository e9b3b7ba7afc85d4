"""`rsflow sql` on a real store: DuckDB over the Lance tables, read-only, in every output format."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import shapely
import typer
from typer.testing import CliRunner

from rsflow.cli.sql import sql as sql_command
from rsflow.store import sql as sql_module
from rsflow.store.db import Store
from rsflow.store.info import store_summary
from rsflow.store.schema import PAIRS_SCHEMA, texts_schema
from rsflow.store.sql import SqlError, connect, read_only_statement, run_sql

PREFIX_SLOTS = 2
PRIOR_DIM = 4


@pytest.fixture(scope="module")
def store(lr_store_template, tmp_path_factory) -> Store:
    """The RSVQA low-resolution store with three texts at the centres of three chips, paired by cell.

    One copy serves the whole module: `rsflow sql` never changes it, which the write tests check.
    """
    path = tmp_path_factory.mktemp("sql") / "store"
    shutil.copytree(lr_store_template, path)
    opened = Store.open(path)
    chips = opened.table("images").to_arrow().sort_by("chip_id").slice(0, 3).to_pylist()
    schema = texts_schema(PREFIX_SLOTS, PRIOR_DIM)
    texts = pa.table(
        {
            "text_id": [f"text-{index}" for index in range(3)],
            "text": ["a river", "fields", "a town"],
            "kind": ["caption"] * 3,
            "source": ["test"] * 3,
            "geometry": [shapely.to_wkb(shapely.Point(chip["lon"], chip["lat"])) for chip in chips],
            "lon": [chip["lon"] for chip in chips],
            "lat": [chip["lat"] for chip in chips],
            "cell": [chip["cell"] for chip in chips],
            "image_ref": [None] * 3,
            "attributes": [None] * 3,
            "prior": [prior_value(schema, float(index)) for index in range(3)],
        },
        schema=schema,
    )
    opened.add_rows("texts", "text_id", texts, schema)
    pairs = pa.table({"chip_id": [chip["chip_id"] for chip in chips], "text_id": texts["text_id"], "how": ["cell"] * 3})
    opened.replace_pairs(pairs.cast(PAIRS_SCHEMA))
    return opened


def prior_value(schema: pa.Schema, value: float) -> list:
    """Return a prior of K x D `value`s in the shape of the schema: nested [K][D] or flattened."""
    nested = pa.types.is_fixed_size_list(schema.field("prior").type.value_type)
    shape = (PREFIX_SLOTS, PRIOR_DIM) if nested else (PREFIX_SLOTS * PRIOR_DIM,)
    return np.full(shape, value, np.float32).tolist()


def prior_sql_type(schema: pa.Schema) -> str:
    nested = pa.types.is_fixed_size_list(schema.field("prior").type.value_type)
    return f"FLOAT[{PRIOR_DIM}][{PREFIX_SLOTS}]" if nested else f"FLOAT[{PREFIX_SLOTS * PRIOR_DIM}]"


def scalar(store: Store, query: str):
    result = run_sql(store, query)
    assert result.row_count == 1
    return result.rows[0][0]


# Views over the store ---------------------------------------------------------------------------


@pytest.mark.parametrize("table", ["images", "texts", "pairs", "sources"])
def test_sql_counts_match_store(store, table):
    assert scalar(store, f"SELECT count(*) FROM {table}") == store.count(table)


def test_sql_images_count(store):
    assert scalar(store, "SELECT count(*) FROM images") == 7 * 16


def test_sql_vector_types(store):
    result = run_sql(store, "SELECT embedding, prior FROM images, texts LIMIT 1")
    types = dict(zip(result.columns, result.types))
    assert types["embedding"] == "FLOAT[32]"
    assert types["prior"] == prior_sql_type(texts_schema(PREFIX_SLOTS, PRIOR_DIM))


def test_sql_cosine_chip_first(store):
    chip = store.table("images").to_arrow()["chip_id"][17].as_py()
    result = run_sql(
        store,
        "SELECT chip_id, array_cosine_similarity(embedding, "
        f"(SELECT embedding FROM images WHERE chip_id = '{chip}')) AS similarity "
        "FROM images ORDER BY similarity DESC LIMIT 5",
    )
    assert result.rows[0][0] == chip
    assert result.rows[0][1] == pytest.approx(1.0, abs=1e-6)
    assert result.rows[1][1] <= result.rows[0][1]


def test_sql_filters_match_pyarrow(store):
    table = store.table("images").to_arrow()
    cell = table["cell"][0].as_py()
    chip = table["chip_id"][5].as_py()
    middle = float(pc.approximate_median(table["lon"]).as_py())

    in_cell = pc.sum(pc.equal(table["cell"], cell)).as_py()
    assert scalar(store, f"SELECT count(*) FROM images WHERE cell = {cell}") == in_cell
    assert scalar(store, f"SELECT count(*) FROM images WHERE chip_id = '{chip}'") == 1
    west_of_middle = pc.sum(pc.less(table["lon"], middle)).as_py()
    assert scalar(store, f"SELECT count(*) FROM images WHERE lon < {middle}") == west_of_middle
    assert scalar(store, "SELECT count(*) FROM images WHERE acquired IS NULL") == table["acquired"].null_count


def test_sql_filter_pushdown(store):
    plan = "\n".join(row[1] for row in run_sql(store, "EXPLAIN SELECT chip_id FROM images WHERE cell = 1").rows)
    assert "ARROW_SCAN" in plan
    assert "Filters" in plan


def test_sql_footprint_as_text(store):
    chip = store.table("images").to_arrow().slice(0, 1).to_pylist()[0]
    text = scalar(store, f"SELECT ST_AsText(ST_GeomFromWKB(footprint)) FROM images WHERE chip_id = '{chip['chip_id']}'")
    assert shapely.equals_exact(shapely.from_wkt(text), shapely.from_wkb(chip["footprint"]), tolerance=1e-9)


def test_sql_reports_spatial_extension(store):
    assert isinstance(run_sql(store, "SELECT 1").spatial_extension, bool)


def test_sql_table_format_counts_all(store):
    result = run_sql(store, "SELECT chip_id FROM images", limit_display=5)
    assert len(result.rows) == 5
    assert result.row_count == 112
    assert result.columns == ["chip_id"]


def test_sql_duplicate_column_names(store):
    assert run_sql(store, "SELECT 1 AS a, 2 AS a").rows == [(1, 2)]


# README queries -------------------------------------------------------------------------------------

CHIPS_PER_CELL = "SELECT cell, count(*) AS chips FROM images GROUP BY cell ORDER BY chips DESC, cell"
TEXTS_BY_CELL = (
    "SELECT t.text, i.chip_id, i.source FROM texts t JOIN images i ON i.cell = t.cell ORDER BY t.text_id, i.chip_id"
)
COVERAGE = (
    "SELECT count(*) AS chips, count(DISTINCT cell) AS cells, min(lon) AS west, min(lat) AS south, "
    "max(lon) AS east, max(lat) AS north FROM images WHERE cell IS NOT NULL"
)


def test_readme_chips_per_cell(store):
    result = run_sql(store, CHIPS_PER_CELL, limit_display=1000)
    cells = store.table("images").to_arrow()["cell"].value_counts().to_pylist()
    assert dict(result.rows) == {entry["values"]: entry["counts"] for entry in cells}
    assert sum(count for _, count in result.rows) == 112


def test_readme_similar_chips(store):
    chip = store.table("images").to_arrow()["chip_id"][40].as_py()
    query = (
        "SELECT chip_id, source, array_cosine_similarity(embedding, "
        f"(SELECT embedding FROM images WHERE chip_id = '{chip}')) AS similarity "
        "FROM images ORDER BY similarity DESC LIMIT 10"
    )
    result = run_sql(store, query)
    assert result.row_count == 10
    assert result.rows[0][0] == chip
    similarities = [row[2] for row in result.rows]
    assert similarities == sorted(similarities, reverse=True)


def test_readme_texts_joined_by_cell(store):
    result = run_sql(store, TEXTS_BY_CELL, limit_display=1000)
    images = store.table("images").to_arrow()
    texts = store.table("texts").to_arrow()
    expected = sum(pc.sum(pc.equal(images["cell"], cell)).as_py() for cell in texts["cell"].to_pylist())
    assert result.row_count == expected
    assert {row[0] for row in result.rows} == {"a river", "fields", "a town"}


def test_readme_coverage(store):
    chips, cells, west, south, east, north = run_sql(store, COVERAGE).rows[0]
    summary = store_summary(store)
    assert chips == 112
    assert cells == summary["distinct_cells"]
    assert summary["bounds"]["west"] <= west <= east <= summary["bounds"]["east"]
    assert summary["bounds"]["south"] <= south <= north <= summary["bounds"]["north"]


# Read-only ------------------------------------------------------------------------------------------

WRITES = {
    "insert": "INSERT INTO images SELECT * FROM images",
    "update": "UPDATE images SET cell = 0",
    "delete": "DELETE FROM pairs",
    "create": "CREATE TABLE copy AS SELECT * FROM images",
    "create_view": "CREATE VIEW v AS SELECT 1",
    "drop": "DROP VIEW images",
    "alter": "ALTER VIEW images RENAME TO chips",
    "copy_to": "COPY (SELECT * FROM images) TO 'chips.csv'",
    "copy_from": "COPY pairs FROM 'pairs.csv'",
    "export": "EXPORT DATABASE 'dump'",
    "import": "IMPORT DATABASE 'dump'",
    "attach": "ATTACH 'other.duckdb' AS other",
    "detach": "DETACH memory",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "set": "SET threads = 1",
    "reset": "RESET threads",
    "pragma_set": "PRAGMA threads = 1",
    "pragma_profiling": "PRAGMA enable_profiling",
    "call": "CALL pragma_version()",
    "checkpoint": "CHECKPOINT",
    "transaction": "BEGIN TRANSACTION",
    "macro": "CREATE MACRO twice(x) AS 2 * x",
    "explain_insert": "EXPLAIN ANALYZE INSERT INTO images SELECT * FROM images",
    "update_extensions": "UPDATE EXTENSIONS",
}


@pytest.mark.parametrize("query", WRITES.values(), ids=WRITES.keys())
def test_sql_rejects_write(store, query):
    versions = {name: store.version(name) for name in ("images", "texts", "pairs")}
    with pytest.raises(SqlError, match="statements are not allowed: the store is read-only"):
        run_sql(store, query)
    assert {name: store.version(name) for name in versions} == versions


def test_sql_rejects_second_statement(store):
    with pytest.raises(SqlError, match="2 statements; `rsflow sql` runs one statement at a time"):
        run_sql(store, "SELECT 1; DROP VIEW images")
    assert store.has_table("images")


def test_sql_pivot_with_values(store):
    result = run_sql(store, "PIVOT (SELECT cell % 2 AS odd FROM images) ON odd IN (0, 1) USING count(*)")
    assert result.columns == ["0", "1"]
    assert sum(result.rows[0]) == 112


def test_sql_pivot_without_values(store):
    with pytest.raises(SqlError, match="List the pivot values"):
        run_sql(store, "PIVOT (SELECT cell, cell % 2 AS odd FROM images) ON odd USING count(*)")


def test_sql_rejection_lists_allowed(store):
    with pytest.raises(SqlError, match=r"INSERT statements are not allowed: the store is read-only.*Run one SELECT"):
        run_sql(store, "INSERT INTO pairs VALUES ('a', 'b', 'cell')")


FILE_READS = {
    "read_csv": "SELECT * FROM read_csv('{path}')",
    "read_parquet": "SELECT * FROM read_parquet('{path}')",
    "read_json": "SELECT * FROM read_json('{path}')",
    "read_text": "SELECT * FROM read_text('{path}')",
    "glob": "SELECT * FROM glob('{folder}/*')",
    "path_as_table": "SELECT * FROM '{path}'",
    "lance_files": "SELECT * FROM read_parquet('{store}/images.lance/data/*')",
    "https": "SELECT * FROM read_parquet('https://example.com/chips.parquet')",
    "s3": "SELECT * FROM 's3://bucket/chips.parquet'",
}


@pytest.mark.parametrize("template", FILE_READS.values(), ids=FILE_READS.keys())
def test_sql_rejects_file_read(store, tmp_path, template):
    path = tmp_path / "outside.csv"
    path.write_text("a,b\n1,2\n")
    query = template.format(path=path, folder=tmp_path, store=store.path)
    with pytest.raises(SqlError, match="disabled|not allowed|does not exist"):
        run_sql(store, query)


def test_sql_rejects_python_objects(store):
    outside = pa.table({"secret": [1]})  # noqa: F841 - a replacement scan would find this local
    with pytest.raises(SqlError, match="outside"):
        run_sql(store, "SELECT * FROM outside")


def test_sql_settings_locked(store):
    connection = connect(store)
    try:
        settings = dict(connection.sql(
            "SELECT name, value FROM duckdb_settings() WHERE name IN "
            "('enable_external_access', 'lock_configuration', 'python_enable_replacements')"
        ).fetchall())
    finally:
        connection.close()
    assert settings["enable_external_access"] == "false"
    assert settings["lock_configuration"] == "true"
    assert settings["python_enable_replacements"] == "false"


@pytest.mark.parametrize(
    "query",
    [
        "SELECT count(*) FROM images",
        "WITH c AS (SELECT cell FROM images) SELECT count(*) FROM c",
        "DESCRIBE images",
        "SHOW TABLES",
        "SUMMARIZE pairs",
        "EXPLAIN SELECT * FROM images",
        "/* why */ EXPLAIN ANALYZE SELECT count(*) FROM images",
        "PRAGMA table_info('texts')",
        "FROM pairs",
    ],
)
def test_sql_allows_reads(store, query):
    assert run_sql(store, query).row_count > 0


def test_sql_show_tables_lists_store(store):
    assert {row[0] for row in run_sql(store, "SHOW TABLES").rows} == {"images", "texts", "pairs", "sources"}


# Errors -------------------------------------------------------------------------------------------


def test_sql_syntax_error(store):
    with pytest.raises(SqlError, match='syntax error at or near "SELEC"'):
        run_sql(store, "SELEC chip_id FROM images")


def test_sql_binder_error(store):
    with pytest.raises(SqlError, match='"no_such_column" not found'):
        run_sql(store, "SELECT no_such_column FROM images")


def test_sql_unknown_table(store):
    with pytest.raises(SqlError, match="chips does not exist"):
        run_sql(store, "SELECT * FROM chips")


def test_sql_empty_query(store):
    with pytest.raises(SqlError, match="empty"):
        run_sql(store, "  -- nothing\n")


def test_sql_failed_query_no_file(store, tmp_path):
    output = tmp_path / "out.csv"
    with pytest.raises(SqlError, match="Could not convert"):
        run_sql(store, "SELECT CAST('x' || chip_id AS INTEGER) FROM images", output=output, format="csv")
    assert list(tmp_path.iterdir()) == []


def test_sql_unknown_format(store):
    with pytest.raises(ValueError, match="Unknown output format 'xml'"):
        run_sql(store, "SELECT 1", format="xml", output=io.BytesIO())


def test_sql_file_format_needs_output(store):
    with pytest.raises(ValueError, match="needs an output"):
        run_sql(store, "SELECT 1", format="csv")


def test_sql_output_folder_missing(store, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        run_sql(store, "SELECT 1", format="csv", output=tmp_path / "missing" / "out.csv")


# Output formats -----------------------------------------------------------------------------------

EXPORT_QUERY = 'SELECT chip_id, cell, lon, "window", footprint, embedding FROM images ORDER BY chip_id'


@pytest.fixture
def small_batches(monkeypatch):
    """Batches of 7 rows, so that 112 chips stream through the writers in 16 batches."""
    monkeypatch.setattr(sql_module, "MAX_BATCH_ROWS", 7)


def stored_chips(store: Store) -> list[dict]:
    return store.table("images").to_arrow().sort_by("chip_id").to_pylist()


def test_sql_csv_parses_back(store, tmp_path, small_batches):
    output = tmp_path / "chips.csv"
    result = run_sql(store, EXPORT_QUERY, output=output, format="csv")
    with open(output, newline="") as handle:
        rows = list(csv.DictReader(handle))
    chips = stored_chips(store)

    assert result.row_count == len(rows) == 112
    assert list(rows[0]) == ["chip_id", "cell", "lon", "window", "footprint", "embedding"]
    assert [row["chip_id"] for row in rows] == [chip["chip_id"] for chip in chips]
    assert int(rows[3]["cell"]) == chips[3]["cell"]
    assert float(rows[3]["lon"]) == pytest.approx(chips[3]["lon"])
    assert json.loads(rows[3]["window"]) == chips[3]["window"]
    assert bytes.fromhex(rows[3]["footprint"]) == chips[3]["footprint"]
    np.testing.assert_allclose(json.loads(rows[3]["embedding"]), chips[3]["embedding"], rtol=1e-6)


def test_sql_csv_empty_header(store, tmp_path):
    output = tmp_path / "none.csv"
    run_sql(store, "SELECT chip_id, cell FROM images WHERE false", output=output, format="csv")
    assert output.read_text() == "chip_id,cell\n"


def test_sql_json_lines_parse_back(store, tmp_path, small_batches):
    output = tmp_path / "chips.jsonl"
    run_sql(store, EXPORT_QUERY, output=output, format="json")
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    chips = stored_chips(store)

    assert len(rows) == 112
    assert rows[5]["chip_id"] == chips[5]["chip_id"]
    assert rows[5]["window"] == chips[5]["window"]
    assert bytes.fromhex(rows[5]["footprint"]) == chips[5]["footprint"]
    np.testing.assert_allclose(rows[5]["embedding"], chips[5]["embedding"], rtol=1e-6)


def test_sql_json_nan_is_null(store):
    sink = io.BytesIO()
    run_sql(store, "SELECT 'nan'::DOUBLE AS x, ['nan'::FLOAT, 1.0]::FLOAT[2] AS v", output=sink, format="json")
    row = json.loads(sink.getvalue(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert row == {"x": None, "v": [None, 1.0]}


def test_sql_parquet_parses_back(store, tmp_path, small_batches):
    output = tmp_path / "chips.parquet"
    run_sql(store, EXPORT_QUERY, output=output, format="parquet")
    table = pq.read_table(output)
    chips = stored_chips(store)

    assert table.num_rows == 112
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    assert table["chip_id"].to_pylist() == [chip["chip_id"] for chip in chips]
    assert table["footprint"].to_pylist() == [chip["footprint"] for chip in chips]
    np.testing.assert_array_equal(
        np.array(table["embedding"].to_pylist()), np.array([chip["embedding"] for chip in chips])
    )


def test_sql_writes_to_open_file(store):
    sink = io.BytesIO()
    result = run_sql(store, "SELECT text_id, prior FROM texts ORDER BY text_id", output=sink, format="json")
    rows = [json.loads(line) for line in sink.getvalue().decode().splitlines()]
    assert result.output is None
    assert rows[2] == {"text_id": "text-2", "prior": prior_value(texts_schema(PREFIX_SLOTS, PRIOR_DIM), 2.0)}


def test_sql_statement_check_alone(store):
    connection = connect(store)
    try:
        assert read_only_statement(connection, "SELECT 1;").rstrip(";") == "SELECT 1"
    finally:
        connection.close()


# Command line -------------------------------------------------------------------------------------


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    app.command()(sql_command)

    @app.command()
    def unused() -> None:
        """Make typer keep `sql` as a subcommand name."""

    return app


def test_cli_sql_table(app, store):
    query = "SELECT chip_id, embedding FROM images"
    result = CliRunner().invoke(app, ["sql", query, "--store", str(store.path), "--limit", "3"])
    assert result.exit_code == 0, result.output
    assert "3 of 112 rows shown" in result.output
    assert "32 values" in result.output


def test_cli_sql_csv_stdout(app, store):
    query = "SELECT cell, count(*) AS n FROM images GROUP BY cell"
    result = CliRunner().invoke(app, ["sql", query, "--store", str(store.path), "-f", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert sum(int(row["n"]) for row in rows) == 112


def test_cli_sql_format_from_suffix(app, store, tmp_path):
    output = tmp_path / "cells.parquet"
    query = "SELECT DISTINCT cell FROM images"
    result = CliRunner().invoke(app, ["sql", query, "--store", str(store.path), "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert pq.read_table(output).column_names == ["cell"]


def test_cli_sql_query_from_stdin(app, store):
    arguments = ["sql", "-", "--store", str(store.path), "-f", "json"]
    result = CliRunner().invoke(app, arguments, input="SELECT count(*) AS n FROM pairs")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"n": 3}


def test_cli_sql_rejected_write(app, store):
    result = CliRunner().invoke(app, ["sql", "DROP VIEW images", "--store", str(store.path)])
    assert result.exit_code == 1
    assert "read-only" in result.output


def test_cli_sql_parquet_needs_output(app, store):
    result = CliRunner().invoke(app, ["sql", "SELECT 1", "--store", str(store.path), "-f", "parquet"])
    assert result.exit_code == 2
    assert "--output" in result.output
