"""The reconnect storm of issue 21 (target 3): instance A drains, its clients resume on B.

    .venv/bin/python bench/storm.py             # 5,000 clients (a few minutes)
    .venv/bin/python bench/storm.py --quick     # 500 clients

A shared Postgres database (made for the run, dropped after it) and Redis (a db number
and key prefix of its own), the loopback upstream, and two product instances: B alone
on core 0 (``taskset``), A with the upstream and the clients (``stormclient.py``) on
core 1. N clients attach to sessions on A, one short turn each; A gets SIGTERM (it
drains and closes every connection with 1012); each client reconnects to B after a
random 0 to ``--jitter`` seconds and sends ``session.resume``.

Printed: p50/p99 of the time from the reconnect (TCP connect to B) to ``session.ready``
and from ``session.resume`` to it; errors; database statements per resume on B (its
``chat_db_statements_total`` before and after the storm, from ``/metrics``; its
background work in that window included); Redis commands per resume (``MONITOR`` on
the bench's db number, A's shutdown included); B's CPU. The file limit is raised here
for the children (not in the product).

Postgres's own ``pg_stat_database.xact_commit`` was tried and is no count of
statements: a backend reports it late and in part (50 autocommit reads on one pooled
connection showed as 0 to 13 transactions 14 s later), and A's pending counts arrive
when it exits, inside the storm's window.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import procs as procs_module  # noqa: E402
from procs import Procs, can_pin  # noqa: E402
from product import Product, RedisMonitor  # noqa: E402
from scenarios import LOAD_CORE, PY, SERVER_CORE, Bench  # noqa: E402

P99_TARGET_MS = 2000.0


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=5000)
    p.add_argument("--quick", action="store_true", help="500 clients")
    p.add_argument("--jitter", type=float, default=1.0, help="reconnect within this many s")
    p.add_argument("--connect-concurrency", type=int, default=200, help="while attaching to A")
    p.add_argument(
        "--product-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for both instances (repeatable), e.g. DATABASE_POOL_SIZE=20",
    )
    p.add_argument("--no-monitor", action="store_true", help="no Redis MONITOR (its own cost)")
    p.add_argument(
        "--profile",
        default="",
        metavar="DIR",
        help="py-spy B over the storm into DIR (profile.txt, top.txt: where its CPU goes)",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=-10 if os.geteuid() == 0 else 0,
        help="priority of the bench's processes (default -10 as root)",
    )
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--redis-db", type=int, default=14)
    p.add_argument("--out", default="/tmp/chat-storm-results.json")
    args = p.parse_args(argv)
    if args.quick:
        args.clients = min(args.clients, 500)
    if args.redis_db in (0, 9):
        p.error("--redis-db 0 and 9 belong to others")
    if any("=" not in kv for kv in args.product_env):
        p.error("--product-env takes KEY=VALUE")
    # What Bench reads of run.py's options.
    args.deflate, args.litellm_venv = False, ""
    return args


def statements(base_url: str) -> int:
    """B's ``chat_db_statements_total`` (statements sent through SQLAlchemy; the resume
    path sends every one of its statements that way)."""
    import httpx

    for _ in range(30):  # B may still refuse new connections for a moment (503)
        response = httpx.get(f"{base_url}/metrics", timeout=10)
        if response.status_code == 200:
            for line in response.text.splitlines():
                if line.startswith("chat_db_statements_total "):
                    return int(float(line.split()[1]))
            raise RuntimeError("B's /metrics has no chat_db_statements_total")
        time.sleep(0.5)
    raise RuntimeError(f"B's /metrics answers {response.status_code}")


def read_line(proc: subprocess.Popen[str], prefix: str) -> dict[str, Any]:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(prefix):
            data: dict[str, Any] = json.loads(line[len(prefix) :])
            return data
    raise RuntimeError(f"the storm client exited ({proc.wait()}) without a {prefix.strip()} line")


def run_storm(args: argparse.Namespace, procs: Procs, product: Product) -> dict[str, Any]:
    bench = Bench(args, procs, product)
    bench.start_upstream()
    a = bench.start_server("product", name="a", core=LOAD_CORE)
    b = bench.start_server("product", name="b", core=SERVER_CORE)
    cfg = {
        "url": a["ws"],
        "b_url": b["ws"],
        "a_pid": a["pid"],
        "b_pid": b["pid"],
        "game_id": a["game_id"],
        "secret": a["secret"],
        "user_prefix": f"storm-{int(time.time()) % 10**6}-",
        "clients": args.clients,
        "jitter_s": args.jitter,
        "connect_concurrency": args.connect_concurrency,
    }
    log = open(procs.log_dir / "storm-load.log", "ab")  # noqa: SIM115 - closed below
    client = subprocess.Popen(
        procs.argv([PY, str(HERE / "stormclient.py"), json.dumps(cfg)], LOAD_CORE),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        cwd=HERE,
        start_new_session=True,
        preexec_fn=procs_module._child_setup,
    )
    log.close()
    procs.live["storm-load"] = client  # type: ignore[assignment]
    print(f"attaching {args.clients} clients to A ...", file=sys.stderr)
    attached = read_line(client, "ATTACHED ")
    print(f"  {attached}", file=sys.stderr)
    b_http = b["ws"].replace("ws://", "http://").removesuffix("/ws/chat")
    before = statements(b_http)
    monitor = (
        RedisMonitor.none()
        if args.no_monitor
        else RedisMonitor(product.redis_host, product.redis_port, product.redis_db)
    )
    load = {"uptime_before": os.getloadavg()}
    spy = start_profile(procs, b["pid"], args.profile) if args.profile else None
    with monitor:
        assert client.stdin is not None
        client.stdin.write("GO\n")
        client.stdin.flush()
        print("  SIGTERM to A; the storm ...", file=sys.stderr)
        result = read_line(client, "RESULT ")
    load["uptime_after"] = os.getloadavg()
    after = statements(b_http)
    if spy is not None:
        stop_profile(spy, args.profile)
    try:  # A's own shutdown, for the record (it does not bound the figures above)
        procs.live["a"].wait(timeout=60)
        a_exited = True
    except subprocess.TimeoutExpired:
        a_exited = False
        print("warning: A has not exited 60 s after its SIGTERM", file=sys.stderr)
    client.wait(timeout=30)
    resumed = result["resumed"] or 1
    redis = {k: v for k, v in monitor.client.most_common()}
    return {
        "clients": args.clients,
        "jitter_s": args.jitter,
        "attach": attached,
        **result,
        "db_statements": after - before,
        "db_statements_per_resume": (after - before) / resumed,
        "redis_commands": redis,
        "redis_scripted": dict(monitor.scripted),
        "redis_per_resume": sum(redis.values()) / resumed,
        "load": load,
        "a_exited": a_exited,
    }


def start_profile(procs: Procs, pid: int, out: str) -> subprocess.Popen[bytes]:
    """py-spy on B (only what holds the GIL: its CPU work) until ``stop_profile``;
    ``--nonblocking``: B is never paused to be sampled (a paused B would be slower)."""
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    Path(out).mkdir(parents=True, exist_ok=True)
    cmd = [spy, "record", "--format", "raw", "-o", str(Path(out) / "profile.txt")]
    cmd += ["--pid", str(pid), "--rate", "250", "--gil", "--full-filenames", "--nonblocking"]
    proc = procs.start("py-spy", cmd, core=LOAD_CORE)
    time.sleep(1.0)  # attached before the storm
    return proc


def stop_profile(proc: subprocess.Popen[bytes], out: str) -> None:
    from profile_top import summarize

    proc.send_signal(signal.SIGINT)  # py-spy writes its profile and exits
    proc.wait(timeout=60)
    top = summarize((Path(out) / "profile.txt").read_text(), 30)
    (Path(out) / "top.txt").write_text(top + "\n")
    print(f"  profile of B: {out}/top.txt", file=sys.stderr)


def report(r: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f} ms"

    met = (r["reconnect_ms"]["p99"] or 1e12) <= P99_TARGET_MS and not r["errors"]
    redis = ", ".join(f"{k} {v / (r['resumed'] or 1):.2f}" for k, v in r["redis_commands"].items())
    return "\n".join(
        [
            f"reconnect storm: {r['resumed']}/{r['attached']} clients resumed on B "
            f"(A closed them over {r['closed_over_s']:.2f} s; reconnects over "
            f"{r['storm_s']:.2f} s, jitter 0-{r['jitter_s']:g} s)",
            f"  reconnect -> session.ready: p50 {ms(r['reconnect_ms']['p50'])}, "
            f"p99 {ms(r['reconnect_ms']['p99'])}, max {ms(r['reconnect_ms']['max'])}",
            f"  session.resume -> session.ready: p50 {ms(r['resume_ms']['p50'])}, "
            f"p99 {ms(r['resume_ms']['p99'])}; connect -> ready (handshake, auth): "
            f"p50 {ms(r['handshake_ms']['p50'])}, p99 {ms(r['handshake_ms']['p99'])}",
            f"  errors: {r['errors'] or 0}; A's close codes: {r['a_closes']}; refused at "
            f"B's door (503, retried after 1 s + jitter): {r['clients_refused']} clients, "
            f"{r['refused_503']} times; those let in at once: p50 "
            f"{ms(r['first_try_ms']['p50'])}, p99 {ms(r['first_try_ms']['p99'])}",
            f"  database statements per resume: {r['db_statements_per_resume']:.3f} "
            f"({r['db_statements']} in all on B, its chat_db_statements_total; its background "
            "work included)",
            f"  Redis commands per resume: {r['redis_per_resume']:.2f} ({redis}; "
            "A's shutdown included)",
            f"  B's CPU: {r['b_cpu_s']:.2f} s over the storm, "
            f"{r['b_cpu_ms_per_resume'] or 0:.2f} ms per resume, "
            f"{r['b_busy']:.0%} of its core over {r['window_s']:.1f} s; "
            f"the clients' own CPU {r['load_cpu_s']:.2f} s",
            f"  host load average before/after: {r['load']['uptime_before'][0]:.2f} / "
            f"{r['load']['uptime_after'][0]:.2f}",
            f"  target (p99 <= 2 s, 0 errors, <= 1 statement per resume): "
            f"{'met' if met and r['db_statements_per_resume'] <= 1.0 else 'NOT met'}",
        ]
    )


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * args.clients + 2000  # the clients' process: A's and B's sockets
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, need)), hard))
    if need > hard:
        print(f"warning: ulimit -n hard limit {hard} < {need}", file=sys.stderr)
    signal.signal(signal.SIGTERM, _interrupt)
    procs_module.NICE = args.nice
    pin = can_pin()
    if not pin:
        print("warning: no taskset or < 2 cores: B is not pinned", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="chat-storm-"))
    procs = Procs(tmp, pin=pin)
    product = Product(
        pg_admin_url=args.pg, redis_host="127.0.0.1", redis_port=6379, redis_db=args.redis_db
    )
    product.extra_env = dict(kv.split("=", 1) for kv in args.product_env)
    status, result = 0, None
    try:
        product.create_database()
        result = run_storm(args, procs, product)
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        status = 130
    except Exception as exc:
        print(f"the storm failed: {exc!r}; logs: {tmp}", file=sys.stderr)
        status = 1
    finally:
        procs.stop_all()
        for step in (product.drop_database, product.clean_redis):
            try:
                step()
            except Exception as exc:  # report, never hide the original error
                print(f"cleanup failed: {exc!r}", file=sys.stderr)
    if result is not None:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
        print(report(result))
        print(f"\nevery figure: {args.out}; logs: {tmp}")
    return status


if __name__ == "__main__":
    sys.exit(main())
