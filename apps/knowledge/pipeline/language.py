"""The language of a document's text, for documents uploaded without one.

Only what can be told reliably from the text alone, without a model: Chinese (Simplified
or Traditional) and English. Anything else (Japanese and Korean, whose text holds Han
characters too; French, German and other languages in Latin script; too little text) is
"don't know", and the document keeps ``DOCUMENT_DEFAULT_LANGUAGE``.

* Chinese: Han characters outnumber Latin words by 1.5 to 1 or more (a Chinese word is
  about 1.5 characters, so a Chinese manual full of English product names and codes is
  still Chinese), and there is no kana or hangul. Traditional when OpenCC's t2s changes at
  least 5 % of the Han characters (Traditional text: about a quarter; Simplified: none).
* English: Latin words, and at least 12 % of them English function words ("the", "and",
  "of" …; about a quarter in English prose, a few percent in French or German).
"""

from __future__ import annotations

import re

SAMPLE_CHARS = 20_000  # enough to decide; the start of a long manual stands for the rest
MIN_HAN = 20
MIN_WORDS = 20
HAN_PER_WORD = 1.5
TRADITIONAL_SHARE = 0.05
ENGLISH_FUNCTION_SHARE = 0.12

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA_HANGUL = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\u1100-\u11ff\uac00-\ud7af]")
_LATIN_WORD = re.compile(r"[A-Za-z]{2,}")
_FUNCTION_WORDS = (
    "the of and to in is for on with that this are be or by as it an at from you your can not "
    "was were will if has have which do does when how what"
)
ENGLISH_FUNCTION_WORDS = frozenset(_FUNCTION_WORDS.split())


def language_detect(text: str) -> str | None:
    """``zh-CN``, ``zh-TW``, ``en`` or None (not sure)."""
    from apps.knowledge.vectorstore import text_normalize

    sample = text[:SAMPLE_CHARS]
    han = _HAN.findall(sample)
    words = _LATIN_WORD.findall(sample)
    if len(han) >= MIN_HAN and len(han) >= HAN_PER_WORD * len(words):
        if _KANA_HANGUL.search(sample):
            return None  # Japanese or Korean
        han_text = "".join(han)
        folded = text_normalize(han_text)
        changed = sum(1 for a, b in zip(han_text, folded, strict=False) if a != b)
        return "zh-TW" if changed >= TRADITIONAL_SHARE * len(han_text) else "zh-CN"
    if len(words) >= MIN_WORDS:
        function = sum(1 for w in words if w.lower() in ENGLISH_FUNCTION_WORDS)
        if function >= ENGLISH_FUNCTION_SHARE * len(words):
            return "en"
    return None
