"""The embedding store: LanceDB tables, the manifest, pairing, the FAISS index and DuckDB SQL."""
