"""``search.highlight`` finds terms with ``str.find``; it must mark exactly what one
case-insensitive regex alternation of the terms (longest first) marks, which is how it was
written before and what its docstring promises."""

from __future__ import annotations

import html
import random
import re

import pytest

from apps.knowledge.search import highlight

ALPHABET = ["a", "b", "ab", "A", " ", "-", "_", "1", "é", "退", "貨", "货", "&", "<", "\n", "İ", "ß"]
TERMS = ["a", "ab", "b1", "ab a", "退货", "貨", "1", "_a", "a-b", "é", "ss", "Ab"]


def _highlight_regex(text: str, haystack: str, terms: list[str]) -> str:
    """How highlight found terms before: one case-insensitive alternation, longest first."""
    parts = [rf"\b{re.escape(t)}\b" if t.isascii() else re.escape(t) for t in terms]
    pattern = re.compile("|".join(parts), re.IGNORECASE)
    out, last = [], 0
    for match in pattern.finditer(haystack):
        out.append(html.escape(text[last : match.start()]))
        out.append(f"<mark>{html.escape(text[match.start() : match.end()])}</mark>")
        last = match.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


def reference(text: str, terms: list[str]) -> str:
    from apps.knowledge.vectorstore import text_normalize

    folded = text_normalize(text)
    return _highlight_regex(text, folded if len(folded) == len(text) else text, terms)


@pytest.mark.parametrize("seed", range(300))
def test_same_marks_as_the_regex_alternation(seed):
    rng = random.Random(seed)
    text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 60)))
    terms = sorted(set(rng.sample(TERMS, rng.randint(1, 5))), key=len, reverse=True)
    assert highlight(text, terms) == reference(text, terms)


@pytest.mark.parametrize(
    ("text", "terms", "marked"),
    [
        ("Restore to factory", ["to"], "Restore <mark>to</mark> factory"),
        ("R&D: 16 amp fuse", ["amp", "16"], "R&amp;D: <mark>16</mark> <mark>amp</mark> fuse"),
        ("E1234 and e1234x", ["e1234"], "<mark>E1234</mark> and e1234x"),
        ("退貨政策", ["退货"], "<mark>退貨</mark>政策"),  # Traditional text, Simplified term
        ("shaft seal", ["shaft seal", "seal"], "<mark>shaft seal</mark>"),  # longest first
    ],
)
def test_marks(text, terms, marked):
    assert highlight(text, terms) == marked
    assert html.unescape(re.sub(r"</?mark>", "", highlight(text, terms))) == text


def test_no_terms_only_escapes():
    assert highlight("<b>x</b>", []) == "&lt;b&gt;x&lt;/b&gt;"


def test_a_character_that_lower_cases_to_two_as_re_folds_it():
    # "İ".lower() is "i̇", two characters; the offsets must stay those of the text.
    for text, terms in (("İstanbul guide, istanbul map", ["istanbul"]), ("İİ map", ["map"])):
        assert highlight(text, terms) == reference(text, terms)
