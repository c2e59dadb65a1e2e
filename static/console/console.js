// Zhida agent console. Vanilla JS, no build step. Talks to the conversations API
// (/api/v1/conversations…) with the session cookie and CSRF token, and streams answers over
// ws/chat/<conversation_id>/ — event protocol in apps/chat/events.py:
//   message.created · answer.delta · answer.sources · answer.completed · error
// Strings go through Django's JavaScript catalog (gettext / interpolate from /console/jsi18n/).
(function () {
  "use strict";

  var CONFIG = JSON.parse(document.getElementById("console-config").textContent);
  var _ = window.gettext || function (s) { return s; };
  var ngettext = window.ngettext || function (one, many, n) { return n === 1 ? one : many; };
  var fmt = function (template, values) {
    return window.interpolate ? window.interpolate(template, values, true) : template;
  };
  var LANG = document.documentElement.lang || "zh-hans";
  var CITATION = /\[(\d{1,3})\]|【(\d{1,3})】/g;
  var LIST_REFRESH_MS = 15000;
  var RECONNECT_MAX_MS = 30000;
  // Close codes from apps/core/websocket.py: retrying these cannot help.
  var CLOSE_FINAL = {
    4401: _("Your session has ended. Please sign in again."),
    4403: _("This workspace is suspended."),
    4404: _("This workspace could not be found."),
    4003: _("You may not open this conversation.")
  };

  // ------------------------------------------------------------------ small helpers
  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      var value = attrs[key];
      if (value === null || value === undefined || value === false) { return; }
      if (key === "className") { node.className = value; }
      else if (key === "text") { node.textContent = value; }
      else if (key.slice(0, 2) === "on") { node.addEventListener(key.slice(2), value); }
      else { node.setAttribute(key, value === true ? "" : value); }
    });
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) { return; }
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function csrfToken() {
    var match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    if (match) { return decodeURIComponent(match[1]); }
    var field = document.querySelector("input[name=csrfmiddlewaretoken]");
    return field ? field.value : "";
  }

  function api(method, path, body) {
    var options = {
      method: method,
      credentials: "same-origin",
      headers: { "Accept": "application/json", "X-CSRFToken": csrfToken() }
    };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return fetch(CONFIG.api + path, options).then(function (response) {
      return response.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (!response.ok) {
          var error = (data && data.error) || {};
          if (!leaving && (response.status === 401 || error.code === "not_authenticated" || error.code === "authentication_failed")) {
            window.location.href = CONFIG.loginUrl + "?next=" + encodeURIComponent(window.location.pathname);
          }
          var failure = new Error(error.message || fmt(_("Request failed (%(status)s)."), { status: response.status }));
          failure.code = error.code || "http_" + response.status;
          throw failure;
        }
        return data;
      });
    });
  }

  var relative = window.Intl && Intl.RelativeTimeFormat ? new Intl.RelativeTimeFormat(LANG, { numeric: "auto" }) : null;
  var timeFormat = new Intl.DateTimeFormat(LANG, { hour: "2-digit", minute: "2-digit" });
  var dateTimeFormat = new Intl.DateTimeFormat(LANG, { dateStyle: "medium", timeStyle: "short" });

  function ago(iso) {
    if (!iso) { return ""; }
    var seconds = (new Date(iso).getTime() - Date.now()) / 1000;
    if (!relative) { return dateTimeFormat.format(new Date(iso)); }
    var abs = Math.abs(seconds);
    if (abs < 45) { return relative.format(0, "second"); }
    if (abs < 3600) { return relative.format(Math.round(seconds / 60), "minute"); }
    if (abs < 86400) { return relative.format(Math.round(seconds / 3600), "hour"); }
    if (abs < 86400 * 7) { return relative.format(Math.round(seconds / 86400), "day"); }
    return dateTimeFormat.format(new Date(iso));
  }

  function label(list, value) {
    for (var i = 0; i < list.length; i++) { if (list[i].value === value) { return list[i].label; } }
    return value;
  }

  // ------------------------------------------------------------------ state
  // Set once the page is going away (sign-out, language switch, navigation): requests and
  // sockets still in flight must not send the browser anywhere else.
  var leaving = false;
  var state = {
    conversations: [],
    current: null,          // the open conversation (API representation)
    messages: [],           // its messages, normalised (see normaliseMessage)
    streaming: null,        // {text, node, messageId, sources} while an answer streams in
    pendingSources: {},     // message id → sources (answer.sources arrives before completed)
    socket: null,
    selectedSource: null    // {messageId, number}
  };

  // Unread markers and feedback given live in localStorage, per workspace and user.
  var storeKey = "zhida.console." + CONFIG.tenant + "." + CONFIG.user.id;
  var store = (function () {
    var data = {};
    try { data = JSON.parse(window.localStorage.getItem(storeKey) || "{}") || {}; } catch (e) { data = {}; }
    data.seen = data.seen || {};
    data.feedback = data.feedback || {};
    return {
      data: data,
      save: function () {
        try { window.localStorage.setItem(storeKey, JSON.stringify(data)); } catch (e) { /* private mode */ }
      }
    };
  })();

  function markSeen(conversation) {
    if (!conversation) { return; }
    store.data.seen[conversation.id] = conversation.last_message_at || conversation.created_at;
    store.save();
  }

  function isUnread(conversation) {
    if (!conversation.last_message_at) { return false; }
    if (state.current && state.current.id === conversation.id) { return false; }
    var seen = store.data.seen[conversation.id];
    return !seen || new Date(seen).getTime() < new Date(conversation.last_message_at).getTime();
  }

  // ------------------------------------------------------------------ conversation list
  var listTimer = null;
  var listRequest = 0;

  function filters() {
    var params = new URLSearchParams();
    var search = $("filter-search").value.trim();
    if (search) { params.set("search", search); }
    if ($("filter-status").value) { params.set("status", $("filter-status").value); }
    if ($("filter-priority").value) { params.set("priority", $("filter-priority").value); }
    if ($("filter-needs-human").checked) { params.set("needs_human", "true"); }
    params.set("limit", "100");
    return params.toString();
  }

  function loadConversations() {
    var ticket = ++listRequest;
    $("list-state").textContent = state.conversations.length ? "" : _("Loading…");
    return api("GET", "conversations?" + filters()).then(function (page) {
      if (ticket !== listRequest) { return; }
      var first = !store.data.initialised;
      state.conversations = page.results || [];
      if (first) {
        // First visit in this browser: what is already there counts as seen.
        state.conversations.forEach(markSeen);
        store.data.initialised = true;
        store.save();
      }
      renderConversations();
    }).catch(function (error) {
      if (ticket !== listRequest) { return; }
      $("list-state").textContent = error.message;
    });
  }

  function scheduleListRefresh() {
    window.clearTimeout(listTimer);
    listTimer = window.setTimeout(function () {
      if (leaving) { return; }
      if (document.visibilityState === "visible") { loadConversations(); }
      scheduleListRefresh();
    }, LIST_REFRESH_MS);
  }

  function renderConversations() {
    var list = $("conversation-list");
    var focusedId = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.conversation : null;
    list.textContent = "";
    $("list-state").textContent = state.conversations.length ? "" : _("No conversations match these filters.");
    state.conversations.forEach(function (c) {
      var unread = isUnread(c);
      var current = state.current && state.current.id === c.id;
      var badges = [];
      if (c.needs_human) { badges.push(el("span", { className: "badge badge--alert", text: _("Needs a human") })); }
      if (c.priority !== "normal") {
        badges.push(el("span", { className: "badge badge--prio-" + c.priority, text: label(CONFIG.priorities, c.priority) }));
      }
      if (c.status !== "active") {
        badges.push(el("span", { className: "badge badge--status-" + c.status, text: label(CONFIG.statuses, c.status) }));
      }
      (c.tags || []).slice(0, 3).forEach(function (tag) { badges.push(el("span", { className: "tag", text: tag })); });
      var title = c.title || _("Untitled conversation");
      var accessible = title + (unread ? " — " + _("new messages") : "") + (c.needs_human ? " — " + _("needs a human") : "");
      var button = el("button", {
        type: "button",
        className: "conv" + (current ? " is-current" : "") + (unread ? " is-unread" : ""),
        "data-conversation": c.id,
        "aria-current": current ? "true" : null,
        "aria-label": accessible,
        onclick: function () { openConversation(c.id); }
      }, [
        el("span", { className: "conv__top" }, [
          el("span", { className: "conv__dot", "aria-hidden": "true", title: _("New messages") }),
          el("span", { className: "conv__title", text: title }),
          el("span", { className: "conv__time", text: ago(c.last_message_at || c.created_at) })
        ]),
        el("span", { className: "conv__meta" }, [
          el("span", { className: "conv__count", text: fmt(ngettext("%(count)s message", "%(count)s messages", c.message_count), { count: c.message_count }) })
        ].concat(badges))
      ]);
      list.appendChild(el("li", {}, [button]));
    });
    if (focusedId) {
      var again = list.querySelector('[data-conversation="' + focusedId + '"]');
      if (again) { again.focus(); }
    }
  }

  function updateListItem(conversation) {
    var found = false;
    state.conversations = state.conversations.map(function (c) {
      if (c.id === conversation.id) { found = true; return conversation; }
      return c;
    });
    if (!found) { state.conversations.unshift(conversation); }
    renderConversations();
  }

  // ------------------------------------------------------------------ opening a conversation
  function openConversation(id) {
    if (state.current && state.current.id === id) { $("question").focus(); return Promise.resolve(); }
    closeSocket();
    state.current = null;
    state.messages = [];
    state.streaming = null;
    state.pendingSources = {};
    clearSources();
    hideError();
    $("empty-state").hidden = true;
    $("conversation").hidden = false;
    $("messages").textContent = "";
    $("messages").setAttribute("aria-busy", "true");
    return Promise.all([api("GET", "conversations/" + id), api("GET", "conversations/" + id + "/messages?limit=500")])
      .then(function (results) {
        state.current = results[0];
        state.messages = (results[1].results || []).map(normaliseMessage);
        markSeen(state.current);
        renderHeader();
        renderMessages();
        updateListItem(state.current);
        $("messages").setAttribute("aria-busy", "false");
        openSocket(id);
        if (history.replaceState) { history.replaceState(null, "", "#" + id); }
        $("question").focus();
      })
      .catch(function (error) {
        $("messages").setAttribute("aria-busy", "false");
        showError(error.message, error.code);
      });
  }

  function reloadMessages() {
    if (!state.current) { return Promise.resolve(); }
    var id = state.current.id;
    return Promise.all([api("GET", "conversations/" + id), api("GET", "conversations/" + id + "/messages?limit=500")])
      .then(function (results) {
        if (!state.current || state.current.id !== id) { return; }
        state.current = results[0];
        state.messages = (results[1].results || []).map(normaliseMessage);
        state.streaming = null;
        markSeen(state.current);
        renderHeader();
        renderMessages();
        updateListItem(state.current);
      });
  }

  function newConversation() {
    if (!CONFIG.canCreate) { showError(_("You may not start conversations."), "permission_denied"); return; }
    api("POST", "conversations", {}).then(function (conversation) {
      if ($("filter-status").value && $("filter-status").value !== "active") { $("filter-status").value = ""; }
      updateListItem(conversation);
      return openConversation(conversation.id);
    }).catch(function (error) { showError(error.message, error.code); });
  }

  // ------------------------------------------------------------------ header, priority, tags, status
  function renderHeader() {
    var c = state.current;
    $("chat-title").textContent = c.title || _("Untitled conversation");
    var status = $("chat-status");
    status.textContent = label(CONFIG.statuses, c.status);
    status.className = "badge badge--status-" + c.status;
    $("chat-needs-human").hidden = !c.needs_human;
    $("needs-human-banner").hidden = !c.needs_human;
    $("chat-owner").textContent = c.created_by ? fmt(_("started by %(who)s"), { who: c.created_by }) : "";
    $("chat-priority").value = c.priority;
    $("chat-close").hidden = c.status !== "active";
    $("chat-reopen").hidden = c.status === "active";
    $("chat-archive").hidden = c.status === "archived";
    renderTags();
    var active = c.status === "active";
    var canAsk = active && CONFIG.canCreate;
    $("question").disabled = !canAsk;
    $("send").disabled = !canAsk || !!state.streaming;
    var note = $("composer-note");
    note.hidden = canAsk;
    note.textContent = !CONFIG.canCreate ? _("You can read this conversation but not ask questions in it.")
      : (active ? "" : _("This conversation is not active. Reopen it to ask more questions."));
  }

  function patchConversation(fields) {
    var id = state.current.id;
    return api("PATCH", "conversations/" + id, fields).then(function (conversation) {
      if (state.current && state.current.id === id) { state.current = conversation; renderHeader(); }
      updateListItem(conversation);
    }).catch(function (error) {
      showError(error.message, error.code);
      if (state.current) { renderHeader(); }
    });
  }

  function transition(action) {
    var id = state.current.id;
    api("POST", "conversations/" + id + "/" + action).then(function (conversation) {
      if (state.current && state.current.id === id) { state.current = conversation; renderHeader(); }
      updateListItem(conversation);
      announce(fmt(_("Conversation is now %(status)s."), { status: label(CONFIG.statuses, conversation.status) }));
    }).catch(function (error) { showError(error.message, error.code); });
  }

  function renderTags() {
    var list = $("tags-list");
    list.textContent = "";
    (state.current.tags || []).forEach(function (tag) {
      list.appendChild(el("li", { className: "tag tag--editable" }, [
        el("span", { text: tag }),
        el("button", {
          type: "button", className: "tag__remove",
          "aria-label": fmt(_("Remove tag %(tag)s"), { tag: tag }),
          onclick: function () { setTags(state.current.tags.filter(function (t) { return t !== tag; })); $("tag-input").focus(); }
        }, ["×"])
      ]));
    });
  }

  function setTags(tags) { return patchConversation({ tags: tags }); }

  function addTagFromInput() {
    var input = $("tag-input");
    var values = input.value.split(/[,，]/).map(function (t) { return t.trim(); }).filter(Boolean);
    input.value = "";
    if (!values.length || !state.current) { return; }
    var tags = (state.current.tags || []).slice();
    values.forEach(function (v) { if (tags.indexOf(v) === -1) { tags.push(v); } });
    setTags(tags);
  }

  // ------------------------------------------------------------------ messages
  function normaliseSource(s) {
    return {
      number: s.number,
      documentId: s.document_id || s.document || null,
      title: s.title || _("Untitled document"),
      page: s.page || null,
      section: Array.isArray(s.section) ? s.section.join(" › ") : (s.section || ""),  // a heading path
      quote: s.quote || "",
      similarity: s.similarity !== undefined ? s.similarity : s.similarity_score
    };
  }

  function normaliseMessage(m) {
    return {
      id: m.id,
      role: m.role,
      content: m.content,
      metadata: m.metadata || {},
      createdAt: m.created_at,
      sources: (m.sources || []).map(normaliseSource)
    };
  }

  function messageById(id) {
    for (var i = 0; i < state.messages.length; i++) { if (state.messages[i].id === id) { return state.messages[i]; } }
    return null;
  }

  // Text with its citation markers turned into buttons. Built from text nodes, never HTML.
  function renderAnswerBody(container, text, messageId) {
    container.textContent = "";
    var last = 0;
    text.replace(CITATION, function (match, a, b, offset) {
      if (offset > last) { container.appendChild(document.createTextNode(text.slice(last, offset))); }
      var number = parseInt(a || b, 10);
      container.appendChild(el("button", {
        type: "button", className: "cite", "data-number": number, "data-message": messageId || "",
        "aria-label": fmt(_("Show source %(number)s"), { number: number }),
        onclick: function (event) { showSource(event.currentTarget.dataset.message, number); }
      }, [String(number)]));
      last = offset + match.length;
      return match;
    });
    if (last < text.length) { container.appendChild(document.createTextNode(text.slice(last))); }
  }

  // Thumb icons (Feather, MIT): drawn, so they look the same without an emoji font.
  var THUMBS = {
    up: "M14 9V5a3 3 0 0 0-3-3l-4 9v11h11.28a2 2 0 0 0 2-1.7l1.38-9a2 2 0 0 0-2-2.3zM7 22H4a2 2 0 0 1-2-2v-7a2 2 0 0 1 2-2h3",
    down: "M10 15v4a3 3 0 0 0 3 3l4-9V2H5.72a2 2 0 0 0-2 1.7l-1.38 9a2 2 0 0 0 2 2.3zm7-13h2.67A2.31 2.31 0 0 1 22 4v7a2.31 2.31 0 0 1-2.33 2H17"
  };

  function icon(path) {
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", "16");
    svg.setAttribute("height", "16");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    var shape = document.createElementNS(ns, "path");
    shape.setAttribute("d", path);
    svg.appendChild(shape);
    return svg;
  }

  function feedbackButtons(message) {
    var given = store.data.feedback[message.id];
    function button(rating, glyph, text) {
      return el("button", {
        type: "button", className: "fb", "data-rating": rating,
        "aria-pressed": given === rating ? "true" : "false",
        "aria-label": text, title: text,
        onclick: function (event) { sendFeedback(message, rating, event.currentTarget.parentNode); }
      }, [icon(glyph)]);
    }
    return el("div", { className: "msg__feedback", role: "group", "aria-label": _("Was this answer helpful?") }, [
      button("up", THUMBS.up, _("Helpful")),
      button("down", THUMBS.down, _("Not helpful"))
    ]);
  }

  function sendFeedback(message, rating, group) {
    api("POST", "messages/" + message.id + "/feedback", { rating: rating }).then(function () {
      store.data.feedback[message.id] = rating;
      store.save();
      Array.prototype.forEach.call(group.querySelectorAll(".fb"), function (b) {
        b.setAttribute("aria-pressed", b.dataset.rating === rating ? "true" : "false");
      });
      announce(_("Thank you for the feedback."));
    }).catch(function (error) { showError(error.message, error.code); });
  }

  function messageNode(message) {
    var isAnswer = message.role === "assistant";
    var meta = message.metadata || {};
    var body = el("div", { className: "msg__body" });
    if (isAnswer) { renderAnswerBody(body, message.content, message.id); } else { body.textContent = message.content; }
    var flags = [];
    if (isAnswer && meta.answered === false && meta.state === "complete") {
      flags.push(el("span", { className: "badge badge--alert", text: _("Not in the knowledge base") }));
    }
    if (meta.state === "incomplete") { flags.push(el("span", { className: "badge badge--warn", text: _("Incomplete") })); }
    if (meta.state === "failed") { flags.push(el("span", { className: "badge badge--alert", text: _("Failed") })); }
    var footer = [];
    if (isAnswer && message.sources.length) {
      footer.push(el("button", {
        type: "button", className: "btn btn--link msg__sources",
        onclick: function () { showSources(message.id); }
      }, [fmt(ngettext("%(count)s source", "%(count)s sources", message.sources.length), { count: message.sources.length })]));
    }
    if (isAnswer && message.id) { footer.push(feedbackButtons(message)); }
    return el("li", {
      className: "msg msg--" + message.role, "data-message": message.id || ""
    }, [
      el("div", { className: "msg__head" }, [
        el("span", { className: "msg__who", text: isAnswer ? _("Assistant") : (message.role === "user" ? _("Question") : _("System")) }),
        el("time", { className: "msg__time", datetime: message.createdAt, title: message.createdAt ? dateTimeFormat.format(new Date(message.createdAt)) : "", text: message.createdAt ? timeFormat.format(new Date(message.createdAt)) : "" })
      ].concat(flags)),
      body,
      footer.length ? el("div", { className: "msg__foot" }, footer) : null
    ]);
  }

  function renderMessages() {
    var list = $("messages");
    list.textContent = "";
    state.messages.forEach(function (m) { list.appendChild(messageNode(m)); });
    if (!state.messages.length) {
      list.appendChild(el("li", { className: "messages__empty muted", text: _("No messages yet. Ask the first question below.") }));
    }
    scrollToEnd();
  }

  function appendMessage(message) {
    if (message.id && messageById(message.id)) { return; }
    var empty = $("messages").querySelector(".messages__empty");
    if (empty) { empty.remove(); }
    state.messages.push(message);
    var node = messageNode(message);
    if (state.streaming && state.streaming.node && state.streaming.node.parentNode) {
      $("messages").insertBefore(node, state.streaming.node);
    } else {
      $("messages").appendChild(node);
    }
    scrollToEnd();
  }

  function scrollToEnd() {
    var list = $("messages");
    list.scrollTop = list.scrollHeight;
  }

  // ------------------------------------------------------------------ streaming (websocket events)
  function startStreaming() {
    if (state.streaming) { return state.streaming; }
    var body = el("div", { className: "msg__body" }, [el("span", { className: "typing", text: _("Searching the knowledge base…") })]);
    var node = el("li", { className: "msg msg--assistant is-streaming", "aria-busy": "true" }, [
      el("div", { className: "msg__head" }, [el("span", { className: "msg__who", text: _("Assistant") })]),
      body
    ]);
    var empty = $("messages").querySelector(".messages__empty");
    if (empty) { empty.remove(); }
    $("messages").appendChild(node);
    state.streaming = { text: "", node: node, body: body, messageId: null, deltas: 0 };
    $("send").disabled = true;
    scrollToEnd();
    return state.streaming;
  }

  function stopStreaming() {
    if (state.streaming && state.streaming.node) { state.streaming.node.remove(); }
    state.streaming = null;
    if (state.current) { renderHeader(); }
  }

  function onEvent(event) {
    switch (event.type) {
      case "message.created": {
        var message = normaliseMessage(event.message);
        if (message.role === "user") {
          if (event.client_id && event.client_id === pendingClientId) { pendingClientId = null; }
          appendMessage(message);
          startStreaming();
        } else {
          appendMessage(message);
        }
        touchCurrent(event.message.created_at);
        break;
      }
      case "answer.delta": {
        var stream = startStreaming();
        stream.text += event.delta;
        stream.deltas += 1;
        stream.node.dataset.deltas = String(stream.deltas);
        renderAnswerBody(stream.body, stream.text, stream.messageId);
        scrollToEnd();
        break;
      }
      case "answer.sources": {
        state.pendingSources[event.message_id] = (event.sources || []).map(normaliseSource);
        if (state.streaming) {
          state.streaming.messageId = event.message_id;
          renderAnswerBody(state.streaming.body, state.streaming.text, event.message_id);
        }
        break;
      }
      case "answer.completed": {
        var answer = normaliseMessage(event.message);
        answer.sources = state.pendingSources[answer.id] || [];
        delete state.pendingSources[answer.id];
        if (state.streaming && state.streaming.node) { state.streaming.node.remove(); }
        state.streaming = null;
        appendMessage(answer);
        if (state.current) {
          state.current.needs_human = state.current.needs_human || !!event.needs_human;
          renderHeader();
          touchCurrent(event.message.created_at);
          reloadHeaderOnly();  // title, priority and counters as the server now has them
        }
        if (event.needs_human) { announce(_("The assistant could not answer: this conversation needs a human.")); }
        break;
      }
      case "error": {
        showError(event.message, event.code);
        if (pendingClientId && lastQuestion && !$("question").value) {
          // Refused before it was stored (empty, too long, conversation closed…): give it back.
          $("question").value = lastQuestion;
          autosize();
        }
        pendingClientId = null;
        if (event.message_id) {
          // The answer was stored (incomplete or failed): show what was kept.
          reloadMessages();
        } else {
          stopStreaming();
        }
        break;
      }
      default:
        break;
    }
  }

  function reloadHeaderOnly() {
    var id = state.current.id;
    api("GET", "conversations/" + id).then(function (conversation) {
      if (state.current && state.current.id === id) { state.current = conversation; renderHeader(); updateListItem(conversation); }
    }).catch(function () {});
  }

  function touchCurrent(at) {
    if (!state.current) { return; }
    state.current.last_message_at = at || new Date().toISOString();
    markSeen(state.current);
    updateListItem(state.current);
  }

  // ------------------------------------------------------------------ websocket with backoff
  var pendingClientId = null;
  var lastQuestion = "";

  function setConnection(stateName, text, retry) {
    var box = $("conn-status");
    box.dataset.state = stateName;
    box.querySelector(".conn__text").textContent = text;
    $("conn-retry").hidden = !retry;
  }

  function closeSocket() {
    if (state.socket) { state.socket.stop(); state.socket = null; }
    setConnection("idle", _("Not connected"), false);
  }

  function openSocket(conversationId) {
    var attempts = 0;
    var timer = null;
    var countdown = null;
    var ws = null;
    var stopped = false;
    var droppedOnce = false;
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    var url = scheme + window.location.host + CONFIG.wsPath + conversationId + "/";

    function connect() {
      window.clearTimeout(timer);
      window.clearInterval(countdown);
      setConnection("connecting", attempts ? _("Reconnecting…") : _("Connecting…"), false);
      ws = new WebSocket(url);
      ws.onopen = function () {
        attempts = 0;
        setConnection("open", _("Live"), false);
        if (droppedOnce) {
          // Whatever streamed while we were away is stored: catch up.
          reloadMessages();
          hideError();
        }
      };
      ws.onmessage = function (message) {
        var event;
        try { event = JSON.parse(message.data); } catch (e) { return; }
        onEvent(event);
      };
      ws.onclose = function (close) {
        if (stopped || leaving) { return; }
        droppedOnce = true;
        if (state.streaming) { stopStreaming(); }
        if (CLOSE_FINAL[close.code]) {
          setConnection("failed", CLOSE_FINAL[close.code], false);
          showError(CLOSE_FINAL[close.code], "ws_" + close.code);
          if (close.code === 4401) {
            window.setTimeout(function () { if (!leaving) { window.location.href = CONFIG.loginUrl; } }, 2500);
          }
          return;
        }
        attempts += 1;
        var delay = Math.min(RECONNECT_MAX_MS, 1000 * Math.pow(2, attempts - 1));
        delay = Math.round(delay * (0.75 + Math.random() * 0.5));
        var due = Date.now() + delay;
        var tick = function () {
          var left = Math.max(0, Math.ceil((due - Date.now()) / 1000));
          setConnection("waiting", fmt(_("Connection lost. Reconnecting in %(seconds)s s…"), { seconds: left }), true);
        };
        tick();
        countdown = window.setInterval(tick, 1000);
        timer = window.setTimeout(connect, delay);
      };
    }

    connect();
    state.socket = {
      send: function (payload) {
        if (!ws || ws.readyState !== WebSocket.OPEN) { return false; }
        ws.send(JSON.stringify(payload));
        return true;
      },
      retryNow: function () { if (!stopped && (!ws || ws.readyState === WebSocket.CLOSED)) { attempts = Math.max(0, attempts - 1); connect(); } },
      stop: function () {
        stopped = true;
        window.clearTimeout(timer);
        window.clearInterval(countdown);
        if (ws && ws.readyState <= WebSocket.OPEN) { ws.close(1000); }
      }
    };
  }

  function ask() {
    var input = $("question");
    var text = input.value.trim();
    if (!text || !state.current || state.streaming) { return; }
    lastQuestion = text;
    pendingClientId = "c" + Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
    var sent = state.socket && state.socket.send({ type: "question", content: text, client_id: pendingClientId });
    if (!sent) {
      showError(_("Not connected to the server. Your question was not sent; it will stay in the box."), "not_connected");
      return;
    }
    hideError();
    input.value = "";
    autosize();
    startStreaming();
  }

  // ------------------------------------------------------------------ sources panel
  function sourcesOf(messageId) {
    if (state.pendingSources[messageId]) { return state.pendingSources[messageId]; }
    var message = messageById(messageId);
    return message ? message.sources : [];
  }

  function fileUrl(source) {
    if (!source.documentId) { return null; }
    var url = CONFIG.fileUrl.replace(CONFIG.filePlaceholder, source.documentId);
    return source.page ? url + "#page=" + source.page : url;
  }

  function clearSources() {
    state.selectedSource = null;
    $("sources-list").textContent = "";
    $("sources-empty").hidden = false;
    $("sources-caption").textContent = "";
    document.body.classList.remove("sources-open");
  }

  function showSources(messageId, highlight) {
    var sources = sourcesOf(messageId);
    var list = $("sources-list");
    list.textContent = "";
    $("sources-empty").hidden = sources.length > 0;
    if (!sources.length) {
      $("sources-empty").textContent = messageId ? _("The sources of this answer are still loading.") : $("sources-empty").textContent;
    }
    $("sources-caption").textContent = sources.length ? fmt(ngettext("%(count)s cited passage", "%(count)s cited passages", sources.length), { count: sources.length }) : "";
    document.body.classList.add("sources-open");
    var target = null;
    sources.forEach(function (s) {
      var href = fileUrl(s);
      var where = [];
      if (s.page) { where.push(fmt(_("page %(page)s"), { page: s.page })); }
      if (s.section && s.section.trim()) { where.push(s.section.trim()); }
      if (typeof s.similarity === "number") { where.push(fmt(_("relevance %(score)s"), { score: Math.round(s.similarity * 100) + "%" })); }
      var titleNode = href
        ? el("a", { className: "source__title", href: href, target: "_blank", rel: "noopener", text: s.title })
        : el("span", { className: "source__title", text: s.title });
      var item = el("li", {
        className: "source" + (highlight === s.number ? " is-selected" : ""),
        id: "source-" + messageId + "-" + s.number, tabindex: "-1", "data-number": s.number
      }, [
        el("div", { className: "source__head" }, [el("span", { className: "cite cite--static", "aria-hidden": "true", text: String(s.number) }), titleNode]),
        where.length ? el("div", { className: "source__meta muted", text: where.join(" · ") }) : null,
        el("blockquote", { className: "source__quote", text: s.quote }),
        href ? el("a", { className: "btn btn--small source__open", href: href, target: "_blank", rel: "noopener",
          "aria-label": fmt(_("Open %(title)s in a new tab"), { title: s.title }) },
        [s.page ? fmt(_("Open at page %(page)s"), { page: s.page }) : _("Open document"), " ↗"])
          : el("span", { className: "muted", text: _("The document is no longer available.") })
      ]);
      if (highlight === s.number) { target = item; }
      list.appendChild(item);
    });
    state.selectedSource = { messageId: messageId, number: highlight || null };
    if (target) {
      target.scrollIntoView({ block: "nearest" });
      target.focus({ preventScroll: true });
    }
  }

  function showSource(messageId, number) {
    if (!messageId && state.streaming) { messageId = state.streaming.messageId; }
    showSources(messageId, number);
  }

  // ------------------------------------------------------------------ banners and announcements
  function showError(message, code) {
    $("error-text").textContent = message + (code ? " (" + code + ")" : "");
    $("error-banner").hidden = false;
    if ($("conversation").hidden) { $("list-state").textContent = message; }
  }

  function hideError() { $("error-banner").hidden = true; }

  var liveRegion = null;
  function announce(text) {
    if (!liveRegion) {
      liveRegion = el("div", { className: "visually-hidden", role: "status", "aria-live": "polite" });
      document.body.appendChild(liveRegion);
    }
    liveRegion.textContent = "";
    window.setTimeout(function () { liveRegion.textContent = text; }, 50);
  }

  function autosize() {
    var input = $("question");
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight, 240) + "px";
  }

  // ------------------------------------------------------------------ wiring
  function debounce(fn, ms) {
    var t = null;
    return function () { window.clearTimeout(t); t = window.setTimeout(fn, ms); };
  }

  function wire() {
    $("new-conversation").addEventListener("click", newConversation);
    $("new-conversation").hidden = !CONFIG.canCreate;
    $("filters").addEventListener("submit", function (e) { e.preventDefault(); loadConversations(); });
    $("filter-search").addEventListener("input", debounce(loadConversations, 250));
    ["filter-status", "filter-priority", "filter-needs-human"].forEach(function (id) {
      $(id).addEventListener("change", loadConversations);
    });
    $("filter-search").addEventListener("keydown", function (e) {
      if (e.key === "Escape") { $("filter-search").value = ""; loadConversations(); }
      if (e.key === "ArrowDown") {
        var first = document.querySelector("#conversation-list .conv");
        if (first) { e.preventDefault(); first.focus(); }
      }
    });
    $("conversation-list").addEventListener("keydown", function (e) {
      if (e.key !== "ArrowDown" && e.key !== "ArrowUp") { return; }
      var items = Array.prototype.slice.call(document.querySelectorAll("#conversation-list .conv"));
      var index = items.indexOf(document.activeElement);
      if (index === -1) { return; }
      e.preventDefault();
      var next = items[index + (e.key === "ArrowDown" ? 1 : -1)];
      if (next) { next.focus(); } else if (e.key === "ArrowUp") { $("filter-search").focus(); }
    });

    $("composer").addEventListener("submit", function (e) { e.preventDefault(); ask(); });
    $("question").addEventListener("keydown", function (e) {
      // Enter sends; Shift+Enter is a new line; Enter that confirms an IME candidate is not a send.
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        ask();
      }
    });
    $("question").addEventListener("input", autosize);

    $("chat-priority").addEventListener("change", function (e) { patchConversation({ priority: e.target.value }); });
    $("chat-close").addEventListener("click", function () { transition("close"); });
    $("chat-reopen").addEventListener("click", function () { transition("reopen"); });
    $("chat-archive").addEventListener("click", function () { transition("archive"); });
    $("tag-input").addEventListener("keydown", function (e) {
      if ((e.key === "Enter" || e.key === "," || e.key === "，") && !e.isComposing) {
        e.preventDefault();
        addTagFromInput();
      } else if (e.key === "Backspace" && !e.target.value && state.current && state.current.tags.length) {
        setTags(state.current.tags.slice(0, -1));
      }
    });
    $("tag-input").addEventListener("blur", function () { if ($("tag-input").value.trim()) { addTagFromInput(); } });
    $("error-dismiss").addEventListener("click", hideError);
    $("sources-close").addEventListener("click", function () { document.body.classList.remove("sources-open"); });
    $("conn-retry").addEventListener("click", function () { if (state.socket) { state.socket.retryNow(); } });

    document.addEventListener("keydown", function (e) {
      if (e.key === "Escape" && document.body.classList.contains("sources-open") && $("sources-panel").contains(document.activeElement)) {
        document.body.classList.remove("sources-open");
        $("question").focus();
      }
      if ((e.ctrlKey || e.metaKey) && !e.altKey && (e.key === "k" || e.key === "K")) {
        e.preventDefault();
        $("filter-search").focus();
        $("filter-search").select();
      } else if (e.altKey && !e.ctrlKey && !e.metaKey && e.code === "KeyN") {
        e.preventDefault();
        newConversation();
      }
    });
    function leave() {
      leaving = true;
      window.clearTimeout(listTimer);
      if (state.socket) { state.socket.stop(); }
    }
    window.addEventListener("pagehide", leave);
    window.addEventListener("pageshow", function (e) { if (e.persisted) { window.location.reload(); } });
    document.querySelector(".topbar__logout").addEventListener("submit", leave);
    // The language switch comes back to the open conversation.
    Array.prototype.forEach.call(document.querySelectorAll(".lang-switch"), function (form) {
      form.addEventListener("submit", function () {
        form.querySelector("input[name=next]").value = window.location.pathname + window.location.hash;
        leave();
      });
    });
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "visible") { loadConversations(); }
    });
  }

  wire();
  document.documentElement.dataset.console = "ready";  // keyboard shortcuts are live (tests wait for this)
  loadConversations().then(function () {
    var wanted = window.location.hash.slice(1);
    if (/^[0-9a-f-]{36}$/i.test(wanted)) { openConversation(wanted); }
  });
  scheduleListRefresh();
})();
