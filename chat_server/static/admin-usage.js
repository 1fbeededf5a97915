"use strict";
// The usage view: turns, tokens, cost, first-token time and refusals per UTC day, drawn
// with uPlot (vendor/uPlot.iife.min.js, served by the product), and a table by provider.
// Every figure comes from GET /admin/usage (group_by=day, and per provider).
(() => {
  const { $, status, headers } = window.admin;
  const DAY_MS = 86400 * 1000;
  const PROVIDER_COLORS = { openai: "#10a37f", anthropic: "#d9480f", gemini: "#1a73e8", local: "#7e57c2" };
  const SPARE_COLORS = ["#c2185b", "#00838f", "#6d4c41", "#558b2f"];
  const charts = {};
  let loads = 0;  // a load that finishes after a newer one started is dropped

  function colorOf(provider, index) {
    return PROVIDER_COLORS[provider] || SPARE_COLORS[index % SPARE_COLORS.length];
  }

  function period(days) {
    const now = new Date();
    const end = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() + 1);
    return { from: new Date(end - days * DAY_MS), to: new Date(end), days };
  }

  async function usage(params, accept) {
    const query = new URLSearchParams(params).toString();
    const h = headers();
    if (accept) h.Accept = accept;
    const response = await fetch("/admin/usage?" + query, { headers: h });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(response.status + " " + (body.detail || response.statusText));
    }
    return accept ? response.text() : (await response.json()).rows;
  }

  // One value per day of the period (x in seconds, as uPlot wants), from day rows.
  function perDay(p, rows, field, missing) {
    const byDay = new Map(rows.map((r) => [r.key, r]));
    const xs = [], ys = [];
    for (let t = p.from.getTime(); t < p.to.getTime(); t += DAY_MS) {
      const key = new Date(t).toISOString().slice(0, 10);
      const row = byDay.get(key);
      xs.push(t / 1000);
      ys.push(row && row[field] !== null && row[field] !== undefined ? row[field] : missing);
    }
    return { xs, ys };
  }

  function draw(name, title, series, data, axes) {
    if (charts[name]) charts[name].destroy();
    const holder = $("usage-" + name);
    holder.replaceChildren();
    const opts = {
      title,
      width: Math.max(320, holder.clientWidth || 560),
      height: 240,
      series: [{}, ...series],
      axes: [{}, ...axes],
      // Half a day of room on each side, so the first and last days' bars show whole.
      scales: { x: { time: true, range: (u, min, max) => [min - 43200, max + 43200] } },
      cursor: { drag: { x: false, y: false } },
    };
    charts[name] = new uPlot(opts, data, holder);
  }

  const bars = () => uPlot.paths.bars({ size: [0.6, 40] });
  const line = (label, stroke, extra) => Object.assign(
    { label, stroke, width: 2, points: { show: true, size: 6, fill: stroke } }, extra || {});
  const axis = (label, scale, side) => ({ label, scale, side, grid: { show: side !== 1 } });

  function table(rows) {
    const fields = ["key", "turns", "input_tokens", "output_tokens", "cost_usd", "errors",
      "cancelled", "denied", "first_token_ms_p50", "first_token_ms_p95"];
    const body = rows.map((r) => {
      const tr = document.createElement("tr");
      for (const f of fields) {
        const td = document.createElement("td");
        const v = r[f];
        td.textContent = v === null ? "—" : f === "cost_usd" ? "$" + v.toFixed(4) :
          f.startsWith("first_token") ? Math.round(v) + " ms" : String(v);
        tr.appendChild(td);
      }
      return tr;
    });
    $("usage-providers").replaceChildren(...body);
  }

  async function show() {
    const mine = ++loads;
    const p = period(Number($("usage-days").value) || 14);
    const range = { from: p.from.toISOString(), to: p.to.toISOString() };
    let days, providers, perProvider;
    try {
      [days, providers] = await Promise.all([
        usage({ ...range, group_by: "day" }),
        usage({ ...range, group_by: "provider" }),
      ]);
      perProvider = await Promise.all(
        providers.map((r) => usage({ ...range, group_by: "day", provider: r.key })));
    } catch (err) {
      if (mine === loads) status("Usage: " + err.message);
      return;
    }
    if (mine !== loads) return;
    table(providers);
    const x = perDay(p, days, "turns", 0).xs;

    draw("volume", "Turns and tokens per day", [
      { label: "turns", stroke: "#1565c0", fill: "#1565c0", scale: "turns", paths: bars() },
      line("input tokens", "#ef6c00", { scale: "tokens" }),
      line("output tokens", "#2e7d32", { scale: "tokens" }),
    ], [x, perDay(p, days, "turns", 0).ys, perDay(p, days, "input_tokens", 0).ys,
      perDay(p, days, "output_tokens", 0).ys],
    [axis("turns", "turns", 3), axis("tokens", "tokens", 1)]);

    draw("cost", "Cost per day by provider (USD)",
      providers.map((r, i) => line(r.key, colorOf(r.key, i), { scale: "usd",
        value: (u, v) => v === null ? "—" : "$" + v.toFixed(4) })),
      [x, ...perProvider.map((rows) => perDay(p, rows, "cost_usd", null).ys)],
      [axis("USD", "usd", 3)]);

    const latency = [], latencyData = [x];
    providers.forEach((r, i) => {
      latency.push(line(r.key + " p50", colorOf(r.key, i), { scale: "ms" }));
      latency.push(line(r.key + " p95", colorOf(r.key, i), { scale: "ms", dash: [6, 4] }));
      latencyData.push(perDay(p, perProvider[i], "first_token_ms_p50", null).ys);
      latencyData.push(perDay(p, perProvider[i], "first_token_ms_p95", null).ys);
    });
    draw("latency", "First token p50 / p95 by provider (ms)", latency, latencyData,
      [axis("ms", "ms", 3)]);

    draw("refusals", "Refused, cancelled and failed turns per day", [
      { label: "denied", stroke: "#b71c1c", fill: "#b71c1c", scale: "n", paths: bars() },
      line("cancelled", "#f9a825", { scale: "n" }),
      line("errors", "#455a64", { scale: "n" }),
    ], [x, perDay(p, days, "denied", 0).ys, perDay(p, days, "cancelled", 0).ys,
      perDay(p, days, "errors", 0).ys],
    [axis("turns", "n", 3)]);

    $("usage-section").dataset.loaded = String(mine);
    status("Usage of the last " + p.days + " days (UTC), " + days.length + " day(s) with data.");
  }

  async function downloadCsv() {
    const p = period(Number($("usage-days").value) || 14);
    try {
      const text = await usage({ from: p.from.toISOString(), to: p.to.toISOString(),
        group_by: $("usage-group").value }, "text/csv");
      const link = document.createElement("a");
      link.href = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
      link.download = "usage-" + $("usage-group").value + ".csv";
      link.click();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    } catch (err) {
      status("Usage CSV: " + err.message);
    }
  }

  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => {
      for (const [name, chart] of Object.entries(charts)) {
        const holder = $("usage-" + name);
        if (holder.clientWidth) chart.setSize({ width: holder.clientWidth, height: 240 });
      }
    }, 150);
  });
  $("usage-days").addEventListener("change", () => show());
  $("usage-csv").addEventListener("click", () => downloadCsv());
  window.admin.view("usage", { show });
})();
