"""The probes: what the figures alone cannot say (py-spy, GC pauses, tracemalloc).

Each runs a server of its own (or profiles a running one) under the 50-stream or
idle-connections load, and writes its evidence under ``--profile-dir``.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from profile_top import summarize
from scenarios import GAP_MS, LOAD_CORE, PY, SHORT_TOKENS, TOKENS, Bench

__all__ = ["gcprobe", "memprobe", "profile", "spanprobe", "spanprobe_burst"]


def memprobe(bench: Bench) -> dict[str, Any]:
    """The product under tracemalloc: which lines hold the memory of idle connections."""
    out = Path(bench.args.profile_dir) / "memprobe.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    count = min(bench.args.connections or 1000, 1000)  # tracemalloc is slow; 1000 tell
    probe = {"MEMPROBE_OUT": str(out), "MEMPROBE_CONNECTIONS": str(count)}
    server = bench.start_server("product", probe=probe)
    try:
        bench.warmup(server)
        time.sleep(1.0)
        os.kill(server["pid"], signal.SIGUSR1)
        time.sleep(2.0)
        result = bench.load(
            server,
            "memprobe",
            mode="idle",
            clients=count,
            tokens=20,
            connect_concurrency=50,
            turn_concurrency=25,
            memprobe_out=str(out),
        )
    finally:
        bench.procs.stop("product")
    print(f"  memory probe: {out}", file=sys.stderr)
    return {"path": str(out), "rss_per_conn_kb_traced": result["rss_per_conn_kb"]}


def spanprobe(bench: Bench) -> dict[str, Any]:
    """The product's turn spans at one stream: where the time to the first token goes."""
    return _spans(bench, "spans", clients=1, turns=30, tokens=20, gap_ms=GAP_MS, stagger=False)


def spanprobe_burst(bench: Bench) -> dict[str, Any]:
    """The product's turn spans under lockstep bursts of 4-token answers (issue 21)."""
    cfg = {"mode": "lockstep", "clients": bench.args.streams, "rounds": 10}
    return _spans(bench, "spans-burst", **cfg, tokens=SHORT_TOKENS, gap_ms=GAP_MS)


def _spans(bench: Bench, name: str, **load: Any) -> dict[str, Any]:
    out = Path(bench.args.profile_dir) / f"{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    server = bench.start_server("product", probe={"SPANS_OUT": str(out)})
    try:
        bench.warmup(server)
        os.kill(server["pid"], signal.SIGUSR1)  # forget the warm-up's spans
        time.sleep(0.5)
        result = bench.load(server, name, **load)
        _dump(server, out)
    finally:
        bench.procs.stop("product")
    text = out.read_text() if out.exists() else "(no spans written)"
    print(f"  span probe ({out}):\n{text}", file=sys.stderr)
    return {
        "path": str(out),
        "spans": text,
        "first_ms_p50": result.get("first_ms_p50"),
        "first_ms_p99": result.get("first_ms_p99"),
        "started_ms_p50": result.get("started_ms_p50"),
    }


def _dump(server: dict[str, Any], out: Path) -> None:
    """Have the probe server write what it gathered (SIGUSR2); wait for the file."""
    os.kill(server["pid"], signal.SIGUSR2)
    for _ in range(20):
        if out.exists():
            return
        time.sleep(0.5)


def gcprobe(bench: Bench) -> dict[str, Any]:
    """The product's garbage-collection pauses against the stalls its streams saw.

    Twice: as it is, and with ``gc.freeze()`` after the warm-up (what would change
    if the product froze its startup heap).
    """
    return {"plain": _gc_run(bench, freeze=False), "frozen": _gc_run(bench, freeze=True)}


def _gc_run(bench: Bench, *, freeze: bool) -> dict[str, Any]:
    out = Path(bench.args.profile_dir) / f"gc{'-frozen' if freeze else ''}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    probe = {"GC_LOG": str(out)} | ({"GC_FREEZE": "1"} if freeze else {})
    server = bench.start_server("product", probe=probe)
    runs = []
    try:
        bench.warmup(server)
        os.kill(server["pid"], signal.SIGUSR1)  # probe.py: gc.freeze() if GC_FREEZE
        time.sleep(1.0)  # the forced collection before the freeze is not counted
        mark = time.perf_counter()  # CLOCK_MONOTONIC, as in the server's log
        for clients in (bench.args.streams, 2 * bench.args.streams):
            runs.append(
                bench.load(
                    server,
                    f"gc{clients}",
                    clients=clients,
                    turns=3,
                    tokens=TOKENS,
                    gap_ms=GAP_MS,
                )
            )
        _dump(server, out)
    finally:
        bench.procs.stop("product")
    rows = []
    for line in out.read_text().splitlines() if out.exists() else []:
        t, gen, ms, _ = line.split()
        if float(t) >= mark:
            rows.append((float(t), int(gen[3:]), float(ms[:-2])))
    full = [ms for _, g, ms in rows if g == 2]
    report: dict[str, Any] = {
        "freeze": freeze,
        "gen2_count": len(full),
        "gen2_max_ms": max(full, default=0.0),
        "gen2_ms": sorted(full)[-5:],
        "runs": [],
    }
    for r in runs:
        start = r["go"]
        long = [(round(t - start, 3), g, ms) for t, g, ms in rows if ms >= 20]
        matched = sum(
            1 for s in r["stalls"] if any(abs(s[0] - t) < 0.3 and s[1] >= 50 for t, _, _ in long)
        )
        report["runs"].append(
            {
                "clients": r["clients"],
                "gap_ms_p99": r["gap_ms_p99"],
                "stalls": r["stalls"][:10],
                "stalls_at_a_gc_pause": matched,
            }
        )
    print(f"  gc probe (freeze={freeze}): {report}", file=sys.stderr)
    return report


def profile(
    bench: Bench, server: dict[str, Any], *, per_turn: bool = False, burst: str = ""
) -> None:
    """py-spy on a server under the 50-stream load (a run of its own).

    ``per_turn``: 8 clients asking back to back for 2-token answers (40 ms apart: a
    connection may send 20 frames a second) instead, so that nearly every sample is a
    turn's own work (before its first token and after its last), which the 50-stream
    profile drowns in per-token work.

    ``burst`` (``short`` or ``long``): issue 21's lockstep bursts instead, 50 clients
    asking at the same instant round after round, answers of 4 or 200 tokens.
    """

    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    seconds = bench.args.profile_seconds
    clients, tokens, gap_ms = (8, 2, 40.0) if per_turn else (bench.args.streams, TOKENS, GAP_MS)
    turns = math.ceil((seconds + 10) / (tokens * gap_ms / 1000)) + 1
    load: dict[str, Any] = {"clients": clients, "turns": turns, "tokens": tokens, "gap_ms": gap_ms}
    suffix = "-turn" if per_turn else ""
    if burst:
        tokens = SHORT_TOKENS if burst == "short" else TOKENS
        load = {"mode": "lockstep", "clients": bench.args.streams, "rounds": 1}
        load |= {"seconds": seconds + 5, "tokens": tokens, "gap_ms": GAP_MS}
        suffix = f"-burst-{burst}"
    out = Path(bench.args.profile_dir) / (server["target"] + suffix)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--pid", str(server["pid"]), "--duration", str(seconds), "--rate", "250"]
    common += ["--gil", "--full-filenames"]  # only what holds the GIL: the CPU work
    svg = bench.procs.start(
        "py-spy-svg", [spy, "record", "-o", str(out / "profile.svg"), *common], core=LOAD_CORE
    )
    time.sleep(0.5)
    raw = bench.procs.start(
        "py-spy-raw",
        [spy, "record", "--format", "raw", "-o", str(out / "profile.txt"), *common],
        core=LOAD_CORE,
    )
    done = bench.load(server, "profile", **load)
    print(f"  profile load: {done['turns']} turns, errors {done.get('errors')}", file=sys.stderr)
    for proc in (svg, raw):
        proc.wait(timeout=seconds + 60)
    dump = subprocess.run(
        [spy, "dump", "--pid", str(server["pid"])], capture_output=True, timeout=60, check=False
    )
    (out / "dump.txt").write_bytes(dump.stdout)
    top = summarize((out / "profile.txt").read_text(), 30)
    (out / "top.txt").write_text(top + "\n")
    print(f"  profile: {out}/ (profile.svg, profile.txt, dump.txt, top.txt)", file=sys.stderr)
