from django.urls import path

from apps.knowledge.api import views

urlpatterns = [
    path("search", views.SearchView.as_view(), name="search"),
    path("documents", views.DocumentListCreateView.as_view(), name="document-list"),
    path("documents/<uuid:document_id>", views.DocumentDetailView.as_view(), name="document-detail"),
    path("documents/<uuid:document_id>/reprocess", views.DocumentReprocessView.as_view(), name="document-reprocess"),
    path("documents/<uuid:document_id>/chunks", views.DocumentChunksView.as_view(), name="document-chunks"),
]
