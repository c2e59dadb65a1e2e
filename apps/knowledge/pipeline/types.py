"""The values that flow between ingestion stages (extract → chunk → embed → index)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# progress(done, total): called as a stage advances (per page, per batch...).
ProgressCallback = Callable[[int, int], None]


class PipelineError(Exception):
    """A stage failed. ``code`` is stable (shown to users and in the API); ``transient``
    errors (a service unreachable) are retried, the others fail the document for good."""

    code = "processing_failed"
    transient = False

    def __init__(self, message: str, *, code: str | None = None, transient: bool | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if transient is not None:
            self.transient = transient


class ExtractionError(PipelineError):
    """Bad input: encrypted, corrupt, empty, image-only ("no text layer"), unsupported type,
    decompression bomb, too large. Never transient."""

    code = "extraction_failed"


class EmbeddingError(PipelineError):
    code = "embedding_failed"


@dataclass
class Section:
    """A structural unit of a document's text, in reading order.

    metadata keys (all optional): ``page`` (1-based int), ``heading_path`` (list[str], outer
    first), ``sheet`` (str), ``slide`` (1-based int), ``rows`` ([first, last] 1-based),
    ``kind`` ("text" | "table" | "notes" | "heading")."""

    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Chunk:
    index: int
    content: str
    content_hash: str  # sha256 hex of content
    token_count: int
    char_count: int
    word_count: int
    metadata: dict[str, Any] = field(default_factory=dict)  # page(s), heading_path, sheet, slide...
