"""Tables on disk: Parquet files written so a crash never leaves half a file.

Stage tables are rebuilt from the run store batch by batch and streamed into Parquet, so
their size never decides how much memory a run needs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import polars as pl
import pyarrow.parquet as pq


#: rows per Parquet row group when streaming: the writer holds one group in memory at a time
ROW_GROUP_ROWS = 2000


def _write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """``write`` a temporary file, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def write_parquet_atomic(frame: pl.DataFrame, path: Path) -> Path:
    return _write_atomic(path, frame.write_parquet)


def records_frame(records: list[dict], schema: dict, timestamp: str) -> pl.DataFrame:
    """Store records as a typed table; ``timestamp`` holds ISO text that becomes a UTC datetime."""
    text_schema = {**schema, timestamp: pl.String}
    frame = pl.DataFrame([{k: r.get(k) for k in text_schema} for r in records], schema=text_schema)
    return frame.with_columns(pl.col(timestamp).str.to_datetime(time_zone="UTC", time_unit="us"))


def write_records_parquet(path: Path, batches: Iterable[list[dict]], schema: dict, timestamp: str) -> Path:
    """Store records as a typed Parquet table, one batch in memory at a time."""
    return write_frames_parquet(path, (records_frame(batch, schema, timestamp) for batch in batches),
                                records_frame([], schema, timestamp))


def write_frames_parquet(path: Path, frames: Iterable[pl.DataFrame], empty: pl.DataFrame) -> Path:
    """Frames of one schema appended to a Parquet file, one row group (or more) each, through
    pyarrow's writer: nothing is read back, so the peak is one frame whatever the table's
    length. ``empty`` is written when there are no frames, so the file always has its columns."""
    def write(out: Path) -> None:
        writer = None
        try:
            for frame in frames:
                table = frame.to_arrow()
                if writer is None:
                    writer = pq.ParquetWriter(out, table.schema, compression="zstd")
                writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            if writer is None:
                empty.write_parquet(out)
        finally:
            if writer is not None:
                writer.close()

    return _write_atomic(path, write)


def write_text_atomic(path: Path, text: str) -> Path:
    """A text file (JSON, JSON Lines), written the same crash-safe way."""
    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    return _write_atomic(path, write)
