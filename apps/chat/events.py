"""The chat event protocol, in one place. Every event is a JSON object with a ``type``.

Client → server (websocket ``ws/chat/<conversation_id>/``):
  {"type": "question", "content": "<text>", "client_id": "<optional echo id>"}

Server → client (websocket, and Server-Sent Events on the REST stream endpoint):
  message.created   {"type", "message": {id, role, content, created_at, ...}, "client_id"}
  answer.delta      {"type", "message_id", "delta": "<text piece>"}
  answer.sources    {"type", "message_id", "sources": [{number, document_id, chunk_id, title, page, section,
                     quote, similarity, rank}]}
  answer.completed  {"type", "message": {...the persisted assistant message...}, "needs_human": bool}
  error             {"type", "code": "<stable code>", "message": "<readable>", "message_id": "<id or null>"}

Close codes: 4401 not authenticated, 4403 tenant suspended/deleted, 4404 unknown tenant host,
4003 forbidden (no conversations permission, or another user's/tenant's conversation).
"""

MESSAGE_CREATED = "message.created"
ANSWER_DELTA = "answer.delta"
ANSWER_SOURCES = "answer.sources"
ANSWER_COMPLETED = "answer.completed"
ERROR = "error"
