"use strict";
// The documents view: pick a game, list its documents, upload (PDF, Markdown, text)
// and delete, and edit its glossary (one "Term: word, word" a line). Everything goes
// through the REST API with the pasted staff token.
(() => {
  const { $ } = window.admin;
  const say = (text) => { $("doc-status").textContent = text; };
  let games = [];  // what the select was filled with (id, name, status)

  async function api(path, options = {}) {
    const response = await fetch(path,
      { ...options, headers: { ...window.admin.headers(), ...options.headers } });
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

  const sayGlossary = (text) => { $("glossary-status").textContent = text; };
  const glossaryPath = (gameId) => "/admin/games/" + encodeURIComponent(gameId);

  // The glossary as the textarea shows it, and back; a line the page cannot read is
  // refused here with its number, before anything is sent.
  function glossaryText(glossary) {
    return Object.entries(glossary).map(([term, words]) => term + ": " + words.join(", "))
      .join("\n");
  }

  function parseGlossary(text) {
    const glossary = {};
    text.split("\n").forEach((line, i) => {
      if (!line.trim()) return;
      const colon = line.lastIndexOf(":");  // a term may hold one ("Solo Play: …")
      const term = colon > 0 ? line.slice(0, colon).trim() : "";
      const words = colon > 0 ? line.slice(colon + 1).split(",").map((w) => w.trim())
        .filter(Boolean) : [];
      if (!term || !words.length) {
        throw new Error("line " + (i + 1) + ': write "Term: word, word"');
      }
      if (Object.hasOwn(glossary, term)) {
        throw new Error("line " + (i + 1) + ": " + term + " is there twice");
      }
      glossary[term] = words;
    });
    return Object.keys(glossary).length ? glossary : null;
  }

  // The picked game's glossary into the box; its number of terms (null: no game, or
  // another game was picked meanwhile).
  async function loadGlossary() {
    const gameId = $("doc-game").value;
    $("glossary").value = "";
    if (!gameId) return null;
    const { glossary } = await api(glossaryPath(gameId) + "/glossary");
    if ($("doc-game").value !== gameId) return null;
    $("glossary").value = glossaryText(glossary);
    return Object.keys(glossary).length;
  }

  async function saveGlossary(event) {
    event.preventDefault();
    const gameId = $("doc-game").value;
    if (!gameId) return;
    try {
      const glossary = parseGlossary($("glossary").value);
      await api(glossaryPath(gameId), {
        method: "PATCH",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ details: { glossary } }),
      });
      await loadGlossary();  // shows what is stored now
      sayGlossary(glossary ? "Saved the glossary: " + Object.keys(glossary).length +
        " term(s)." : "Removed the glossary.");
    } catch (err) {
      sayGlossary("Not saved: " + err.message);
    }
  }

  async function pick() {
    sayGlossary("");
    await list();
    const terms = await loadGlossary();
    if (terms !== null) sayGlossary(terms ? terms + " term(s)." : "No glossary.");
  }

  async function show() {
    try {
      await loadGames();
      await pick();
    } catch (err) {
      say("Error " + err.message);
    }
  }

  $("doc-game").addEventListener("change", () => pick().catch(
    (err) => say("Error " + err.message)));
  $("doc-upload").addEventListener("submit", upload);
  $("glossary-form").addEventListener("submit", saveGlossary);
  window.admin.view("documents", { show });
})();
