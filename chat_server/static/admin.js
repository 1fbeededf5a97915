"use strict";
let token = sessionStorage.getItem("chat-admin-token") || "";
let feed = null;        // the AbortController of the one running event feed
let requested = 0;      // listings asked for, and the newest one shown: an answer that
let shown = 0;          // arrives after a newer one is dropped, so a killed row stays gone
let streaming = false;  // some session is streaming: re-list every second (token counts)
let listedAt = 0;       // when the last listing was asked for (idle: re-list every 5 s)
let polling = false;    // a timer re-listing is in flight: the next tick skips
const $ = (id) => document.getElementById(id);
const status = (text) => { $("status").textContent = text; };

function headers() { return { "Authorization": "Bearer " + token }; }

// What the other views' scripts share: the pasted token, the status line, and
// switching between the views named in <nav id="views"> (by the URL's #hash).
const views = {};
window.admin = {
  $, status, headers,
  get token() { return token; },
  /** Register a view: show() runs when its tab opens (and the token is set). */
  view(name, handlers) { views[name] = handlers; if (currentView() === name) openView(name); },
  /** Open the watch view on one session (the "Watch" button of a row). */
  watch(sessionId) {
    sessionStorage.setItem("chat-admin-watch", sessionId);
    if (location.hash === "#watch") openView("watch"); else location.hash = "watch";
  },
  kill: (sessionId) => kill(sessionId),
};

function currentView() {
  const name = location.hash.slice(1);
  return document.querySelector('section[data-view="' + CSS.escape(name) + '"]') ? name : "sessions";
}

function openView(name) {
  for (const section of document.querySelectorAll("section[data-view]")) {
    section.hidden = section.dataset.view !== name;
  }
  for (const link of document.querySelectorAll("#views a")) {
    if (link.dataset.view === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (token && views[name] && views[name].show) views[name].show();
}

window.addEventListener("hashchange", () => openView(currentView()));

async function refresh() {
  const mine = ++requested;
  listedAt = Date.now();
  let response, body;
  try {
    response = await fetch("/admin/sessions?limit=100", { headers: headers() });
    body = await response.json().catch(() => ({}));
  } catch (err) {
    if (mine > shown) status("Server unreachable: " + err.message);
    return false;
  }
  if (mine < shown) return response.ok;
  shown = mine;
  if (!response.ok) {
    status("Error " + response.status + ": " + (body.detail || response.statusText));
    streaming = false;
    return false;
  }
  const { sessions } = body;
  streaming = sessions.some((s) => s.streaming);
  const rows = sessions.map((s) => {
    const tr = document.createElement("tr");
    tr.dataset.session = s.id;
    const cells = [s.id, s.user_id, s.game_name || s.game_id, s.instance, s.provider,
      String(s.turns), s.streaming ? "streaming (" + s.tokens + " tokens)" : "idle",
      new Date(s.last_activity_at).toLocaleTimeString(), String(s.connections ?? 1)];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (i < 4 && i !== 2) td.className = "mono";
      if (i === 6 && s.streaming) td.className = "streaming";
      tr.appendChild(td);
    });
    const td = document.createElement("td");
    const watch = document.createElement("button");
    watch.className = "watch";
    watch.textContent = "Watch";
    watch.addEventListener("click", () => window.admin.watch(s.id));
    td.appendChild(watch);
    const button = document.createElement("button");
    button.className = "kill";
    button.textContent = "Kill";
    button.addEventListener("click", () => kill(s.id));
    td.appendChild(button);
    tr.appendChild(td);
    return tr;
  });
  $("sessions").replaceChildren(...rows);
  status("Connected: " + sessions.length + " live session(s).");
  return true;
}

async function kill(sessionId) {
  const reason = "ended from the admin page";
  const response = await fetch("/admin/sessions/" + encodeURIComponent(sessionId) +
    "?reason=" + encodeURIComponent(reason), { method: "DELETE", headers: headers() });
  if (!response.ok && response.status !== 404) {
    status("Kill failed: " + response.status);
  }
  await refresh();
}

function logEvent(kind, data) {
  const line = document.createElement("div");
  line.textContent = new Date().toLocaleTimeString() + " " + kind + " " +
    (data.session_id || "") + (data.finish_reason ? " " + data.finish_reason : "");
  $("log").prepend(line);
}

/**
 * Follow a Server-Sent Events URL until `signal` aborts: reconnects after a second,
 * resuming with Last-Event-ID; `onOpen()` on each connect, `onEvent(kind, data)` per
 * event (awaited, in order), `onError(status)` on a refused answer (then it stops).
 */
async function stream(url, { signal, onOpen, onEvent, onError }) {
  let lastId = null;
  while (!signal.aborted) {
    let reader = null;
    try {
      const h = headers();
      if (lastId) h["Last-Event-ID"] = lastId;
      const response = await fetch(url, { headers: h, signal });
      if (!response.ok) { onError(response.status); return; }
      if (onOpen) onOpen();
      reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let id = null, kind = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("id: ")) id = line.slice(4);
            else if (line.startsWith("event: ")) kind = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (id) lastId = id;
          if (data && !signal.aborted) await onEvent(kind, JSON.parse(data));
        }
      }
    } catch (err) {
      if (signal.aborted) return;
    }
    if (reader) reader.cancel().catch(() => {});
    await new Promise((r) => setTimeout(r, 1000));
  }
}
window.admin.stream = stream;

async function follow() {
  // Each feed has its own signal: a newer feed (the form sent again) ends this one.
  if (feed) feed.abort();
  feed = new AbortController();
  await stream("/admin/sessions/events", {
    signal: feed.signal,
    onError: (code) => status("Event feed error " + code),
    onEvent: async (kind, data) => { logEvent(kind, data); await refresh(); },
  });
}

$("auth").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (feed) feed.abort();  // the old token's feed ends whether or not the new one works
  token = $("token").value.trim();
  sessionStorage.setItem("chat-admin-token", token);
  if (await refresh()) { follow(); openView(currentView()); }
});

setInterval(async () => {
  if (!token || polling || (!streaming && Date.now() - listedAt < 5000)) return;
  polling = true;
  try { await refresh(); } finally { polling = false; }
}, 1000);
openView(currentView());
if (token) { $("token").value = token; refresh().then((ok) => { if (ok) follow(); }); }
