from rest_framework import serializers

from apps.knowledge.models import Document, DocumentChunk, DocumentProcessingLog


class DocumentOutputSerializer(serializers.ModelSerializer):
    uploaded_by = serializers.CharField(source="uploaded_by_label", read_only=True)
    chunk_count = serializers.IntegerField(read_only=True, required=False)
    progress = serializers.IntegerField(source="processing_progress", read_only=True)

    class Meta:
        model = Document
        fields = [
            "id",
            "title",
            "original_name",
            "file_type",
            "mime_type",
            "file_size",
            "category",
            "tags",
            "language",
            "status",
            "progress",
            "error_code",
            "error_message",
            "content_hash",
            "version",
            "replaces",
            "chunk_count",
            "uploaded_by",
            "created_at",
            "updated_at",
            "indexed_at",
        ]


class ProcessingLogSerializer(serializers.ModelSerializer):
    class Meta:
        model = DocumentProcessingLog
        fields = ["stage", "status", "details", "error_message", "started_at", "completed_at"]


class DocumentDetailSerializer(DocumentOutputSerializer):
    processing_logs = ProcessingLogSerializer(many=True, read_only=True)

    class Meta(DocumentOutputSerializer.Meta):
        fields = [*DocumentOutputSerializer.Meta.fields, "metadata", "processing_logs"]


class DocumentUploadSerializer(serializers.Serializer):
    files = serializers.ListField(child=serializers.FileField(allow_empty_file=True), min_length=1, max_length=50)
    title = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")
    category = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    tags = serializers.ListField(child=serializers.CharField(max_length=100), required=False, default=list)
    language = serializers.CharField(
        max_length=10,
        required=False,
        allow_blank=True,
        default="",
        help_text=(
            "e.g. zh-CN, en. Empty: the previous version's if a person chose it, else detected from the text "
            "(zh-CN, zh-TW or en), else DOCUMENT_DEFAULT_LANGUAGE."
        ),
    )


class UploadResultSerializer(serializers.Serializer):
    document = DocumentOutputSerializer()
    duplicate = serializers.BooleanField(help_text="True when the same content was already uploaded.")


class UploadErrorSerializer(serializers.Serializer):
    file = serializers.CharField()
    error = serializers.DictField()


class UploadResponseSerializer(serializers.Serializer):
    results = UploadResultSerializer(many=True)
    errors = UploadErrorSerializer(many=True)


class DocumentUpdateSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=500, required=False, allow_blank=True)
    category = serializers.CharField(max_length=100, required=False, allow_blank=True)
    tags = serializers.ListField(child=serializers.CharField(max_length=100), required=False)
    language = serializers.CharField(max_length=10, required=False)


class ChunkOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = DocumentChunk
        fields = ["id", "chunk_index", "content", "metadata", "token_count", "char_count", "word_count"]


class SearchFiltersSerializer(serializers.Serializer):
    category = serializers.CharField(max_length=100, required=False)
    tags = serializers.ListField(child=serializers.CharField(max_length=100), required=False)
    tags_mode = serializers.ChoiceField(choices=["any", "all"], required=False)
    document_ids = serializers.ListField(child=serializers.UUIDField(), required=False, max_length=1000)
    language = serializers.CharField(max_length=10, required=False)
    file_type = serializers.ChoiceField(
        choices=["pdf", "docx", "xlsx", "pptx", "html", "md", "txt", "csv"], required=False
    )

    def to_internal_value(self, data):
        # A misspelt filter must not be dropped silently: the search would run unfiltered.
        unknown = sorted(set(data) - set(self.fields)) if isinstance(data, dict) else []
        if unknown:
            raise serializers.ValidationError({name: ["Unknown filter."] for name in unknown})
        return super().to_internal_value(data)


class SearchInputSerializer(serializers.Serializer):
    query = serializers.CharField(trim_whitespace=True, allow_blank=True)
    top_k = serializers.IntegerField(min_value=1, max_value=50, default=5)
    mode = serializers.ChoiceField(choices=["hybrid", "dense", "bm25"], default="hybrid")
    filters = SearchFiltersSerializer(required=False)


class SearchHitSerializer(serializers.Serializer):
    rank = serializers.IntegerField()
    chunk_id = serializers.UUIDField()
    document_id = serializers.UUIDField()
    document_title = serializers.CharField()
    original_name = serializers.CharField()
    file_type = serializers.CharField()
    page = serializers.IntegerField(allow_null=True)
    section = serializers.ListField(child=serializers.CharField())
    content = serializers.CharField()
    highlighted = serializers.CharField(help_text="HTML-escaped content with matched terms in <mark>.")
    score = serializers.FloatField(help_text="Fused (RRF) score: an ordering, not a probability.")
    dense_score = serializers.FloatField(allow_null=True, help_text="Cosine similarity with the query.")
    dense_rank = serializers.IntegerField(allow_null=True)
    bm25_rank = serializers.IntegerField(allow_null=True)
    metadata = serializers.DictField()


class SearchOutputSerializer(serializers.Serializer):
    query = serializers.CharField()
    mode = serializers.CharField()
    top_k = serializers.IntegerField()
    cached = serializers.BooleanField()
    timings = serializers.DictField(
        child=serializers.FloatField(),
        help_text=(
            "Milliseconds: embed_ms (query embedding), sparse_ms (its BM25 weights), dense_ms and bm25_ms "
            "(each Milvus search), milvus_ms (Milvus beyond the embedding), overhead_ms (the rest), total_ms. "
            "A cached result has total_ms only."
        ),
    )
    hits = SearchHitSerializer(many=True)
