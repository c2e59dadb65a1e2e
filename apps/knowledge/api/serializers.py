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
    language = serializers.CharField(max_length=10, required=False, allow_blank=True, default="")


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
