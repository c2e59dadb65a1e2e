// Live progress bars on the document list: websocket first (ws/documents/), polling the
// admin's progress endpoint every 2 s as a fallback while anything is still processing.
(function () {
  "use strict";
  function bars() { return Array.from(document.querySelectorAll(".zhida-progress[data-document]")); }
  function update(doc) {
    bars().filter(function (b) { return b.dataset.document === String(doc.id); }).forEach(function (b) {
      var progress = doc.progress !== undefined ? doc.progress : doc.processing_progress;
      b.dataset.status = doc.status;
      b.title = doc.error_message || doc.status;
      b.querySelector(".zhida-progress-bar").style.width = progress + "%";
      b.querySelector("span").textContent = progress + "%";
    });
  }
  function pending() { return bars().filter(function (b) { return b.dataset.status === "processing" || b.dataset.status === "uploading"; }); }
  var socketAlive = false;
  function poll() {
    var ids = pending().map(function (b) { return "id=" + encodeURIComponent(b.dataset.document); });
    if (!ids.length || !window.ZHIDA_PROGRESS_URL) { return; }
    fetch(window.ZHIDA_PROGRESS_URL + "?" + ids.join("&"), { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (data) { (data.documents || []).forEach(update); })
      .catch(function () {});
  }
  function connect() {
    if (!("WebSocket" in window)) { return; }
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var ws = new WebSocket(scheme + location.host + "/ws/documents/");
    ws.onopen = function () { socketAlive = true; };
    ws.onmessage = function (e) {
      var msg = JSON.parse(e.data);
      if (msg.type === "document.progress") { update(msg.document); }
    };
    ws.onclose = function () { socketAlive = false; setTimeout(connect, 5000); };
  }
  document.addEventListener("DOMContentLoaded", function () {
    if (!bars().length) { return; }
    connect();
    setInterval(function () { if (!socketAlive) { poll(); } }, 2000);
  });
})();
