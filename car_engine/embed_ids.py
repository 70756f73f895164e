"""The record ids beside an embeddings ``.npy`` (row i -> id i), in a module of its own so that
reading them (`car-engine cluster`) does not import the encoder and torch."""

from __future__ import annotations

from pathlib import Path

from car_engine.corpus import read_table


def ids_path(npy_path: str | Path) -> Path:
    """The companion file holding the record ids of an embeddings ``.npy`` (row i -> id i)."""
    path = Path(npy_path)
    return path.with_name(path.name.removesuffix(".npy") + ".ids.parquet")


def read_ids(npy_path: str | Path) -> list[str] | None:
    """The ids written beside an embeddings ``.npy``, or None when there is no companion file."""
    path = ids_path(npy_path)
    if not path.is_file():
        return None
    return read_table(path).column("id").to_pylist()
