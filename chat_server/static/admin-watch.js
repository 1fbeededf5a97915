"use strict";
// The "watch" view: one live session as its user sees it, from any instance. It reads
// GET /admin/sessions/{id} (game by name, user, provider, model, the latest messages)
// and follows GET /admin/sessions/{id}/stream (SSE, resumed with Last-Event-ID).
(() => {
  const { $ } = window.admin;
  let stream = null;   // the AbortController of the running stream
  let watching = null; // the session id shown

  function say(text) { $("watch-status").textContent = text; }

  async function describe(id) {
    const response = await fetch("/admin/sessions/" + encodeURIComponent(id),
      { headers: window.admin.headers() });
    if (!response.ok) { say("Error " + response.status + " for session " + id); return false; }
    const { session, messages } = await response.json();
    if (watching !== id) return false;
    $("watch-session").textContent = session.id;
    $("watch-user").textContent = session.user_id;
    $("watch-game").textContent = session.game_name || session.game_id;
    $("watch-provider").textContent = session.provider;
    $("watch-model").textContent = session.model;
    const question = [...messages].reverse().find((m) => m.role === "user");
    const answer = [...messages].reverse().find((m) => m.role === "assistant");
    $("watch-question").textContent = question ? question.content : "";
    $("watch-answer").textContent = answer ? answer.content : "";
    $("watch-state").textContent = answer ? "(" + answer.status + ")" : "";
    return true;
  }

  function onEvent(kind, data) {
    if (kind === "turn.started") {
      $("watch-answer").textContent = "";
      $("watch-state").textContent = "(streaming)";
      describe(watching).then(() => { $("watch-state").textContent = "(streaming)"; });
    } else if (kind === "turn.delta") {
      $("watch-answer").textContent += data.text;
      $("watch-state").textContent = "(streaming)";
    } else if (kind === "turn.completed") {
      $("watch-state").textContent = "(" + data.finish_reason + ")";
    }
  }

  function follow(id, signal) {
    return window.admin.stream("/admin/sessions/" + encodeURIComponent(id) + "/stream", {
      signal,
      onOpen: () => say("Watching session " + id + "."),
      onError: (code) => say("Watch error " + code),
      onEvent,
    });
  }

  async function show() {
    const id = sessionStorage.getItem("chat-admin-watch");
    if (!id) { say("Pick a session to watch in Live sessions."); return; }
    if (id === watching && stream) return;
    if (stream) stream.abort();
    watching = id;
    stream = new AbortController();
    $("watch-kill").disabled = false;
    if (await describe(id)) follow(id, stream.signal);
  }

  window.addEventListener("hashchange", () => {
    if (location.hash !== "#watch" && stream) { stream.abort(); stream = null; }
  });
  $("watch-kill").addEventListener("click", () => {
    if (watching) window.admin.kill(watching).then(() => say("Ended session " + watching + "."));
  });
  window.admin.view("watch", { show });
})();
