"""The extractive answer's sentence-embedding cache: per tenant, per model, per passage text;
an answer is the same whether its sentences were cached or not."""

from __future__ import annotations

import numpy as np

from apps.chat.extractive import SentenceVectors, sentence_vectors
from apps.chat.tests.test_services import warranty_question


def test_keys_differ_by_tenant_model_and_text():
    key = SentenceVectors.key(schema="acme", model="m", text="The warranty lasts two years.")
    assert key == SentenceVectors.key(schema="acme", model="m", text="The warranty lasts two years.")
    assert key != SentenceVectors.key(schema="globex", model="m", text="The warranty lasts two years.")
    assert key != SentenceVectors.key(schema="acme", model="other", text="The warranty lasts two years.")
    assert key != SentenceVectors.key(schema="acme", model="m", text="The warranty lasts three years.")


def test_least_recently_used_passages_leave_first():
    cache = SentenceVectors(2)
    a, b, c = (SentenceVectors.key(schema="acme", model="m", text=t) for t in "abc")
    cache.put(a, np.zeros((1, 2), np.float32))
    cache.put(b, np.ones((1, 2), np.float32))
    assert cache.get(a) is not None  # a is now the most recent
    cache.put(c, np.ones((1, 2), np.float32))
    assert cache.get(b) is None and cache.get(a) is not None and cache.get(c) is not None
    off = SentenceVectors(0)
    off.put(a, np.zeros((1, 2), np.float32))
    assert off.get(a) is None and len(off) == 0


def sentence_batches(calls: list[list[str]], question: str) -> list[list[str]]:
    return [batch for batch in calls if batch != [question]]


def test_the_same_passage_in_another_tenant_is_embedded_again(
    acme, globex, knowledge, conversation_of, ask, embed_calls
):
    token = knowledge(acme).token
    kb = knowledge(globex, token=token)  # the very same documents, word for word
    calls = embed_calls()
    question = warranty_question(kb)

    in_acme, _ = ask(acme, conversation_of(acme), question)
    acme_sentences = sentence_batches(calls, question)
    calls.clear()
    in_globex, _ = ask(globex, conversation_of(globex), question)
    globex_sentences = sentence_batches(calls, question)

    assert acme_sentences and globex_sentences == acme_sentences  # globex did not read acme's entries
    assert in_globex.assistant_message.content == in_acme.assistant_message.content
    schemas = {key[0] for key in sentence_vectors()._entries}
    assert {"acme", "globex"} <= schemas

    calls.clear()
    again, _ = ask(globex, conversation_of(globex), question)
    assert sentence_batches(calls, question) == []  # globex's own entries now answer
    assert again.assistant_message.content == in_globex.assistant_message.content


# --------------------------------------------------------------------------------------
# Which sentences an answer quotes
# --------------------------------------------------------------------------------------
ERROR_TABLE = (
    "3. Error codes\n"
    "Code | Meaning | What to do\n"
    "E1001 | No WAN link | Check the cable between the modem and the WAN port.\n"
    "E1234 | Firmware signature invalid | Download the firmware again and retry the upgrade.\n"
    "E2040 | Overheating | Move the router to a ventilated place."
)


def test_an_error_code_in_the_question_picks_its_table_row(db):
    from apps.chat.extractive import compose

    text, cited = compose(
        question="What does error E1234 mean?", sources=[{"number": 1, "text": ERROR_TABLE, "rank": 1}]
    )

    assert text.startswith("E1234 | Firmware signature invalid") and cited == [1]
    assert "Code | Meaning" not in text


def test_a_chunks_title_line_is_never_the_answer(db):
    from apps.chat.extractive import compose

    passage = (
        "X200 Wi-Fi Router — User Manual — Resetting the router\n"
        "To restore factory settings, press and hold the RESET button for 10 seconds."
    )

    text, _ = compose(question="How do I reset the X200 router?", sources=[{"number": 1, "text": passage, "rank": 1}])

    assert text.startswith("To restore factory settings") and "User Manual" not in text


def test_a_hard_wrapped_pdf_sentence_is_quoted_whole(db):
    """PDF text breaks sentences at every line of the page; the answer must not be the
    first line of one ("2The flight control system for 737 MAX airplanes [1]")."""
    from apps.chat.extractive import compose

    passage = (
        "Federal Register / Vol. 85, No. 152\n"
        "2The flight control system for 737 MAX airplanes \n"
        "includes two flight control computers, FCC A and \n"
        "FCC B, which process inputs from the pilots and \n"
        "aircraft sensors to move the airplane's control \n"
        "surfaces.\n"
        "• Fax: 202-493-2251.\n"
        "• Mail: U.S. Department of\n"
        "Transportation, Docket Operations."
    )

    text, cited = compose(
        question="Which flight control computers does the 737 MAX have?",
        sources=[{"number": 1, "text": passage, "rank": 1}],
    )

    assert cited == [1]
    assert "includes two flight control computers, FCC A and FCC B, which process inputs" in text
    assert text.startswith("2The flight control system for 737 MAX airplanes includes")


def test_list_items_and_table_rows_stay_apart(db):
    from apps.chat.extractive import _sentences

    passage = (
        "Steps\n1. Connect the WAN port to the modem.\n2. Power on the router\nE1001 | No WAN link | Check the cable."
    )

    sentences = _sentences(passage)

    assert "E1001 | No WAN link | Check the cable." in sentences
    assert not any("modem. 2" in s or "router E1001" in s for s in sentences)
    assert any(s.startswith("Power on the router") for s in sentences)
