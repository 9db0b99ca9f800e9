"""Keep copies of the benchmarks people evaluate on out of the data.

``judge.decontaminate.paths`` names task collections: Harbor task directories (an
``instruction.md``) and Terminal-Bench 1 task directories (a ``task.yaml`` with its
``instruction``), found anywhere below each path. A sampled task is contaminated when it shares
a run of ``ngram_words`` words with one of their instructions (after the same normalization
as de-duplication), or when its MinHash similarity to one reaches ``near_threshold``. The
judge records the benchmark task it matched and never judges it, so it is never prepared or
exported.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
from datasketch import MinHash, MinHashLSH

from .dedup import normalize, shingles
from .errors import ConfigError
from .task_dirs import HARBOR_INSTRUCTION, TB1_TASK, find_task_dirs, instruction, task_name

if TYPE_CHECKING:
    from omegaconf import DictConfig


@dataclass
class DecontaminateConfig:
    """Benchmark collections whose tasks must not reappear (empty: no check)."""

    #: directories holding Harbor task directories or Terminal-Bench 1 task directories, or
    #: such task directories themselves
    paths: list[str] = field(default_factory=list)
    #: a shared run of this many words (normalized) marks a task contaminated
    ngram_words: int = 8
    #: or an estimated Jaccard similarity of word shingles (``dedup.shingle_size``) this high
    near_threshold: float = 0.5
    num_perm: int = 128


@dataclass(frozen=True)
class BenchmarkTask:
    #: the collection's directory name and the task directory below it
    name: str
    path: str
    instruction: str


@dataclass(frozen=True)
class Contamination:
    benchmark_task: str
    kind: str  # "ngram" or "near"
    similarity: float
    #: the shared words (for "ngram")
    phrase: str = ""

    def reason(self) -> str:
        if self.kind == "ngram":
            return f"contaminated: shares the phrase {self.phrase!r} with benchmark task {self.benchmark_task}"
        return f"contaminated: a near copy (similarity {self.similarity:.2f}) of benchmark task {self.benchmark_task}"


def read_collections(paths: Iterable[str]) -> list[BenchmarkTask]:
    """Every benchmark task below ``paths``; a path that does not exist or holds no task is a
    config error (a typo would otherwise let every copy through)."""
    tasks = []
    for raw in paths:
        root = Path(raw).expanduser()
        if not root.exists():
            raise ConfigError(f"judge.decontaminate.paths: {raw} does not exist")
        found = find_task_dirs(root)
        if not found:
            raise ConfigError(f"judge.decontaminate.paths: no task directory (with {HARBOR_INSTRUCTION} or "
                              f"{TB1_TASK}) below {raw}")
        for kind, directory in found:
            tasks.append(BenchmarkTask(task_name(root, directory), str(directory), instruction(kind, directory)))
    return tasks


def ngrams(text: str, size: int) -> dict[str, str]:
    """The word runs of ``text`` of ``size`` words, keyed by their hash."""
    words = normalize(text).split()
    runs = (" ".join(words[i : i + size]) for i in range(len(words) - size + 1))
    return {hashlib.blake2b(run.encode(), digest_size=8).hexdigest(): run for run in runs}


class ContaminationIndex:
    """The benchmark instructions' n-grams and MinHash signatures, held in memory (benchmark
    collections are hundreds of tasks, not millions)."""

    def __init__(self, tasks: list[BenchmarkTask], config: DictConfig, shingle_size: int) -> None:
        self.size, self.shingle_size = int(config.ngram_words), int(shingle_size)
        self.threshold, self.num_perm = float(config.near_threshold), int(config.num_perm)
        self.phrases: dict[str, str] = {}
        self.signatures: dict[str, np.ndarray] = {}
        # candidates below the threshold too; the estimated similarity then decides
        self.lsh = MinHashLSH(threshold=max(0.1, self.threshold - 0.2), num_perm=self.num_perm)
        for task in tasks:
            for key in ngrams(task.instruction, self.size):
                self.phrases.setdefault(key, task.name)
            signature = self._signature(task.instruction)
            if task.name not in self.signatures:
                self.signatures[task.name] = signature.hashvalues
                self.lsh.insert(task.name, signature)

    def _signature(self, text: str) -> MinHash:
        signature = MinHash(num_perm=self.num_perm, seed=1)
        signature.update_batch(list(shingles(text, self.shingle_size)))
        return signature

    def match(self, text: str) -> Contamination | None:
        """The benchmark task ``text`` copies, if any: a shared n-gram first, else the most
        similar near copy."""
        for key, phrase in ngrams(text, self.size).items():
            if key in self.phrases:
                return Contamination(self.phrases[key], "ngram", 1.0, phrase)
        signature = self._signature(text)
        best: Contamination | None = None
        for name in self.lsh.query(signature):
            similarity = float(np.count_nonzero(signature.hashvalues == self.signatures[name])) / self.num_perm
            if similarity >= self.threshold and (best is None or similarity > best.similarity):
                best = Contamination(name, "near", round(similarity, 3))
        return best


def find_contaminated(tasks: Iterable[tuple[str, str]], config: DictConfig, shingle_size: int) -> dict[str, Contamination]:
    """Map each contaminated task id to what it matched (empty when no paths are set)."""
    if not config.paths:
        return {}
    index = ContaminationIndex(read_collections(config.paths), config, shingle_size)
    found = {}
    for task_id, text in tasks:
        match = index.match(text)
        if match is not None:
            found[task_id] = match
    return found
