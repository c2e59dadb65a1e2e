"""The original file of a document as an HTTP response, shared by the admin and the console.

Uploaded files are untrusted: an HTML or SVG file opened inline on the tenant's origin could
run script with the viewer's session. Everything except PDF is therefore served with a
``Content-Security-Policy: sandbox`` (a unique origin, no script). Chromium's PDF viewer does
not load in a sandboxed document, hence the one exception; PDF.js/Chromium never runs a PDF's
JavaScript in the page's origin.
"""

from __future__ import annotations

from django.http import FileResponse, Http404

from apps.knowledge.models import Document

INLINE_UNSANDBOXED = frozenset({"application/pdf"})
SANDBOX_CSP = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def document_file_response(*, document: Document | None) -> FileResponse:
    """Inline response for ``document``'s stored file; 404 when it is gone or never existed."""
    if document is None or document.status == Document.Status.DELETED or not document.file:
        raise Http404
    try:
        handle = document.file.open("rb")
    except FileNotFoundError as exc:
        raise Http404 from exc
    mime = document.mime_type or "application/octet-stream"
    response = FileResponse(handle, filename=document.original_name, as_attachment=False, content_type=mime)
    if mime not in INLINE_UNSANDBOXED:
        response["Content-Security-Policy"] = SANDBOX_CSP
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, max-age=300"
    return response
