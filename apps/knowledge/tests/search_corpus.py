"""What the retrieval tests search (``test_search.py``, ``test_search_api.py``,
``test_hit_test_admin.py``) and small helpers to build and read it. Their fixtures are in
``search_fixtures.py``."""

from __future__ import annotations

from django_tenants.utils import schema_context


def tenant_key_of(schema: str) -> str:
    from apps.knowledge.services import tenant_key

    with schema_context(schema):
        return tenant_key()


def pdf_bytes(pages: list[list[str]]) -> bytes:
    """A plain PDF (Helvetica, latin text only): one page per item, one text line per string."""
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",  # the page tree, filled in below
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    kids = []
    for lines in pages:
        escaped = [line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in lines]
        stream = "BT /F1 11 Tf 50 780 Td 15 TL " + " ".join(f"({line}) Tj T*" for line in escaped) + " ET"
        content = stream.encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
        content_ref = len(objects)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents %d 0 R "
            b"/Resources << /Font << /F1 3 0 R >> >> >>" % content_ref
        )
        kids.append(b"%d 0 R" % len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(pages))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def hit_documents(result) -> list[str]:
    return [h.document_id for h in result.hits]


# A service manual: a part number and an error code that only occur once, in prose, next to
# tables of look-alike codes that the embedding model finds "similar" to a bare code.
MANUAL = (
    "# Pump service manual\n"
    "\n"
    "## Shaft seals\n"
    "\n"
    "The shaft seal keeps water out of the motor. Inspect it at every service visit and "
    "replace it every 2,000 operating hours, or sooner when you see drops under the pump "
    "housing. Drain the pump and let it cool before you open the housing. For the 40 mm shaft "
    "order kit XR-7731-B; it contains two O rings, a spring and a tube of silicone grease.\n"
    "\n"
    "## Flow problems\n"
    "\n"
    "When the pump runs but moves little water, the intake strainer is usually blocked. Clean "
    "it under running water. If the controller then shows E4471, the flow sensor gets no "
    "signal: check its cable and connector before you order a new sensor.\n"
    "\n"
    "## Part numbers\n"
    "\n"
    "| Part | Number |\n"
    "|---|---|\n"
    "| Seal kit 25 mm | QP4410C |\n"
    "| Seal kit 32 mm | QP4412D |\n"
    "| Impeller 40 mm | TN5520K |\n"
    "| Housing gasket | TN5521M |\n"
    "| Motor bearing | ZR3177C |\n"
    "\n"
    "## Controller codes\n"
    "\n"
    "| Code | Meaning |\n"
    "|---|---|\n"
    "| E4417 | pressure switch open |\n"
    "| E7441 | motor too hot |\n"
    "| E1447 | firmware checksum |\n"
    "| E4714 | supply voltage low |\n"
)
RETURNS_SIMPLIFIED = (
    "# 退货政策\n\n自签收之日起七天内，商品未经使用且包装完好的，可以申请无理由退货。"
    "退款将在收到退回商品后三个工作日内原路返还。\n"
)
RETURNS_TRADITIONAL = (
    "# 退貨政策\n\n自簽收之日起七天內，商品未經使用且包裝完好的，可以申請無理由退貨。"
    "退款將在收到退回商品後三個工作日內原路返還。\n"
)
