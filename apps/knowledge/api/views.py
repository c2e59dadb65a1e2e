"""Documents API. Views validate, check permission and call a service or selector."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.api.views import PaginatedAPIView, _paginate
from apps.audit.services import actor_describe
from apps.core.api import HasAnyPermission, HasPermission
from apps.core.exceptions import ApplicationError, NotFound, error_body
from apps.knowledge import selectors, services
from apps.knowledge.api import serializers as s
from apps.knowledge.search import chunk_search


def _document_or_404(document_id, *, include_deleted: bool = False):
    document = selectors.document_get(document_id=document_id)
    if document is None or (document.status == "deleted" and not include_deleted):
        raise NotFound("Document not found.", code="document_not_found")
    return document


class DocumentListCreateView(PaginatedAPIView):
    permission_classes = [HasPermission.by_method({"GET": "docs:read", "POST": "docs:write"})]
    parser_classes = [MultiPartParser, FormParser, JSONParser]

    @extend_schema(
        parameters=[
            OpenApiParameter("status", str),
            OpenApiParameter("category", str),
            OpenApiParameter("tags", str, description="comma-separated"),
            OpenApiParameter("tags_mode", str, enum=["any", "all"]),
            OpenApiParameter("file_type", str),
            OpenApiParameter("search", str),
        ],
        responses=s.DocumentOutputSerializer(many=True),
    )
    def get(self, request):
        q = request.query_params
        tags = [t for t in (q.get("tags") or "").split(",") if t.strip()]
        qs = selectors.document_list(
            status=q.get("status"),
            category=q.get("category"),
            tags=tags or None,
            tags_mode=q.get("tags_mode", "any"),
            file_type=q.get("file_type"),
            search=q.get("search"),
        )
        return _paginate(self, request, qs, s.DocumentOutputSerializer)

    @extend_schema(
        request={"multipart/form-data": s.DocumentUploadSerializer},
        responses={201: s.UploadResponseSerializer, 200: s.UploadResponseSerializer},
        description="Upload one or more files (field `files`, repeated). Each file is answered on its own: "
        "`results` for accepted ones (`duplicate: true` when the same content already exists — the existing "
        "document is returned, nothing is processed again), `errors` for refused ones.",
    )
    def post(self, request):
        data = s.DocumentUploadSerializer(
            data={
                "files": request.FILES.getlist("files") or request.FILES.getlist("file"),
                "title": request.data.get("title", ""),
                "category": request.data.get("category", ""),
                "tags": request.data.getlist("tags")
                if hasattr(request.data, "getlist")
                else request.data.get("tags", []),
                "language": request.data.get("language", ""),
            }
        )
        data.is_valid(raise_exception=True)
        v = data.validated_data
        results, errors = [], []
        for upload in v["files"]:
            try:
                result = services.document_upload(
                    actor=request.user,
                    file=upload,
                    original_name=upload.name,
                    title=v["title"] if len(v["files"]) == 1 else "",
                    category=v["category"],
                    tags=v["tags"],
                    language=v["language"],
                )
            except ApplicationError as exc:
                if len(v["files"]) == 1:
                    raise
                errors.append({"file": upload.name, "error": error_body(exc.code, exc.message, exc.details)["error"]})
                continue
            results.append({"document": result.document, "duplicate": result.duplicate})
        body = s.UploadResponseSerializer({"results": results, "errors": errors}).data
        created = any(not r["duplicate"] for r in results)
        return Response(body, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class DocumentDetailView(APIView):
    permission_classes = [HasPermission.by_method({"GET": "docs:read", "PATCH": "docs:write", "DELETE": "docs:delete"})]

    @extend_schema(responses=s.DocumentDetailSerializer)
    def get(self, request, document_id):
        return Response(s.DocumentDetailSerializer(_document_or_404(document_id)).data)

    @extend_schema(request=s.DocumentUpdateSerializer, responses=s.DocumentDetailSerializer)
    def patch(self, request, document_id):
        document = _document_or_404(document_id)
        data = s.DocumentUpdateSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        services.document_update(document=document, actor=request.user, **data.validated_data)
        return Response(s.DocumentDetailSerializer(_document_or_404(document_id)).data)

    @extend_schema(responses={204: None})
    def delete(self, request, document_id):
        services.document_delete(document=_document_or_404(document_id), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DocumentReprocessView(APIView):
    permission_classes = [HasPermission.of("docs:write")]

    @extend_schema(request=None, responses={202: s.DocumentDetailSerializer})
    def post(self, request, document_id):
        services.document_reprocess(document=_document_or_404(document_id), actor=request.user)
        return Response(s.DocumentDetailSerializer(_document_or_404(document_id)).data, status=status.HTTP_202_ACCEPTED)


class DocumentChunksView(PaginatedAPIView):
    permission_classes = [HasPermission.of("docs:read")]

    @extend_schema(responses=s.ChunkOutputSerializer(many=True))
    def get(self, request, document_id):
        document = _document_or_404(document_id)
        return _paginate(self, request, selectors.document_chunks(document=document), s.ChunkOutputSerializer)


class SearchView(APIView):
    """Hybrid (dense + BM25) search over the tenant's indexed documents."""

    permission_classes = [HasAnyPermission.of("docs:read", "conversations:search")]

    @extend_schema(request=s.SearchInputSerializer, responses=s.SearchOutputSerializer)
    def post(self, request):
        data = s.SearchInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        person, _label = actor_describe(request.user)  # an API key is nobody's user id
        result = chunk_search(
            tenant=request.tenant,
            query=v["query"],
            top_k=v["top_k"],
            mode=v["mode"],
            filters=v.get("filters") or {},
            user_id=person.pk if person is not None else None,
        )
        return Response(s.SearchOutputSerializer(result.as_dict()).data)
