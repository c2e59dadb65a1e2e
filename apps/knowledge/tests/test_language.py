"""pipeline.language: the language of a document nobody gave one, from its own text."""

from __future__ import annotations

import pytest

from apps.knowledge.pipeline.extract import extract
from apps.knowledge.pipeline.language import language_detect
from apps.knowledge.tests.conftest import doc

ENGLISH = (
    "To restore the router to its factory settings, press and hold the reset button for ten seconds. "
    "The lights will flash and the router restarts with the default network name and password."
)
SIMPLIFIED = "退货政策：自签收之日起七天内，商品未经使用、包装完好，可申请无理由退货。退款将原路返回至支付账户。"
TRADITIONAL = "退貨政策：自簽收之日起七天內，商品未經使用、包裝完好，可申請無理由退貨。退款將原路返回至支付帳戶。"


@pytest.mark.parametrize(
    ("text", "language"),
    [
        (ENGLISH, "en"),
        (SIMPLIFIED, "zh-CN"),
        (TRADITIONAL, "zh-TW"),
        # A Chinese manual full of English product names and codes is still Chinese.
        (
            "X200 路由器 E1234 错误：固件签名无效。请从 support.example.com 重新下载 firmware v2.1 后再升级，"
            "升级时不要断电。",
            "zh-CN",
        ),
        # Han characters with kana or hangul: Japanese or Korean, which we cannot name.
        ("ルーターをリセットするには、電源ボタンを十秒間押してください。工場出荷時の設定に戻ります。" * 2, None),
        (
            "라우터를 초기화하려면 재설정 버튼을 십 초 동안 누르십시오. 공장 설정으로 돌아갑니다. "
            "初期化 設定 工場 電源 時間 確認 方法 説明 注意 初期化 設定 工場 電源 時間 確認 方法 説明 注意",
            None,
        ),
        # Latin script that is not English.
        (
            "Pour réinitialiser le routeur, appuyez sur le bouton pendant dix secondes. Les paramètres seront "
            "effacés et le routeur redémarrera automatiquement avec la configuration usine.",
            None,
        ),
        # Too little to tell.
        ("Zephyr heater", None),
        ("退货", None),
        ("", None),
        ("1234 5678 | 9.5 | 10.0\n" * 50, None),
    ],
    ids=["en", "zh-CN", "zh-TW", "zh with codes", "ja", "ko", "fr", "short en", "short zh", "empty", "numbers"],
)
def test_language_detect(text, language):
    assert language_detect(text) == language


@pytest.mark.parametrize(
    ("relative", "language"),
    [
        ("pdf/federal-register-2020-17221.pdf", "en"),
        ("docx/handbook-1p.docx", "en"),
        ("md/大模型推理优化策略.md", "zh-CN"),
        ("pdf-zh/issue-67-example.pdf", "zh-CN"),
        ("pdf/korean-text-with-tables.pdf", None),
    ],
)
def test_real_documents(relative, language):
    path = doc(relative)  # skips when the shared documents are not there
    text = "\n".join(section.text for section in extract(path=path, file_type=path.suffix.lstrip(".")))
    assert language_detect(text) == language
