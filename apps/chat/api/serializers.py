from rest_framework import serializers

from apps.chat.models import Conversation, Message, MessageSource


class ConversationOutputSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by_label", read_only=True)

    class Meta:
        model = Conversation
        fields = [
            "id",
            "title",
            "status",
            "priority",
            "category",
            "tags",
            "context",
            "metadata",
            "needs_human",
            "message_count",
            "last_message_at",
            "created_by",
            "created_at",
            "updated_at",
            "closed_at",
            "archived_at",
        ]


class ConversationCreateSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")
    priority = serializers.ChoiceField(choices=Conversation.Priority.values, default="normal")
    category = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    tags = serializers.ListField(child=serializers.CharField(max_length=100), required=False, default=list)
    context = serializers.DictField(required=False, default=dict)


class ConversationUpdateSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=500, required=False, allow_blank=True)
    priority = serializers.ChoiceField(choices=Conversation.Priority.values, required=False)
    category = serializers.CharField(max_length=100, required=False, allow_blank=True)
    tags = serializers.ListField(child=serializers.CharField(max_length=100), required=False)
    context = serializers.DictField(required=False)


class SourceOutputSerializer(serializers.ModelSerializer):
    number = serializers.IntegerField(source="metadata.number", read_only=True)
    title = serializers.CharField(source="metadata.title", read_only=True)
    page = serializers.IntegerField(source="metadata.page", read_only=True, allow_null=True)
    quote = serializers.CharField(source="metadata.quote", read_only=True)

    class Meta:
        model = MessageSource
        fields = ["number", "document", "chunk", "title", "page", "quote", "similarity_score", "rank_position"]


class MessageOutputSerializer(serializers.ModelSerializer):
    sources = SourceOutputSerializer(many=True, read_only=True)

    class Meta:
        model = Message
        fields = [
            "id",
            "conversation",
            "parent_message",
            "role",
            "content",
            "content_type",
            "token_count",
            "metadata",
            "sources",
            "created_at",
        ]


class AskSerializer(serializers.Serializer):
    content = serializers.CharField(allow_blank=True, trim_whitespace=True)
    stream = serializers.BooleanField(default=False, help_text="Stream as Server-Sent Events.")


class AskOutputSerializer(serializers.Serializer):
    question = MessageOutputSerializer()
    answer = MessageOutputSerializer(allow_null=True)
    needs_human = serializers.BooleanField()
    error = serializers.DictField(allow_null=True)


class FeedbackSerializer(serializers.Serializer):
    rating = serializers.ChoiceField(choices=["up", "down"])
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=4000)
