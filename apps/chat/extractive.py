"""The offline answer generator: composes a short answer from the most relevant sentences
of the retrieved passages, verbatim, each followed by its citation marker [n]. It never
writes a word that is not in a cited passage, so it cannot invent."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
MAX_SENTENCES = 3
MIN_RELATIVE_SCORE = 0.9


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


def _sentences(text: str) -> list[str]:
    from apps.knowledge.pipeline.chunk import split_sentences

    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if "|" in line and line.count("|") >= 2:  # a table row: keep whole
            out.append(line)
            continue
        out.extend(s.strip() for s in split_sentences(line) if s.strip())
    return out


def _is_heading_only(sentence: str) -> bool:
    return len(sentence) < 40 and not re.search(r"[。！？.!?；;：:，,]", sentence) and sentence.count(" ") < 5


def compose(*, question: str, sources: list[dict], question_vector: list[float] | None = None) -> tuple[str, list[int]]:
    """(answer text with [n] markers, cited source numbers in order). ``sources`` are
    ``{"number", "text", "rank"}`` in rank order."""
    import numpy as np

    from apps.knowledge.pipeline.embed import get_embedder
    from apps.knowledge.search import _query_terms

    candidates: list[Candidate] = []
    for source in sources:
        for position, sentence in enumerate(_sentences(source["text"])):
            if len(sentence) < 4 or _is_heading_only(sentence):
                continue
            candidates.append(Candidate(source["number"], source["rank"], position, sentence))
    if not candidates:  # only headings: quote the best passage's first lines rather than nothing
        for source in sources:
            lines = [line for line in _sentences(source["text"]) if len(line) >= 4]
            if lines:
                return f"{' '.join(lines[:2])} [{source['number']}]", [source["number"]]
        return "", []
    embedder = get_embedder()
    vectors = embedder.embed([question, *[c.text for c in candidates]])
    q = np.asarray(question_vector or vectors[0])
    terms = _query_terms(question)
    lang = language_of(question)
    for candidate, vector in zip(candidates, vectors[1:], strict=True):
        similarity = float(np.dot(q, np.asarray(vector)))
        lowered = candidate.text.lower()
        overlap = sum(1 for t in terms if t in lowered) / max(1, len(terms))
        same_language = 0.05 if language_of(candidate.text) == lang else 0.0
        rank_prior = 0.04 * (1.0 / candidate.source_rank)
        candidate.score = similarity + 0.35 * overlap + same_language + rank_prior
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
