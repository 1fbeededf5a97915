"""The bench's one table, and each target of issue 7 with its measured figure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

TARGETS = ("product", "sdk", "httpx", "litellm")
TITLES = {
    "product": "product",
    "sdk": "SDK relay",
    "httpx": "httpx relay",
    "litellm": "LiteLLM (httpx relay + proxy)",
}
SHORT_TOKENS = 4  # scenarios.SHORT_TOKENS (this module imports nothing of the bench)
# Issue 7's own measurements (not re-measured here): LiteLLM's CPU per 1,000 tokens
# against the raw-httpx relay's on the same machine, to express "<= 0.15x LiteLLM".
LITELLM_OVER_FLOOR = 0.69 / 0.11

Getter = Callable[[dict[str, Any]], float | None]


def _get(scenario: str, key: str) -> Getter:
    def get(result: dict[str, Any]) -> float | None:
        value = (result.get(scenario) or {}).get(key)
        return None if value is None else float(value)

    return get


def _streams(result: dict[str, Any]) -> float | None:
    ramp = result.get("ramp")
    return None if not ramp else float(ramp["sustained"])


def _cpu_bound(result: dict[str, Any]) -> float | None:
    fifty = result.get("fifty") or {}
    busy, clients = fifty.get("server_busy"), fifty.get("clients")
    return clients / busy if busy and clients else None


ROWS: list[tuple[str, Getter, str]] = [
    ("1 stream: delivered tokens/s", _get("one", "tokens_per_s"), "{:.1f}"),
    ("1 stream: first token p50, ms", _get("one", "first_ms_p50"), "{:.2f}"),
    ("1 stream: first token p99, ms", _get("one", "first_ms_p99"), "{:.2f}"),
    ("1 stream: message to turn.started p50, ms", _get("one", "started_ms_p50"), "{:.2f}"),
    ("1 stream: inter-token gap p99, ms", _get("one", "gap_ms_p99"), "{:.1f}"),
    ("1 stream: server CPU-s per 1k tokens", _get("one", "server_cpu_per_1k"), "{:.3f}"),
    ("50 streams: delivered tokens/s", _get("fifty", "tokens_per_s"), "{:.0f}"),
    ("50 streams: first token p50, ms", _get("fifty", "first_ms_p50"), "{:.2f}"),
    ("50 streams: first token p99, ms", _get("fifty", "first_ms_p99"), "{:.2f}"),
    ("50 streams: inter-token gap p99, ms", _get("fifty", "gap_ms_p99"), "{:.1f}"),
    ("50 streams: server CPU-s per 1k tokens", _get("fifty", "server_cpu_per_1k"), "{:.3f}"),
    ("50 streams: server core busy", _get("fifty", "server_busy"), "{:.0%}"),
    ("burst 50 x 200 tok: first token p50, ms", _get("burst", "first_ms_p50"), "{:.1f}"),
    ("burst 50 x 200 tok: first token p99, ms", _get("burst", "first_ms_p99"), "{:.1f}"),
    ("burst 50 x 200 tok: message to turn.started p50", _get("burst", "started_ms_p50"), "{:.1f}"),
    ("burst 50 x 4 tok: first token p50, ms", _get("burst_short", "first_ms_p50"), "{:.1f}"),
    ("burst 50 x 4 tok: first token p99, ms", _get("burst_short", "first_ms_p99"), "{:.1f}"),
    (
        "burst 50 x 4 tok: server CPU per turn, ms",
        _get("burst_short", "server_cpu_ms_per_turn"),
        "{:.2f}",
    ),
    ("burst 50 x 4 tok: turns/s", _get("burst_short", "turns_per_s"), "{:.0f}"),
    ("burst 50 x 4 tok: server core busy", _get("burst_short", "server_busy"), "{:.0%}"),
    ("streams/core kept up, gap p99 <= 50 ms (ramp)", _streams, "{:.0f}"),
    ("streams/core, CPU-bound estimate", _cpu_bound, "{:.0f}"),
    ("RSS per idle connection after a turn, KB", _get("idle", "rss_per_conn_kb"), "{:.1f}"),
    ("server CPU per turn besides its tokens, ms", _get("accounting", "cpu_ms_per_turn"), "{:.2f}"),
    (
        "server CPU per token, ms (5 streams, 2 ms gap)",
        _get("accounting", "cpu_ms_per_token"),
        "{:.3f}",
    ),
]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per figure; a column per system; product / each reference."""
    present = [t for t in TARGETS if t in results]
    head = ["figure", *(TITLES[t] for t in present)]
    refs = [t for t in ("sdk", "httpx", "litellm") if t in present and "product" in present]
    head += [f"product / {TITLES[r]}" for r in refs]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for label, get, spec in ROWS:
        values = {t: get(results[t]) for t in present}
        if all(v is None for v in values.values()):
            continue
        cells = [label, *(_fmt(values[t], spec) for t in present)]
        cells += [_ratio(values["product"], values[r]) for r in refs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ramp_lines(results: dict[str, dict[str, Any]]) -> str:
    out = []
    for target in TARGETS:
        ramp = (results.get(target) or {}).get("ramp")
        if not ramp:
            continue
        steps = ", ".join(
            f"{s['clients']}: p99 {_fmt(s.get('gap_ms_p99'), '{:.0f}')} ms"
            f" {s['tokens_per_s'] / (s['clients'] * 50):.0%} delivered"
            f" busy {_fmt(s.get('server_busy'), '{:.0%}')}" + ("" if s["passed"] else " FAIL")
            for s in ramp["steps"]
        )
        out.append(f"- {TITLES[target]}: {steps}")
    return "\n".join(out)


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "NOT met")


def targets(results: dict[str, dict[str, Any]], idle_clients: int) -> str:
    """Each target of issue 7, as measured in this run."""
    p, f = results.get("product"), results.get("httpx")
    if not p or not f:
        return "(targets need both the product and the httpx relay)"
    lines = []
    cpu_p, cpu_f = _get("fifty", "server_cpu_per_1k")(p), _get("fifty", "server_cpu_per_1k")(f)
    if cpu_p is not None and cpu_f:
        r = cpu_p / cpu_f
        lines.append(
            f"- CPU per token, 50 x 50 tok/s: {cpu_p:.3f} vs floor {cpu_f:.3f} CPU-s/1k = "
            f"{r:.2f}x (target <= 1.0): {_verdict(r <= 1.0)}; vs LiteLLM (by the issue's "
            f"LiteLLM/floor ratio {LITELLM_OVER_FLOOR:.1f}) ~{r / LITELLM_OVER_FLOOR:.2f}x "
            f"(target <= 0.15): {_verdict(r / LITELLM_OVER_FLOOR <= 0.15)}"
        )
    sp, sf = _streams(p), _streams(f)
    if sp is not None and sf is not None:
        lines.append(
            f"- Streams per core before gap p99 > 50 ms: {sp:.0f} vs floor {sf:.0f} "
            f"(target >= floor): {_verdict(sp >= sf)}"
        )
    for scen, key, limit, label in (
        ("one", "first_ms_p50", 2.0, "1 stream p50"),
        ("one", "first_ms_p99", 5.0, "1 stream p99"),
        ("fifty", "first_ms_p99", 10.0, "50 streams p99"),
    ):
        a, b = _get(scen, key)(p), _get(scen, key)(f)
        if a is not None and b is not None:
            lines.append(
                f"- Added first-token latency, {label}: {a:.2f} - {b:.2f} = {a - b:+.2f} ms "
                f"(target <= {limit:g} ms): {_verdict(a - b <= limit)}"
            )
    mp, mf = _get("idle", "rss_per_conn_kb")(p), _get("idle", "rss_per_conn_kb")(f)
    if mp is not None and mf:
        lines.append(
            f"- Memory per idle connection after a turn at {idle_clients} connections: "
            f"{mp:.1f} KB vs floor relay {mf:.1f} KB = {mp / mf:.2f}x (target <= 0.7 at "
            f"5,000): {_verdict(mp / mf <= 0.7)}"
        )
    scaling = p.get("scaling")
    if scaling and scaling.get("estimate") is not None:
        alone, a, b = (scaling[k]["server_cpu_per_1k"] for k in ("alone", "a", "b"))
        paired = scaling.get("estimate_paired")
        met = {e >= 1.8 for e in (scaling["estimate"], paired) if e is not None}
        verdict = _verdict(met.pop()) if len(met) == 1 else "not settled (the two disagree)"
        lines.append(
            f"- Two instances on two cores >= 1.8x one: estimated {scaling['estimate']:.2f}x "
            f"(medians), {_fmt(paired, '{:.2f}')}x (paired runs) "
            f"from CPU per token at {scaling['streams']} streams each ({alone:.3f} CPU-s/1k "
            f"alone; {a:.3f} and {b:.3f} with both serving; {scaling['tokens_per_s_alone']:.0f}"
            f" -> {scaling['tokens_per_s_together']:.0f} tok/s delivered): {verdict} "
            "(estimated: saturating two instances needs a third core for the load)"
        )
    else:
        lines.append("- Two instances on two cores >= 1.8x one: not measured (--scaling)")
    fan = p.get("fanout")
    if fan and fan.get("ratio") is not None:
        key = "server_cpu_per_1k_delivered"
        lines.append(
            f"- A second follower on another instance <= 1.3x CPU per delivered token: "
            f"{fan['ratio']:.2f}x (medians), {_fmt(fan.get('ratio_paired'), '{:.2f}')}x "
            f"(paired runs) at {fan['streams']} streams ({fan['alone'][key]:.3f} CPU-s per 1k "
            f"delivered alone, {fan['followed'][key]:.3f} followed; both instances' CPU): "
            f"{_verdict(fan['ratio'] <= 1.3)}"
        )
    acc = p.get("accounting")
    if acc and "evalsha_per_turn" in acc:
        flat = acc["rows_per_turn_at_200"] <= acc["rows_per_turn_at_20"] + 0.5
        lines.append(
            f"- Flag and quota check: {acc['evalsha_per_turn']:.2f} EVALSHA per turn (the "
            f"flag is decided in process): {_verdict(acc['evalsha_per_turn'] <= 1.05)}; all "
            f"Redis commands per extra turn {acc['redis_per_turn']:.2f} "
            f"{acc['redis_per_turn_by_command']}"
        )
        lines.append(
            f"- No database write per token: rows written per turn at "
            f"{acc['tokens_long']} tokens {acc['rows_per_turn_at_200']:.2f} vs at "
            f"{acc['tokens_short']} tokens {acc['rows_per_turn_at_20']:.2f}: {_verdict(flat)}; "
            f"per extra turn: {acc['xact_per_turn']:.1f} transactions, "
            f"{acc['rows_per_turn']:.1f} rows, server CPU {acc['cpu_ms_per_turn']:.1f} ms per turn "
            f"besides its tokens ({acc['cpu_ms_per_token']:.3f} ms per token)"
        )
    return "\n".join(lines)


def _own_ms(result: dict[str, Any]) -> float | None:
    """A short turn's CPU less its tokens (at the 50-stream scenario's CPU per token)."""
    per_turn = _get("burst_short", "server_cpu_ms_per_turn")(result)
    per_token = _get("fifty", "server_cpu_per_1k")(result)  # CPU-s per 1k = ms per token
    if per_turn is None or per_token is None:
        return None
    return per_turn - SHORT_TOKENS * per_token


def burst_targets(results: dict[str, dict[str, Any]]) -> str:
    """Issue 21's targets 1 and 2, against the httpx relay measured in the same run."""
    p, f = results.get("product"), results.get("httpx")
    if not p or not f:
        return "(targets need both the product and the httpx relay)"
    lines = []
    for key, limit, label in (("first_ms_p50", 5.0, "p50"), ("first_ms_p99", 25.0, "p99")):
        a, b = _get("burst", key)(p), _get("burst", key)(f)
        if a is not None and b is not None:
            lines.append(
                f"- Lockstep bursts (50 x 200 tokens), first token {label}: {a:.1f} - {b:.1f} = "
                f"{a - b:+.1f} ms (target <= +{limit:g} ms): {_verdict(a - b <= limit)}"
            )
    a = _get("burst_short", "server_cpu_ms_per_turn")(p)
    b = _get("burst_short", "server_cpu_ms_per_turn")(f)
    if a is not None and b:
        lines.append(
            f"- A turn's CPU, 4-token answers asked in lockstep: {a:.2f} vs {b:.2f} ms = "
            f"{a / b:.2f}x (target <= 1.3x): {_verdict(a / b <= 1.3)}"
        )
        own_p, own_f = _own_ms(p), _own_ms(f)
        if own_p is not None and own_f:
            lines.append(
                f"  a turn's own CPU (less {SHORT_TOKENS} tokens at the 50-stream CPU per "
                f"token): {own_p:.2f} vs {own_f:.2f} ms = {own_p / own_f:.2f}x"
            )
    for ref in ("sdk", "litellm"):
        r = results.get(ref)
        c = _get("burst_short", "server_cpu_ms_per_turn")(r) if r else None
        if a is not None and c:
            lines.append(
                f"- The same against the {TITLES[ref]}: {a:.2f} vs {c:.2f} ms = {a / c:.2f}x"
            )
    for scen in ("burst", "burst_short"):
        busy = [
            f"{TITLES[t]} {r[scen]['others_busy']:.0%}"
            for t, r in results.items()
            if t in TITLES and r.get(scen)
        ]
        if busy:
            lines.append(f"- others' CPU on the bench cores during {scen}: {', '.join(busy)}")
    return "\n".join(lines) or "(no burst scenario run)"
