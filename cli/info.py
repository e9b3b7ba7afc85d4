"""`rsflow info`: what a store holds."""

from __future__ import annotations

from rsflow.cli.common import JsonOption, StoreOption, print_json, reported_errors, stdout, store_path


def info(store: StoreOption = None, json_output: JsonOption = False) -> None:
    """Show the store's manifest, row counts, distinct cells, lon/lat bounds and size on disk."""
    from rsflow.store.db import Store
    from rsflow.store.info import store_summary

    with reported_errors():
        summary = store_summary(Store.open(store_path(store)))
    if json_output:
        print_json(summary)
        return
    _print_summary(summary)


def _print_summary(summary: dict) -> None:
    from rich.table import Table

    manifest = summary["manifest"]
    table = Table(show_header=False, box=None)
    table.add_row("store", summary["store"])
    table.add_row("format version", str(manifest["format_version"]))
    encoder = manifest.get("encoder") or {}
    if encoder:
        table.add_row("encoder", f"{encoder['model_id']} ({encoder['model_type']}, {encoder['embedding_dim']}-d, "
                      f"{encoder['image_size']} px, {encoder['num_channels']} channels)")
        table.add_row("encoder weights sha256", encoder["weights_sha256"])
    llm = manifest.get("llm") or {}
    if llm:
        table.add_row("LLM", f"{llm['model_id']} ({llm.get('dim')}-d)")
        table.add_row("prefix slots K", str(manifest.get("prefix_slots")))
    table.add_row("H3 resolution", str(manifest["h3_resolution"]))
    for name, count in summary["rows"].items():
        table.add_row(f"{name} rows", f"{count:,}")
    table.add_row("distinct cells", f"{summary['distinct_cells']:,}")
    table.add_row("chips without place", f"{summary['chips_without_place']:,}")
    bounds = summary["bounds"]
    if bounds:
        table.add_row("bounds (lon/lat)", "W {west:.5f}  S {south:.5f}  E {east:.5f}  N {north:.5f}".format(**bounds))
    pairing = summary.get("pairing")
    if pairing:
        by_rule = ", ".join(f"{count:,} by {how}" for how, count in pairing["pairs"].items())
        table.add_row("pairs by rule", by_rule)
        table.add_row("chips without text", f"{pairing['chips_without_text']:,}")
        table.add_row("texts without chip", f"{pairing['texts_without_chip']:,}")
    table.add_row("size on disk", f"{summary['size_bytes'] / 1e6:.1f} MB")
    stdout.print(table)
