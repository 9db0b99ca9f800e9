"""What a sandbox offers: run a command with limits, move files, snapshot, remove.

Every command a model writes runs inside a sandbox, never on the host. Output is capped:
the head and the tail are kept and the cut is stated, so a runaway ``yes`` cannot flood
memory or a model's context.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Protocol

from ..errors import ConfigError, SandboxError

if TYPE_CHECKING:
    from ..registry import Registry

#: what a stage's containers may reach: nothing, the package registries (through an
#: allowlist proxy), or whatever the host reaches
NETWORKS = ("none", "registries", "full")


def check_network(value: str, key: str) -> None:
    """A stage's network choice, checked before any container starts."""
    if value not in NETWORKS:
        raise ConfigError(f"{key}={value!r} is not a network choice; choose one of {', '.join(NETWORKS)}")


def item_failure(exc: BaseException) -> str | None:
    """The reason one item fails for a sandbox error (sandboxes turn their engine's errors
    into ``SandboxError``), which ends that item and not the run; None for anything else,
    which the caller re-raises."""
    if isinstance(exc, SandboxError):
        return f"sandbox: {exc}"
    return None


@dataclass(frozen=True)
class Change:
    """A path that differs from the session's image (``docker diff``)."""

    path: str
    #: ``modified``, ``added`` or ``deleted``
    kind: str


#: where a verifier is copied to run; the ``.litecoder`` prefix keeps it out of recorded changes
VERIFIER_PATH = "/tmp/.litecoder-verifier.sh"


def run_verifier(session: "Session", verifier: str, timeout: float) -> tuple[int | None, str]:
    """Copy the verifier into the session and run it: (exit code, 124 on timeout; output tail).
    Exit 0 means the task is solved."""
    session.write_files({VERIFIER_PATH: verifier}, mode=0o755)
    result = session.exec(f"bash {VERIFIER_PATH}", timeout=timeout)
    return (124 if result.timed_out else result.exit_code), result.output[-2000:]


@dataclass
class ExecResult:
    exit_code: int | None
    output: str
    #: bytes of output dropped from the middle
    cut_bytes: int
    timed_out: bool
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


class HeadTail:
    """Keeps the first and last ``limit // 2`` bytes of a stream and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.half = max(1, limit // 2)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > self.half:
                del self.tail[: len(self.tail) - self.half]

    @property
    def cut(self) -> int:
        return self.total - len(self.head) - len(self.tail)

    def text(self) -> str:
        head = self.head.decode("utf-8", errors="replace")
        tail = self.tail.decode("utf-8", errors="replace")
        if self.cut:
            return f"{head}\n[... {self.cut} bytes of output cut ...]\n{tail}"
        return head + tail


def shell_quote(word: str) -> str:
    """``word`` as one single-quoted shell word, for RUN lines litecoder writes."""
    return "'" + str(word).replace("'", "'\\''") + "'"


def clip(data: bytes | str, limit: int) -> tuple[str, int]:
    """Head and tail of ``data`` within ``limit`` bytes, and how many bytes were cut."""
    keeper = HeadTail(limit)
    keeper.feed(data.encode() if isinstance(data, str) else data)
    return keeper.text(), keeper.cut


class Session(Protocol):
    """One running container (or other isolated machine) for one item."""

    id: str
    #: where the container runs when that is not this machine's engine (a Ray node's id), else None;
    #: stages record it, since an image stays on the engine that made it
    host: str | None

    def exec(self, command: str, *, timeout: float, max_output_bytes: int | None = None) -> ExecResult: ...

    def write_files(self, files: dict[str, bytes | str], *, mode: int = 0o644) -> None: ...

    def read_file(self, path: str, *, max_bytes: int = 1_000_000) -> bytes: ...

    def read_archive(self, path: str, *, max_bytes: int) -> bytes | None:
        """``path`` (a file, a directory, a link) as a tar whose top entry is its base name, read
        by the engine rather than by a program in the container (whose tools the agent may have
        replaced); None when the path does not exist. More than ``max_bytes`` raises
        ``SandboxError``."""

    def write_archive(self, directory: str, data: bytes) -> None:
        """Unpack a tar (as ``read_archive`` gives) into ``directory``, which must exist."""

    def snapshot(self, repository: str, tag: str, labels: dict[str, str] | None = None) -> str: ...

    def changes(self) -> list[Change]:
        """Paths changed since the session started."""

    def go_offline(self) -> None:
        """Take every network away (before a verifier runs)."""

    def remove(self) -> None: ...


class Sandbox(Protocol):
    """Opens sessions for a run. Engine errors come out as ``SandboxError``."""

    #: the image sessions start from unless told otherwise; set by ``ensure_image``
    image: str
    #: whether ``ensure_image`` found the image made already (None: it has not run)
    image_reused: bool | None

    def ensure_image(self, builders: Registry, toolchain: dict | None = None) -> str:
        """Make the run's image ready (the base image, with the domain's toolchain on it)."""

    def open(self, item: str, image: str | None = None, network: str = "none") -> Session:
        """A fresh session from ``image`` (default: the run's image) on ``network`` (``NETWORKS``)."""

    def has_image(self, image: str) -> bool: ...

    def save_image(self, image: str) -> Iterator[bytes]:
        """The image as a ``docker save`` tar, in chunks (for copying it to another engine)."""

    def load_image(self, chunks: Iterable[bytes]) -> None: ...

    def build_image(self, context: Path | bytes, *, tag: str, labels: dict[str, str], timeout: float,
                    network: str = "registries") -> str:
        """Build an image from a directory with a Dockerfile (or a tar of one) where the
        sandbox's containers run; returns its id. Exports check their tasks this way, so the
        driver needs no engine of its own."""

    def remove_image(self, image: str) -> None: ...

    def cleanup(self) -> int:
        """Remove everything this run left behind; returns how many containers went."""

    def close(self) -> None: ...
