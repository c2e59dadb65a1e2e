"""Load the embedding model and the jieba dictionary when a web process starts, in the
background, so the first question of the day does not pay ~2 s of loading."""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)


def warmup() -> None:
    try:
        from apps.knowledge.pipeline.embed import get_embedder
        from apps.knowledge.vectorstore import jieba_tokenizer, text_normalize

        get_embedder().embed(["warm up", "预热"])
        list(jieba_tokenizer().cut_for_search(text_normalize("预热 warm-up")))
        logger.info("Models warmed up")
    except Exception:  # noqa: BLE001 - warming up is an optimisation, never a failure
        logger.warning("Model warm-up failed", exc_info=True)


def warmup_in_background() -> threading.Thread:
    thread = threading.Thread(target=warmup, name="model-warmup", daemon=True)
    thread.start()
    return thread
