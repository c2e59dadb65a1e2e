"""Document admin for knowledge managers (``docs:*``): multi-file upload, a live progress
bar (websocket, falling back to polling), filters, processing logs and chunks inline, and
the reprocess/delete actions. Every write goes through apps.knowledge.services."""

from __future__ import annotations

import uuid

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest, JsonResponse
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from apps.core.admin_sites import tenant_admin_site
from apps.core.exceptions import ApplicationError
from apps.knowledge import selectors, services
from apps.knowledge.file_response import document_file_response
from apps.knowledge.models import Document, DocumentChunk, DocumentProcessingLog


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("widget", MultipleFileInput(attrs={"multiple": True}))
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        single = super().clean
        if isinstance(data, (list, tuple)):
            return [single(d, initial) for d in data]
        return [single(data, initial)]


class UploadForm(forms.Form):
    files = MultipleFileField(label=_("files"), help_text=_("PDF, DOCX, XLSX, PPTX, HTML, Markdown, TXT, CSV"))
    category = forms.CharField(label=_("category"), max_length=100, required=False)
    tags = forms.CharField(label=_("tags"), required=False, help_text=_("comma-separated"))


class HitTestForm(forms.Form):
    query = forms.CharField(label=_("question"), max_length=2000, widget=forms.TextInput(attrs={"size": 80}))
    mode = forms.ChoiceField(
        label=_("mode"), choices=[("hybrid", "hybrid"), ("dense", "dense"), ("bm25", "bm25")], initial="hybrid"
    )
    top_k = forms.IntegerField(label=_("results"), min_value=1, max_value=50, initial=5)
    category = forms.CharField(label=_("category"), max_length=100, required=False)
    tags = forms.CharField(label=_("tags"), required=False, help_text=_("comma-separated, any of"))
    file_type = forms.ChoiceField(
        label=_("type"),
        required=False,
        choices=[("", "—")] + [(t, t) for t in ("pdf", "docx", "xlsx", "pptx", "html", "md", "txt", "csv")],
    )
    language = forms.CharField(label=_("language"), max_length=10, required=False, help_text=_("e.g. zh-CN, en"))


class ProcessingLogInline(admin.TabularInline):
    model = DocumentProcessingLog
    extra = 0
    can_delete = False
    fields = ["stage", "status", "started_at", "completed_at", "details", "error_message"]
    readonly_fields = fields
    ordering = ["started_at"]

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class ChunkInline(admin.TabularInline):
    model = DocumentChunk
    extra = 0
    can_delete = False
    fields = ["chunk_index", "location", "token_count", "content"]
    readonly_fields = fields
    ordering = ["chunk_index"]
    max_num = 0
    show_change_link = False

    @admin.display(description=_("location"))
    def location(self, obj: DocumentChunk) -> str:
        m = obj.metadata or {}
        parts = []
        if m.get("page"):
            parts.append(f"p. {m['page']}")
        if m.get("slide"):
            parts.append(f"slide {m['slide']}")
        if m.get("sheet"):
            parts.append(f"sheet {m['sheet']}")
        if m.get("heading_path"):
            parts.append(" › ".join(m["heading_path"]))
        return " · ".join(parts)

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


def progress_bar(document: Document) -> str:
    return format_html(
        '<div class="zhida-progress" data-document="{}" data-status="{}" title="{}">'
        '<div class="zhida-progress-bar" style="width:{}%"></div><span>{}%</span></div>',
        document.pk,
        document.status,
        document.error_message or document.get_status_display(),
        document.processing_progress,
        document.processing_progress,
    )


class DocumentAdmin(admin.ModelAdmin):
    list_display = [
        "title",
        "original_name",
        "file_type",
        "status_label",
        "progress",
        "category",
        "version",
        "created_at",
    ]
    list_filter = ["status", "file_type", "category", "language"]
    search_fields = ["title", "original_name", "tags"]
    readonly_fields = [
        "original_name",
        "file",
        "file_type",
        "mime_type",
        "file_size",
        "status",
        "progress",
        "error_code",
        "error_message",
        "content_hash",
        "version",
        "replaces",
        "uploaded_by_label",
        "created_at",
        "indexed_at",
    ]
    fields = ["title", "category", "tags", "language", *readonly_fields]
    inlines = [ProcessingLogInline, ChunkInline]
    actions = ["reprocess", "soft_delete"]
    change_list_template = "admin/knowledge/document/change_list.html"

    class Media:
        css = {"all": ["knowledge/admin_progress.css"]}
        js = ["knowledge/admin_progress.js"]

    def get_queryset(self, request):
        return super().get_queryset(request).exclude(status=Document.Status.DELETED)

    @admin.display(description=_("progress"))
    def progress(self, obj: Document) -> str:
        return progress_bar(obj)

    @admin.display(description=_("status"), ordering="status")
    def status_label(self, obj: Document) -> str:
        if obj.status == Document.Status.FAILED:
            return format_html(
                '<span class="zhida-failed" title="{}">{} ⚠</span>', obj.error_message, obj.get_status_display()
            )
        return obj.get_status_display()

    def get_urls(self):
        return [
            path("upload/", self.admin_site.admin_view(self.upload_view), name="knowledge_document_upload"),
            path("progress/", self.admin_site.admin_view(self.progress_view), name="knowledge_document_progress"),
            path("hit-test/", self.admin_site.admin_view(self.hit_test_view), name="knowledge_document_hit_test"),
            path(
                "<uuid:document_id>/file/",
                self.admin_site.admin_view(self.file_view),
                name="knowledge_document_file",
            ),
            *super().get_urls(),
        ]

    def add_view(self, request, form_url="", extra_context=None):
        return redirect("admin:knowledge_document_upload")

    def upload_view(self, request: HttpRequest):
        if not self.has_add_permission(request):
            return self._denied(request)
        form = UploadForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            tags = [t.strip() for t in form.cleaned_data["tags"].split(",") if t.strip()]
            for upload in form.cleaned_data["files"]:
                try:
                    result = services.document_upload(
                        actor=request.user,
                        file=upload,
                        original_name=upload.name,
                        category=form.cleaned_data["category"],
                        tags=tags,
                    )
                except ApplicationError as exc:
                    self.message_user(request, f"{upload.name}: {exc.message}", level=messages.ERROR)
                    continue
                if result.duplicate:
                    self.message_user(
                        request,
                        _("%(name)s: the same content is already in the knowledge base (%(title)s).")
                        % {"name": upload.name, "title": result.document},
                        level=messages.WARNING,
                    )
                else:
                    self.message_user(request, _("%(name)s: uploaded, processing.") % {"name": upload.name})
            return redirect("admin:knowledge_document_changelist")
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "form": form,
            "title": _("Upload documents"),
        }
        return render(request, "admin/knowledge/document/upload.html", context)

    def hit_test_view(self, request: HttpRequest):
        """Type a question, see what retrieval returns (ranked chunks with their scores)."""
        if not self.has_view_permission(request):
            return self._denied(request)
        from apps.knowledge.search import chunk_search

        form = HitTestForm(request.GET or None)
        result, error = None, None
        if form.is_bound and form.is_valid():
            data = form.cleaned_data
            filters = {
                "category": data["category"] or None,
                "tags": [t.strip() for t in data["tags"].split(",") if t.strip()],
                "file_type": data["file_type"] or None,
                "language": data["language"].strip() or None,
            }
            try:
                result = chunk_search(
                    tenant=request.tenant,
                    query=data["query"],
                    top_k=data["top_k"],
                    mode=data["mode"],
                    filters={k: v for k, v in filters.items() if v},
                    use_cache=False,
                    user_id=request.user.pk,
                )
            except ApplicationError as exc:
                error = exc.message
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "form": form,
            "result": result,
            "error": error,
            "title": _("Hit testing"),
        }
        return render(request, "admin/knowledge/document/hit_test.html", context)

    def file_view(self, request: HttpRequest, document_id):
        """The original file (PDFs open at ``#page=N`` from search results and citations)."""
        if not self.has_view_permission(request):
            return self._denied(request)
        return document_file_response(document=selectors.document_get(document_id=document_id))

    def progress_view(self, request: HttpRequest):
        """Polling fallback for the live progress bars: ?id=<uuid>&id=..."""
        if not self.has_view_permission(request):
            return self._denied(request)
        ids = []
        for value in request.GET.getlist("id")[:200]:
            try:
                ids.append(uuid.UUID(value))
            except ValueError:  # a malformed id is skipped, not the whole answer
                continue
        rows = selectors.document_progress(document_ids=ids)
        return JsonResponse({"documents": [{**r, "id": str(r["id"])} for r in rows]})

    def _denied(self, request):
        from django.core.exceptions import PermissionDenied

        raise PermissionDenied

    def save_model(self, request, obj, form, change):
        fields = {k: form.cleaned_data[k] for k in ("title", "category", "tags", "language") if k in form.changed_data}
        if fields:
            services.document_update(document=Document.objects.get(pk=obj.pk), actor=request.user, **fields)

    def delete_model(self, request, obj):
        services.document_delete(document=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for document in queryset:
            services.document_delete(document=document, actor=request.user)

    @admin.action(description=_("Reprocess selected documents"), permissions=["change"])
    def reprocess(self, request, queryset):
        for document in queryset:
            try:
                services.document_reprocess(document=document, actor=request.user)
            except ApplicationError as exc:
                self.message_user(request, f"{document}: {exc.message}", level=messages.ERROR)

    @admin.action(description=_("Delete selected documents"), permissions=["delete"])
    def soft_delete(self, request, queryset):
        for document in queryset:
            services.document_delete(document=document, actor=request.user)

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # ours goes through the service
        return actions

    def changelist_view(self, request, extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "upload_url": reverse("admin:knowledge_document_upload"),
            "hit_test_url": reverse("admin:knowledge_document_hit_test"),
            "progress_url": reverse("admin:knowledge_document_progress"),
        }
        return super().changelist_view(request, extra_context=extra_context)


tenant_admin_site.register(Document, DocumentAdmin)
