"""The offline answer generator: composes a short answer from the most relevant sentences
of the retrieved passages, verbatim, each followed by its citation marker [n]. It never
writes a word that is not in a cited passage, so it cannot invent."""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
MAX_SENTENCES = 3
MIN_RELATIVE_SCORE = 0.9
# A part number or error code (letters and digits, e.g. E1234, XR-7731-B). Found verbatim in
# a passage it is strong evidence: the answer check in services and sentence choice here.
IDENTIFIER = re.compile(r"(?=[A-Za-z0-9_.\-]*\d)(?=[A-Za-z0-9_.\-]*[A-Za-z])[A-Za-z0-9][A-Za-z0-9_.\-]{2,}")
IDENTIFIER_BONUS = 0.5


def language_of(text: str) -> str:
    """ "zh" when a meaningful share of the letters are CJK, else "en"."""
    letters = [c for c in text if c.isalnum()]
    if not letters:
        return "en"
    cjk = sum(1 for c in letters if CJK.match(c))
    return "zh" if cjk / len(letters) >= 0.2 else "en"


@dataclass
class Candidate:
    source_number: int
    source_rank: int
    position: int
    text: str
    score: float = 0.0


_LIST_ITEM = re.compile(r"^(?:\d{1,3}[.)、]|[-*•·▪–])\s*")
_LINE_ENDS_SENTENCE = re.compile(r"[.!?。！？；;:：]['\"”’)）]*$")


def _is_table_row(line: str) -> bool:
    return "|" in line and line.count("|") >= 2


def _lines(text: str) -> list[str]:
    """The passage's lines, with hard-wrapped ones joined again: PDF text breaks a sentence
    at every line of the page ("2The flight control system for 737 MAX airplanes" /
    "includes two flight control computers, ..."). A line continues the one before unless
    that one ends a sentence, a blank line or a table row comes between, or the line starts
    a list item. The first line (the chunk's heading path, when it has one) stays alone."""
    lines: list[str] = []
    joinable = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            joinable = False
            continue
        if _is_table_row(line):
            lines.append(line)
            joinable = False
            continue
        if joinable and not _LIST_ITEM.match(line) and not _LINE_ENDS_SENTENCE.search(lines[-1]):
            glue = "" if CJK.match(lines[-1][-1]) and CJK.match(line[0]) else " "
            lines[-1] += glue + line
        else:
            lines.append(line)
        joinable = len(lines) > 1
    return lines


def _sentences(text: str) -> list[str]:
    from apps.knowledge.pipeline.chunk import split_sentences

    out = []
    for line in _lines(text):
        if _is_table_row(line):  # a table row: keep whole
            out.append(line)
            continue
        out.extend(s.strip() for s in split_sentences(line) if s.strip())
    return out


def _is_heading_only(sentence: str) -> bool:
    return len(sentence) < 40 and not re.search(r"[。！？.!?；;：:，,]", sentence) and sentence.count(" ") < 5


class SentenceVectors:
    """The embeddings of a passage's candidate sentences, kept per process (LRU) so a passage
    cited again is not embedded again: the sentences of the cited passages were most of the
    CPU an extractive answer cost.

    Keyed by tenant schema, embedding model and the SHA-256 of the passage text: the same
    text in another tenant is a different entry (no tenant ever reads another's), and a
    changed passage or model is a miss, never a stale vector. Vectors are float32 whether
    they were just computed or come from here, so an answer is the same either way."""

    def __init__(self, max_passages: int):
        self.max_passages = max_passages
        self._entries: OrderedDict[tuple[str, str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(*, schema: str, model: str, text: str) -> tuple[str, str, str]:
        return (schema, model, hashlib.sha256(text.encode()).hexdigest())

    def get(self, key: tuple[str, str, str]) -> np.ndarray | None:
        with self._lock:
            vectors = self._entries.get(key)
            if vectors is not None:
                self._entries.move_to_end(key)
            return vectors

    def put(self, key: tuple[str, str, str], vectors: np.ndarray) -> None:
        if self.max_passages <= 0:
            return
        with self._lock:
            self._entries[key] = vectors
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_passages:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


_sentence_vectors: SentenceVectors | None = None
_sentence_vectors_lock = threading.Lock()


def sentence_vectors() -> SentenceVectors:
    """The process's cache (CHAT_SENTENCE_CACHE_PASSAGES passages)."""
    global _sentence_vectors
    with _sentence_vectors_lock:
        if _sentence_vectors is None:
            from django.conf import settings

            _sentence_vectors = SentenceVectors(settings.CHAT_SENTENCE_CACHE_PASSAGES)
        return _sentence_vectors


def _is_title_line(position: int, sentence: str) -> bool:
    """A chunk opens with its heading path (the chunker puts it there): a first line without
    sentence punctuation is a title, not an answer, however many words it has."""
    return position == 0 and len(sentence) < 80 and not re.search(r"[。！？.!?；;：:，,]", sentence)


def _candidates_of(source: dict) -> list[Candidate]:
    return [
        Candidate(source["number"], source["rank"], position, sentence)
        for position, sentence in enumerate(_sentences(source["text"]))
        if len(sentence) >= 4 and not _is_heading_only(sentence) and not _is_title_line(position, sentence)
    ]


def _candidate_vectors(per_source: list[list[Candidate]], sources: list[dict], question: str | None):
    """(the question's vector or None, one float32 matrix per source): cached sentences are
    not embedded again; the rest, and the question when asked for, in one embed call."""
    from django.db import connection

    from apps.knowledge.pipeline.embed import get_embedder

    embedder = get_embedder()
    cache = sentence_vectors()
    schema = getattr(connection, "schema_name", "") or ""
    keys = [SentenceVectors.key(schema=schema, model=embedder.name, text=s["text"]) for s in sources]
    matrices: list[np.ndarray | None] = [cache.get(key) if c else None for key, c in zip(keys, per_source, strict=True)]
    texts = [question] if question is not None else []
    missing = [i for i, c in enumerate(per_source) if c and matrices[i] is None]
    for i in missing:
        texts.extend(c.text for c in per_source[i])
    vectors = np.asarray(embedder.embed(texts), dtype=np.float32) if texts else np.zeros((0, 0), np.float32)
    q = vectors[0] if question is not None else None
    offset = 1 if question is not None else 0
    for i in missing:
        matrices[i] = vectors[offset : offset + len(per_source[i])].copy()  # not a view of the whole batch
        offset += len(per_source[i])
        cache.put(keys[i], matrices[i])
    return q, matrices


def compose(*, question: str, sources: list[dict], question_vector: list[float] | None = None) -> tuple[str, list[int]]:
    """(answer text with [n] markers, cited source numbers in order). ``sources`` are
    ``{"number", "text", "rank"}`` in rank order. ``question_vector``: the question's
    embedding when the caller has it already (the search's), so it is not embedded twice."""
    from apps.knowledge.search import _query_terms

    per_source = [_candidates_of(source) for source in sources]
    candidates = [c for group in per_source for c in group]
    if not candidates:  # only headings: quote the best passage's first lines rather than nothing
        for source in sources:
            lines = [line for line in _sentences(source["text"]) if len(line) >= 4]
            if lines:
                return f"{' '.join(lines[:2])} [{source['number']}]", [source["number"]]
        return "", []
    embedded_q, matrices = _candidate_vectors(per_source, sources, None if question_vector is not None else question)
    q = np.asarray(question_vector if question_vector is not None else embedded_q, dtype=np.float32)
    similarities = [float(x) for group, m in zip(per_source, matrices, strict=True) if group for x in m @ q]
    terms = _query_terms(question)
    identifiers = [code.lower() for code in IDENTIFIER.findall(question)]
    lang = language_of(question)
    for candidate, similarity in zip(candidates, similarities, strict=True):
        lowered = candidate.text.lower()
        overlap = sum(1 for t in terms if t in lowered) / max(1, len(terms))
        same_language = 0.05 if language_of(candidate.text) == lang else 0.0
        rank_prior = 0.04 * (1.0 / candidate.source_rank)
        exact = IDENTIFIER_BONUS if any(code in lowered for code in identifiers) else 0.0
        candidate.score = similarity + 0.35 * overlap + same_language + rank_prior + exact
    best = max(c.score for c in candidates)
    chosen = sorted(candidates, key=lambda c: -c.score)[:MAX_SENTENCES]
    lead = chosen[0]
    chosen = [
        c
        for c in chosen
        if c is lead
        or (c.score >= best * MIN_RELATIVE_SCORE and (c.source_number == lead.source_number or c.score >= best * 0.95))
    ]
    chosen.sort(key=lambda c: (c.source_rank, c.position))
    cited: list[int] = []
    parts = []
    for c in chosen:
        if c.source_number not in cited:
            cited.append(c.source_number)
        parts.append(f"{c.text} [{c.source_number}]")
    joiner = "" if lang == "zh" else " "
    return joiner.join(parts), cited


def stream_pieces(text: str, *, size: int = 8) -> Iterator[str]:
    """Small pieces for streaming: whole words for latin text, a few characters for CJK;
    a citation marker is never split."""
    yield from re.findall(r"\[\d+\]|\s+|[A-Za-z0-9_'’\-]+|.", text)


def stream_grouped(text: str, *, size: int = 6) -> Iterator[str]:
    buffer = ""
    for token in stream_pieces(text):
        buffer += token
        if len(buffer) >= size:
            yield buffer
            buffer = ""
    if buffer:
        yield buffer
