"""The product under instruments the profiler cannot give: tracemalloc, GC pauses.

Runs the product exactly as ``chat-server serve`` configures it (``uvicorn_config``
and ``ChatServer`` from ``chat_server.serving``, on uvloop), plus:

- ``MEMPROBE_OUT=path``: tracemalloc on. ``SIGUSR1`` takes the baseline snapshot;
  ``SIGUSR2`` compares a new snapshot with it and writes the allocations that grew,
  per connection (``MEMPROBE_CONNECTIONS``), by file and by line. Allocation tracing
  makes the server slow; its figures are for this question only.
- ``GC_LOG=path``: every garbage collection's generation, duration and collected
  count, one line each (``time.perf_counter`` seconds), written at exit and on
  ``SIGUSR2``. With ``GC_FREEZE=1``, ``SIGUSR1`` also runs ``gc.collect()`` and
  ``gc.freeze()``: what the product would gain by freezing its heap after startup.

- ``SPANS_OUT=path``: the OpenTelemetry SDK on, every span of every turn kept in
  memory; ``SIGUSR1`` forgets those so far, ``SIGUSR2`` writes, per span name, the
  median and p90 of its start and end (ms from the start of its turn's span).

``run.py --memprobe``, ``--gcprobe`` and ``--spanprobe`` use it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import time
import tracemalloc
from pathlib import Path


def _diff(base: tracemalloc.Snapshot, out: Path, connections: int) -> None:
    now = tracemalloc.take_snapshot()
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    now, base = now.filter_traces(filters), base.filter_traces(filters)
    lines = [f"tracemalloc growth over the baseline, per connection ({connections} connections)"]
    for key in ("filename", "lineno"):
        stats = now.compare_to(base, key)
        total = sum(s.size_diff for s in stats)
        lines.append(f"\nby {key}: total {total / 1024 / max(1, connections):.1f} KB/conn")
        for stat in stats[:30]:
            frame = stat.traceback[0]
            where = frame.filename.split("site-packages/")[-1].split("/work/main/")[-1]
            if key == "lineno":
                where = f"{where}:{frame.lineno}"
            lines.append(
                f"  {stat.size_diff / 1024 / max(1, connections):7.2f} KB/conn "
                f"{stat.count_diff / max(1, connections):6.1f} blocks/conn  {where}"
            )
    out.write_text("\n".join(lines) + "\n")


class SpanLog:
    """Keeps every ended span; writes where in its turn each kind of span falls."""

    def __init__(self) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        trace.set_tracer_provider(provider)

    def clear(self) -> None:
        self.exporter.clear()

    def write(self, path: Path) -> None:
        spans = self.exporter.get_finished_spans()
        turns = {s.context.span_id: s for s in spans if s.name == "chat.turn"}
        rows: dict[str, list[tuple[float, float]]] = {}
        for s in spans:
            turn = turns.get(s.context.span_id) or turns.get(s.parent.span_id if s.parent else 0)
            if turn is None or s.start_time is None or s.end_time is None:
                continue
            t0 = turn.start_time or 0
            rows.setdefault(s.name, []).append(((s.start_time - t0) / 1e6, (s.end_time - t0) / 1e6))
            for e in s.events:
                at = (e.timestamp - t0) / 1e6
                rows.setdefault(e.name, []).append((at, at))

        def q(xs: list[float], p: float) -> float:
            xs = sorted(xs)
            return xs[min(len(xs) - 1, int(p * len(xs)))]

        lines = [f"{len(turns)} turns; ms from the start of the turn's span (p50 / p90)"]
        for name, se in sorted(rows.items(), key=lambda kv: q([a for a, _ in kv[1]], 0.5)):
            starts, ends = [a for a, _ in se], [b for _, b in se]
            durs = [b - a for a, b in se]
            lines.append(
                f"  {name:24} n={len(se):4} start {q(starts, 0.5):7.2f} / {q(starts, 0.9):7.2f}"
                f"  end {q(ends, 0.5):8.2f} / {q(ends, 0.9):8.2f}"
                f"  took {q(durs, 0.5):8.2f} / {q(durs, 0.9):8.2f}"
            )
        path.write_text("\n".join(lines) + "\n")


class GcLog:
    """Times every collection through ``gc.callbacks``."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, int, float, int]] = []
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._start = now
        else:
            self.rows.append((now, info["generation"], now - self._start, info["collected"]))

    def write(self, path: Path) -> None:
        lines = [f"{t:.3f} gen{g} {d * 1000:.2f}ms collected={c}" for t, g, d, c in self.rows]
        path.write_text("\n".join(lines) + "\n")


def main() -> int:
    gc_path = os.environ.get("GC_LOG")
    gc_log = GcLog() if gc_path else None
    if gc_log is not None:
        gc.callbacks.append(gc_log)
    if os.environ.get("MEMPROBE_OUT"):
        tracemalloc.start(1)
    spans_path = os.environ.get("SPANS_OUT")
    span_log = SpanLog() if spans_path else None
    from chat_server.app import create_app
    from chat_server.config import load_settings
    from chat_server.serving import ChatServer, uvicorn_config

    settings = load_settings()
    server = ChatServer(uvicorn_config(create_app(settings), settings))
    out = Path(os.environ.get("MEMPROBE_OUT", "/tmp/chat-bench-memprobe.txt"))
    state: dict[str, tracemalloc.Snapshot] = {}

    async def run() -> None:
        loop = asyncio.get_running_loop()

        def baseline() -> None:
            if os.environ.get("GC_FREEZE") == "1":
                gc.collect()
                gc.freeze()
            if tracemalloc.is_tracing():
                state["base"] = tracemalloc.take_snapshot()
            if span_log is not None:
                span_log.clear()

        def compare() -> None:
            if span_log is not None and spans_path:
                span_log.write(Path(spans_path))
            if gc_log is not None and gc_path:
                gc_log.write(Path(gc_path))
            if "base" in state:
                count = int(os.environ.get("MEMPROBE_CONNECTIONS", "1"))
                _diff(state["base"], out, count)

        loop.add_signal_handler(signal.SIGUSR1, baseline)
        loop.add_signal_handler(signal.SIGUSR2, compare)
        await server.serve()

    try:
        import uvloop  # as uvicorn's loop="auto" picks it

        uvloop.run(run())
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        asyncio.run(run())
    finally:
        if gc_log is not None and gc_path:
            gc_log.write(Path(gc_path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
