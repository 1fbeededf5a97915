"use strict";
// The documents view: pick a game, list its documents, upload (PDF, Markdown, text)
// and delete. Everything goes through the REST API with the pasted staff token.
(() => {
  const { $ } = window.admin;
  const say = (text) => { $("doc-status").textContent = text; };
  let games = [];  // what the select was filled with (id, name, status)

  async function api(path, options = {}) {
    const response = await fetch(path, { ...options, headers: window.admin.headers() });
    const body = response.status === 204 ? {} : await response.json().catch(() => ({}));
    if (!response.ok) {
      const code = body.error_code ? " " + body.error_code : "";
      throw new Error(response.status + code + ": " + (body.detail || response.statusText));
    }
    return body;
  }

  async function loadGames() {
    const found = [];
    let cursor = null;
    do {  // every game, hidden and beta included (staff see them all)
      const query = "/games?limit=100" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
      const page = await api(query);
      found.push(...page.games);
      cursor = page.next_cursor;
    } while (cursor);
    games = found;
    const select = $("doc-game");
    const chosen = select.value;
    select.replaceChildren(...games.map((g) => {
      const option = document.createElement("option");
      option.value = g.id;
      option.textContent = g.name + (g.status === "active" ? "" : " (" + g.status + ")");
      return option;
    }));
    if (games.some((g) => g.id === chosen)) select.value = chosen;
  }

  async function list() {
    const gameId = $("doc-game").value;
    if (!gameId) { $("documents").replaceChildren(); return; }
    const { documents } = await api("/admin/games/" + encodeURIComponent(gameId) + "/documents");
    $("documents").replaceChildren(...documents.map((d) => {
      const tr = document.createElement("tr");
      tr.dataset.document = d.id;
      const cells = [d.title, d.kind, d.language, d.media_type || d.format,
        d.pages === null ? "" : String(d.pages), String(d.passages), String(d.bytes),
        new Date(d.updated_at || d.created_at).toLocaleString()];
      for (const text of cells) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      const td = document.createElement("td");
      const button = document.createElement("button");
      button.className = "kill delete";
      button.textContent = "Delete";
      button.addEventListener("click", () => remove(gameId, d));
      td.appendChild(button);
      tr.appendChild(td);
      return tr;
    }));
    say(documents.length + " document(s) for this game.");
  }

  async function remove(gameId, doc) {
    try {
      await api("/admin/games/" + encodeURIComponent(gameId) + "/documents/" +
        encodeURIComponent(doc.id), { method: "DELETE" });
      await list();
      say("Deleted " + doc.title + ".");
    } catch (err) {
      say("Delete failed: " + err.message);
    }
  }

  async function upload(event) {
    event.preventDefault();
    const file = $("doc-file").files[0];
    const gameId = $("doc-game").value;
    if (!file || !gameId) return;
    const form = new FormData();
    form.append("file", file, file.name);
    if ($("doc-title").value.trim()) form.append("title", $("doc-title").value.trim());
    form.append("kind", $("doc-kind").value);
    form.append("language", $("doc-language").value.trim());
    say("Uploading " + file.name + "…");
    try {
      const doc = await api("/admin/games/" + encodeURIComponent(gameId) + "/documents",
        { method: "POST", body: form });
      $("doc-upload").reset();
      await list();
      say("Uploaded " + doc.title + ": " + doc.passages + " passage(s)" +
        (doc.pages ? " from " + doc.pages + " page(s)" : "") + ".");
    } catch (err) {
      say("Upload failed: " + err.message);
    }
  }

  async function show() {
    try {
      await loadGames();
      await list();
    } catch (err) {
      say("Error " + err.message);
    }
  }

  $("doc-game").addEventListener("change", () => list().catch(
    (err) => say("Error " + err.message)));
  $("doc-upload").addEventListener("submit", upload);
  window.admin.view("documents", { show });
})();
