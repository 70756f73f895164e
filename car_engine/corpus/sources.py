"""What a corpus argument names: one file, a folder or a glob of shards, a Hugging Face
``save_to_disk`` folder, or ``builtin:sharegpt``; its files read as one corpus, with
positions counted across them, and the items at given positions read back (SPEC §6).

A folder's corpus files and a glob's matches are read in sorted name order, so positions (and
the ids of items without one) do not depend on the order the file system lists them in. A
``save_to_disk`` folder's Arrow files are read in the order its ``state.json`` lists them, as
``datasets.load_from_disk`` reads them.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Generator, Iterable
from contextlib import closing
from pathlib import Path
from typing import Any

from car_engine.corpus.formats import (
    BUILTIN_SHAREGPT,
    SKIPPED,
    format_of,
    raw_items,
    resolve_source,
)
from car_engine.errors import CorpusError

GLOB_CHARS = "*?["
HF_STATE = "state.json"  # a `Dataset.save_to_disk` folder
HF_DICT = "dataset_dict.json"  # a `DatasetDict.save_to_disk` folder: one subfolder per split


def _is_corpus_file(path: Path) -> bool:
    if not path.is_file() or path.name.startswith("."):
        return False
    try:
        format_of(path)
    except CorpusError:
        return False
    return True


def _hf_files(folder: Path) -> list[Path]:
    """The Arrow files of a ``save_to_disk`` folder, in its state.json's order."""
    try:
        state = json.loads((folder / HF_STATE).read_text(encoding="utf-8"))
        files = [folder / entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CorpusError(f"{folder / HF_STATE}: not a datasets state file ({err})") from None
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CorpusError(f"{folder}: {HF_STATE} lists {missing[0]}, which is not there")
    return files


def source_files(source: str | os.PathLike) -> list[Path]:
    """The files behind a corpus argument, in the order they are read."""
    text = str(source)
    if text.startswith("builtin:") or Path(text).is_file() or (
            not any(c in text for c in GLOB_CHARS) and not Path(text).is_dir()):
        return [resolve_source(source)]
    if any(c in text for c in GLOB_CHARS) and not Path(text).exists():
        files = sorted(Path(p) for p in glob.glob(text, recursive=True))
        files = [f for f in files if _is_corpus_file(f)]
        if not files:
            raise CorpusError(f"{text}: no corpus file matches (.json, .jsonl, .parquet, "
                              ".arrow, optionally .gz)")
        return files
    folder = Path(text)
    if (folder / HF_DICT).is_file():
        splits = json.loads((folder / HF_DICT).read_text(encoding="utf-8")).get("splits", [])
        raise CorpusError(f"{folder}: a DatasetDict with splits {', '.join(splits)}; name one "
                          f"split's folder (e.g. {folder / (splits[0] if splits else 'train')})")
    if (folder / HF_STATE).is_file():
        return _hf_files(folder)
    files = sorted(f for f in folder.iterdir() if _is_corpus_file(f))
    if not files:
        raise CorpusError(f"{folder}: is a directory with no corpus file (.json, .jsonl, .parquet, "
                          ".arrow, optionally .gz)")
    return files


def source_items(source: str | os.PathLike, batch_size: int = 10_000,
                 keep: Iterable[int] | None = None
                 ) -> Generator[tuple[str, str, Any], None, None]:
    """Every item of the corpus as (file name, location in it, raw value or BadItem), at
    consecutive positions across its files; with ``keep`` (positions), the others are
    SKIPPED undecoded where the format allows."""
    files = source_files(source)
    wanted = None if keep is None else set(keep)
    start = 0
    for path in files:
        name = BUILTIN_SHAREGPT if str(source) == BUILTIN_SHAREGPT else str(path)
        offset = start
        pick = None if wanted is None else (lambda n, o=offset: n + o in wanted)
        with closing(raw_items(path, batch_size, pick)) as items:
            for location, item in items:
                yield name, location, item
                start += 1


def items_at(source: str | os.PathLike, positions: Iterable[int]) -> dict[int, Any]:
    """The raw items at ``positions`` (0-based, across the corpus' files), read back from the
    source; reading stops after the last one, and only those are decoded where the format
    allows (JSONL, Parquet, Arrow), so memory holds the wanted items and no others."""
    wanted = set(positions)
    found: dict[int, Any] = {}
    if not wanted:
        return found
    last = max(wanted)
    items = source_items(source, keep=wanted)
    with closing(items):
        for position, (_, _, item) in enumerate(items):
            if position in wanted and item is not SKIPPED:
                found[position] = item
            if position >= last:
                break
    missing = wanted - found.keys()
    if missing:
        raise CorpusError(f"{source}: the item at position {min(missing)} is no longer there "
                          "(the corpus changed during the run)")
    return found
