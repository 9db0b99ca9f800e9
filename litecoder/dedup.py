"""Exact and near-duplicate detection over sampled tasks; the first occurrence is kept.

Exact: equal after normalization (case, whitespace, punctuation). Near: MinHash signatures
of word shingles (datasketch) in an LSH band index kept on disk, confirmed by the estimated
Jaccard similarity. Both are deterministic, so a resumed run reaches the same decisions.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
from datasketch import MinHash, MinHashLSH

if TYPE_CHECKING:
    from omegaconf import DictConfig

_PUNCT = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    return _SPACE.sub(" ", _PUNCT.sub(" ", text.lower())).strip()


def shingles(text: str, size: int) -> set[bytes]:
    words = normalize(text).split()
    if len(words) <= size:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + size]).encode() for i in range(len(words) - size + 1)}


@dataclass(frozen=True)
class Duplicate:
    of: str
    kind: str  # "exact" or "near"
    similarity: float


class BandIndex:
    """MinHash LSH bands and signatures in a temporary SQLite file.

    An in-memory index costs about 10 KiB per task (a key and a bucket per band); on disk the
    memory a run needs stays the same at 1k or 1M tasks. datasketch chooses the bands.
    """

    def __init__(self, threshold: float, num_perm: int) -> None:
        self.ranges = MinHashLSH(threshold=threshold, num_perm=num_perm).hashranges
        self._dir = tempfile.TemporaryDirectory(prefix="litecoder-dedup-")
        self.db = sqlite3.connect(Path(self._dir.name) / "bands.sqlite")
        self.db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
            "CREATE TABLE bands (band INTEGER, key BLOB, task TEXT);"
            "CREATE INDEX bands_by_key ON bands (band, key);"
            "CREATE TABLE signatures (task TEXT PRIMARY KEY, hashvalues BLOB);"
        )

    def candidates(self, hashvalues: np.ndarray) -> list[str]:
        found: dict[str, None] = {}
        for band, (start, end) in enumerate(self.ranges):
            for (task,) in self.db.execute("SELECT task FROM bands WHERE band = ? AND key = ?",
                                           (band, hashvalues[start:end].tobytes())):
                found[task] = None
        return list(found)

    def signature(self, task: str) -> np.ndarray:
        (blob,) = self.db.execute("SELECT hashvalues FROM signatures WHERE task = ?", (task,)).fetchone()
        return np.frombuffer(blob, dtype=np.uint64)

    def insert(self, task: str, hashvalues: np.ndarray) -> None:
        self.db.executemany("INSERT INTO bands VALUES (?, ?, ?)",
                            [(band, hashvalues[start:end].tobytes(), task) for band, (start, end) in enumerate(self.ranges)])
        self.db.execute("INSERT INTO signatures VALUES (?, ?)", (task, hashvalues.tobytes()))

    def close(self) -> None:
        self.db.close()
        self._dir.cleanup()


def find_duplicates(tasks: Iterable[tuple[str, str]], config: DictConfig) -> dict[str, Duplicate]:
    """Map each duplicate task id to the kept task it repeats. ``tasks`` is ``(id, text)`` in order."""
    duplicates: dict[str, Duplicate] = {}
    exact_seen: dict[str, str] = {}
    # The index proposes candidates below the threshold too (fewer misses); the estimated
    # Jaccard similarity then decides.
    candidate_threshold = max(0.1, float(config.threshold) - 0.2)
    index = BandIndex(candidate_threshold, int(config.num_perm)) if config.near else None
    try:
        for task_id, text in tasks:
            key = hashlib.sha256(normalize(text).encode()).hexdigest()
            if config.exact and key in exact_seen:
                duplicates[task_id] = Duplicate(exact_seen[key], "exact", 1.0)
                continue
            if index is not None:
                signature = MinHash(num_perm=int(config.num_perm), seed=1)
                signature.update_batch(list(shingles(text, int(config.shingle_size))))
                hashvalues = signature.hashvalues.astype(np.uint64)
                best: tuple[float, str] | None = None
                for candidate in index.candidates(hashvalues):
                    # the share of equal hash values estimates the Jaccard similarity
                    similarity = float(np.count_nonzero(hashvalues == index.signature(candidate))) / len(hashvalues)
                    if similarity >= config.threshold and (best is None or similarity > best[0]):
                        best = (similarity, candidate)
                if best is not None:
                    duplicates[task_id] = Duplicate(best[1], "near", round(best[0], 3))
                    continue
                index.insert(task_id, hashvalues)
            exact_seen.setdefault(key, task_id)
    finally:
        if index is not None:
            index.close()
    return duplicates
