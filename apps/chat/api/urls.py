from django.urls import path

from apps.chat.api import views
from apps.chat.services import TRANSITIONS

urlpatterns = [
    path("conversations", views.ConversationListCreateView.as_view(), name="conversation-list"),
    path("conversations/<uuid:conversation_id>", views.ConversationDetailView.as_view(), name="conversation-detail"),
    path(
        "conversations/<uuid:conversation_id>/messages",
        views.ConversationMessagesView.as_view(),
        name="conversation-messages",
    ),
    *[
        path(
            f"conversations/<uuid:conversation_id>/{action}",
            views.ConversationTransitionView.as_view(),
            {"action": action},
            name=f"conversation-{action}",
        )
        for action in TRANSITIONS
    ],
    path("messages/<uuid:message_id>/feedback", views.MessageFeedbackView.as_view(), name="message-feedback"),
]
