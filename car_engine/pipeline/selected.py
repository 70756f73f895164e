"""selected.jsonl's rows (SPEC §6): each kept item exactly as it came, read back from the
source by position at the end (a 1M-item run never holds raw items: only the picks are
decoded), with the engine's fields under one key, ``car_engine``; or converted by
``--output-format``.
"""

from __future__ import annotations

import base64
import datetime
import decimal
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from car_engine.config import RunConfig
from car_engine.corpus import items_at
from car_engine.corpus.convert import ConversionError, convert
from car_engine.corpus.fields import FieldMap
from car_engine.corpus.records import BadItem, record_values
from car_engine.errors import CorpusError, UsageError

ENGINE_KEY = "car_engine"
# Scores carried under car_engine.scores, where the run has them (cluster has its own key).
SCORE_COLUMNS = ("iqs", "ifd_ppl", "ifd_loss", "instruction_ppl")


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and not np.isfinite(value) else value


def engine_fields(row: dict[str, Any], columns: Iterable[str]) -> dict[str, Any]:
    """The ``car_engine`` value of one picked row of the scores table."""
    scores = {c: _clean(row[c]) for c in columns if c in row}
    out = {"id": row["id"], "position": row["position"], "scores": scores}
    if "cluster" in row:
        out["cluster"] = row["cluster"]
    out["selected_by"] = row["selected_by"]
    if "why" in row:
        out["why"] = row["why"]
    return out


def jsonable(value: Any) -> Any:
    """A value read from Parquet or Arrow as JSON can hold it: dates and times as ISO text,
    decimals as text, bytes as UTF-8 text (base64 when they are not), a NaN or infinite float
    (Parquet holds them, JSON cannot) as null; JSON items pass as they are."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, float):
        return _clean(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii")
    return value


def _same_record(item: Any, row: dict[str, Any], field_map: FieldMap) -> bool:
    """Whether the item read back is the one the record was made from (the corpus did not
    change under the run): the same id and texts."""
    try:
        values = record_values(field_map.view(item), row["position"])
    except BadItem:
        return False
    return values[0] == row["id"] and values[2:5] == (row["instruction"], row["input"],
                                                      row["output"])


def selected_items(source: str, picked: pa.Table, texts: pa.Table, cfg: RunConfig
                   ) -> list[dict[str, Any]]:
    """The rows of selected.jsonl: ``picked`` are the picked rows of the scores table in final
    order (with ``selected_by`` and ``why``), ``texts`` their records' texts, same order."""
    rows = picked.to_pylist()
    for row, text in zip(rows, texts.to_pylist(), strict=True):
        row.update(instruction=text["instruction"], input=text["input"], output=text["output"])
    raw = items_at(source, [r["position"] for r in rows])
    field_map = FieldMap(cfg.fields)
    out = []
    for row in rows:
        item = raw[row["position"]]
        if not _same_record(item, row, field_map):
            raise CorpusError(f"{source}: the item at position {row['position']} (id "
                              f"'{row['id']}') changed during the run; run again")
        item = {k: jsonable(v) for k, v in item.items() if k != ENGINE_KEY}
        try:
            item = convert(item, cfg.output_format, cfg.fields)
        except ConversionError as err:
            raise UsageError(f"--output-format {cfg.output_format}: item '{row['id']}' "
                             f"(position {row['position']}) cannot be converted: {err}; "
                             "the scores are kept, so a run with another format only "
                             "writes the outputs again") from None
        item[ENGINE_KEY] = engine_fields(row, SCORE_COLUMNS)
        out.append(item)
    return out
