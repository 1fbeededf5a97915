"""Connection scale (issue 21, target 4): many idle authenticated WebSockets on one instance.

Starts the product and the bare httpx relay (``relays.py --product-ws``: the same
uvicorn WebSocket implementation and settings, compression off on both), one after
the other, each pinned to one core, and opens N WebSockets to each from load
processes on the other core. The product's clients authenticate in the handshake with
ES256 tokens (one user each) that it verifies against a JWKS served here, as with
Supabase's asymmetric keys; the relay gets the same header and ignores it. A
connection counts once its ``ready`` frame has arrived. Reported per system:

- RSS per idle connection: (RSS with N connections open and settled - RSS after a
  warm-up of 100 connections, closed) / connections still open;
- handshake (+ auth) rate: connections per second while all N open with a bounded
  number in flight, and the server's CPU per handshake.

Only the bench raises file limits: it sets its soft ``RLIMIT_NOFILE`` to the hard limit
before starting children (which inherit it). N is capped below that hard limit (the
product refuses connections within ``FD_RESERVE`` of its limit); the report says so.
Each load process has its own loopback source address (127.0.0.x) so that no address
runs out of ephemeral ports.

    .venv/bin/python bench/idle.py                 # 50,000 (or what the file limit allows)
    .venv/bin/python bench/idle.py --quick         # 2,000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

PY = sys.executable
SERVER_CORE, LOAD_CORE = 0, 1
#: descriptors the server keeps for itself (the product's FD_RESERVE is 128, plus its
#: database and Redis pools, logs, the listening socket)
FD_MARGIN = 400
PER_LOAD = 10_000  # connections per load process (one source address each)
WARMUP = 100
KID = "bench-idle"


# -- the JWKS -------------------------------------------------------------------------
class Jwks:
    """An ES256 key and a loopback HTTP server publishing its JWKS (Supabase's shape)."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from jwt.algorithms import ECAlgorithm

        private = ec.generate_private_key(ec.SECP256R1())
        self.pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
        body = json.dumps({"keys": [{**jwk, "kid": KID, "alg": "ES256", "use": "sig"}]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/auth/v1/.well-known/jwks.json"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- a load process ---------------------------------------------------------------------
async def load_async(cfg: dict[str, Any]) -> None:
    """Open connections ``cfg['first']`` .. ``cfg['last'] - 1``, report, hold them until
    told to close (``count``, ``hold <seconds>`` and ``close`` lines on stdin)."""
    import jwt
    from wsproto_client import WSClient

    from chat_server.auth import AUDIENCE

    now = int(time.time())
    tokens = [
        jwt.encode(
            {
                "sub": f"{cfg['user']}-{i}",
                "aud": AUDIENCE,
                "role": "authenticated",
                "exp": now + 7200,
            },
            cfg["pem"],
            algorithm="ES256",
            headers={"kid": KID},
        )
        for i in range(cfg["first"], cfg["last"])
    ]
    loop = asyncio.get_running_loop()
    host, port, source = cfg["host"], cfg["port"], cfg["source"]
    gate = asyncio.Semaphore(cfg["in_flight"])
    clients: list[WSClient] = []
    errors: Counter[str] = Counter()
    times: list[float] = []

    pongs: list[asyncio.Future[float]] = []  # the probe's pings waiting (see hold)

    def ready_waiter() -> tuple[asyncio.Future[bytes], Any]:
        ready: asyncio.Future[bytes] = loop.create_future()

        def on_text(payload: bytes, now: float) -> None:
            if not ready.done():
                ready.set_result(payload)
            elif pongs and not pongs[0].done():
                pongs.pop(0).set_result(now)

        return ready, on_text

    async def hold(seconds: float) -> dict[str, Any]:
        """Ping the server through one idle connection every 100 ms: the loop's stalls
        (the product's slot refresh, a collection) show as late pongs."""
        end = time.monotonic() + seconds
        rtts: list[float] = []
        probe = clients[0] if cfg["probe"] and clients else None
        while time.monotonic() < end:
            if probe is not None:
                waiter: asyncio.Future[float] = loop.create_future()
                pongs.append(waiter)
                sent = time.perf_counter()
                probe.send_text(json.dumps({"type": "ping", "id": "probe"}))
                try:
                    async with asyncio.timeout(10):
                        rtts.append((await waiter - sent) * 1000)
                except TimeoutError:
                    rtts.append(10_000.0)
            await asyncio.sleep(0.1)
        rtts.sort()
        if not rtts:
            return {}
        return {"ping_ms_p50": rtts[len(rtts) // 2], "ping_ms_max": rtts[-1], "pings": len(rtts)}

    async def one(token: str) -> None:
        async with gate:
            ready, on_text = ready_waiter()
            client = WSClient(
                f"{host}:{port}", "/ws/chat", {"authorization": f"Bearer {token}"}, on_text
            )
            started = time.perf_counter()
            try:
                async with asyncio.timeout(60):
                    await loop.create_connection(lambda: client, host, port, local_addr=(source, 0))
                    await client.opened
                    first = json.loads(await ready)
            except (OSError, TimeoutError, ConnectionError) as exc:
                errors[type(exc).__name__] += 1
                client.close_now()
                return
            if first.get("type") != "ready":
                errors[str(first.get("code"))] += 1
                client.close_now()
                return
            times.append(time.perf_counter() - started)
            clients.append(client)

    await asyncio.sleep(max(0.0, cfg["go"] - time.time()))
    began = time.time()
    await asyncio.gather(*(one(t) for t in tokens))
    ended = time.time()
    times.sort()
    result = {
        "opened": len(clients),
        "began": began,
        "ended": ended,
        "ms_p50": times[len(times) // 2] * 1000 if times else None,
        "ms_p99": times[int(len(times) * 0.99)] * 1000 if times else None,
        "errors": dict(errors),
    }
    print("OPENED " + json.dumps(result), flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if line.strip() == "count":
            alive = sum(1 for c in clients if not c.closed.done())
            print(f"ALIVE {alive}", flush=True)
        elif line.startswith("hold "):
            print("HELD " + json.dumps(await hold(float(line.split()[1]))), flush=True)
        elif line.strip() == "close":
            break
    for client in clients:
        client.close_now()
    await asyncio.sleep(0.2)


def load_main(raw: str) -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    uvloop.run(load_async(json.loads(raw)))
    return 0


# -- the parent ---------------------------------------------------------------------------
def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Loads:
    """The load processes of one wave of connections to one server."""

    def __init__(self, procs: Any, cfgs: list[dict[str, Any]]) -> None:
        from procs import _child_setup

        self.procs = [
            subprocess.Popen(
                procs.argv([PY, __file__, "--load", json.dumps(cfg)], LOAD_CORE),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,
                preexec_fn=_child_setup,
            )
            for cfg in cfgs
        ]

    def read(self, tag: str) -> list[str]:
        out = []
        for proc in self.procs:
            assert proc.stdout is not None
            while line := proc.stdout.readline():
                if line.startswith(tag + " "):
                    out.append(line[len(tag) + 1 :].strip())
                    break
            else:
                raise RuntimeError(f"a load process exited with {proc.wait()} before {tag}")
        return out

    def tell(self, command: str) -> None:
        for proc in self.procs:
            self.tell_one(proc, command)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    self.tell_one(proc, "close")
                    proc.wait(timeout=60)
                except (OSError, subprocess.TimeoutExpired):
                    proc.kill()
                    proc.wait(timeout=5)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()

    @staticmethod
    def tell_one(proc: subprocess.Popen[str], command: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(command + "\n")
        proc.stdin.flush()


def wave(
    procs: Any, server: dict[str, Any], n: int, in_flight: int, jwks: Jwks, user: str, net: int
) -> Loads:
    """Start the load processes for ``n`` connections (``net``: the 127.0.x.0 block)."""
    count = max(1, math.ceil(n / PER_LOAD))
    go = time.time() + 2.0 + n / 4000  # every process has minted its tokens by then
    cfgs = []
    for j in range(count):
        first, last = j * n // count, (j + 1) * n // count
        cfgs.append(
            {
                "host": "127.0.0.1",
                "port": server["port"],
                "source": f"127.0.{net}.{2 + j}",
                "first": first,
                "last": last,
                "in_flight": max(1, in_flight // count),
                "pem": jwks.pem,
                "user": user,
                "go": go,
                "probe": j == 0,
            }
        )
    return Loads(procs, cfgs)


def measure(
    procs: Any, server: dict[str, Any], args: argparse.Namespace, jwks: Jwks, net: int
) -> dict[str, Any]:
    from loadclient import rss_kb

    pid = server["pid"]
    warm = wave(procs, server, WARMUP, 20, jwks, "warm", net)
    try:
        warm.read("OPENED")
    finally:
        warm.close()
    time.sleep(args.settle)
    base = rss_kb(pid)
    traced = args.memprobe and server["target"] == "product"
    if traced:
        os.kill(pid, signal.SIGUSR1)  # probe.py: the baseline snapshot
        time.sleep(2.0)
    loads = wave(procs, server, args.n, args.in_flight, jwks, "idle", net + 1)
    spy = profile(procs, server, args) if args.profile else None
    try:
        cpu0 = cpu_s(pid)
        opened = [json.loads(x) for x in loads.read("OPENED")]
        cpu1 = cpu_s(pid)
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its profile on Ctrl-C
            spy.wait(timeout=60)
        time.sleep(args.settle)
        rss = rss_kb(pid)
        if traced:
            memprobe(pid, Path(args.memprobe))
        cpu2 = cpu_s(pid)
        spy = profile(procs, server, args, "idle") if args.profile else None
        loads.tell(f"hold {args.hold}")
        held = json.loads(loads.read("HELD")[0])  # the first process pings
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        idle_cpu = (cpu_s(pid) - cpu2) / args.hold
        loads.tell("count")
        alive = sum(int(x) for x in loads.read("ALIVE"))
    finally:
        loads.close()
    ok = sum(o["opened"] for o in opened)
    window = max(o["ended"] for o in opened) - min(o["began"] for o in opened)
    errors: Counter[str] = Counter()
    for o in opened:
        errors.update(o["errors"])
    return {
        "connections": args.n,
        "opened": ok,
        "alive": alive,
        "rss_base_kb": base,
        "rss_kb": rss,
        "rss_per_conn_kb": (rss - base) / alive if alive else None,
        "handshakes_per_s": ok / window if window > 0 else None,
        "server_cpu_ms_per_handshake": (cpu1 - cpu0) / ok * 1000 if ok else None,
        "idle_cpu_pct": idle_cpu * 100,
        "idle_ping_ms_p50": held.get("ping_ms_p50"),
        "idle_ping_ms_max": held.get("ping_ms_max"),
        "handshake_ms_p50": max(o["ms_p50"] or 0 for o in opened),
        "handshake_ms_p99": max(o["ms_p99"] or 0 for o in opened),
        "errors": dict(errors),
    }


def memprobe(pid: int, out: Path) -> None:
    """probe.py: the allocations that grew since the baseline, per connection."""
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + 600
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    print(f"  memprobe: {out}", flush=True)


def profile(
    procs: Any, server: dict[str, Any], args: argparse.Namespace, phase: str = "handshake"
) -> Any:
    """py-spy (``--gil``, raw) on the server while the wave opens or while all idle."""
    import shutil

    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    out = Path(args.profile) / f"{server['target']}-{phase}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [spy, "record", "--format", "raw", "-o", str(out), "--pid", str(server["pid"])]
    cmd += ["--rate", "250", "--gil", "--full-filenames", "--nonblocking"]
    print(f"  py-spy: {out} (bench/profile_top.py reads it)", flush=True)
    return procs.start(f"py-spy-{server['target']}-{phase}", cmd, core=LOAD_CORE)


def start(
    procs: Any, target: str, product: Any, jwks: Jwks, data_dir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    from procs import free_port, wait_healthy

    port = free_port()
    if target == "product":
        product.extra_env["SUPABASE_JWKS_URL"] = jwks.url
        env = product.env(port=port, upstream="http://127.0.0.1:9/v1", data_dir=str(data_dir))
        cmd = [PY, "-m", "chat_server", "serve"]
        if args.memprobe:  # the same server under tracemalloc (slow: its rates say nothing)
            cmd = [PY, str(HERE / "probe.py")]
            Path(args.memprobe).unlink(missing_ok=True)
            env |= {"MEMPROBE_OUT": args.memprobe, "MEMPROBE_CONNECTIONS": str(args.n)}
        proc = procs.start(target, cmd, core=SERVER_CORE, env=env, cwd=data_dir)
    else:
        cmd = [PY, str(HERE / "relays.py"), "httpx", "--port", str(port), "--product-ws"]
        cmd += ["--upstream", "http://127.0.0.1:9/v1"]
        proc = procs.start(target, cmd, core=SERVER_CORE)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", proc)
    except RuntimeError:
        print(procs.log_tail(target), file=sys.stderr)
        raise
    return {"pid": proc.pid, "port": port, "target": target}


def report(results: dict[str, dict[str, Any]], capped: str | None) -> None:
    print()
    if capped:
        print(capped)
    rows = [
        ("connections open (of asked)", "alive", "{:.0f}"),
        ("RSS per idle connection, KB", "rss_per_conn_kb", "{:.1f}"),
        ("handshakes (+ ES256 auth) per s", "handshakes_per_s", "{:.0f}"),
        ("server CPU per handshake, ms", "server_cpu_ms_per_handshake", "{:.3f}"),
        ("handshake p50, ms", "handshake_ms_p50", "{:.1f}"),
        ("handshake p99, ms", "handshake_ms_p99", "{:.1f}"),
        ("idle: server CPU, % of a core", "idle_cpu_pct", "{:.2f}"),
        ("idle: ping p50, ms", "idle_ping_ms_p50", "{:.1f}"),
        ("idle: ping max (a stall), ms", "idle_ping_ms_max", "{:.1f}"),
    ]
    names = list(results)
    print(f"{'':34}" + "".join(f"{n:>12}" for n in names) + f"{'ratio':>10}")
    for label, key, fmt in rows:
        values = [results[n].get(key) for n in names]
        cells = "".join(f"{fmt.format(v) if v is not None else '-':>12}" for v in values)
        ratio = ""
        if len(values) == 2 and all(values) and key != "alive":
            ratio = f"{values[1] / values[0]:.2f}x"  # type: ignore[operator]
        print(f"{label:34}{cells}{ratio:>10}")
    for n in names:
        if results[n]["errors"]:
            print(f"{n} errors: {results[n]['errors']}")
    if len(names) == 2:
        relay, product = (results[n] for n in names)
        if relay["rss_per_conn_kb"] and product["rss_per_conn_kb"]:
            ratio = product["rss_per_conn_kb"] / relay["rss_per_conn_kb"]
            print(f"target: RSS per idle connection <= 0.7x the relay's: {ratio:.2f}x")
        if relay["handshakes_per_s"] and product["handshakes_per_s"]:
            ratio = product["handshakes_per_s"] / relay["handshakes_per_s"]
            print(f"target: handshake + auth rate >= 0.8x the relay's handshake rate: {ratio:.2f}x")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--load", help=argparse.SUPPRESS)
    p.add_argument("--connections", type=int, default=50_000)
    p.add_argument("--quick", action="store_true", help="2,000 connections")
    p.add_argument("--in-flight", type=int, default=200, help="handshakes in flight at once")
    p.add_argument("--settle", type=float, default=3.0, help="seconds before reading RSS")
    p.add_argument(
        "--hold",
        type=float,
        default=45.0,
        help="seconds all stay open while one is pinged (the product refreshes slots every 20)",
    )
    p.add_argument("--only", default="relay,product")
    p.add_argument("--profile", metavar="DIR", help="py-spy each server while it handshakes")
    p.add_argument(
        "--memprobe", metavar="FILE", help="the product under tracemalloc: where its memory goes"
    )
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--redis-db", type=int, default=13)
    p.add_argument("--out", default="/tmp/chat-bench-idle.json")
    args = p.parse_args(argv)
    if args.load:
        return load_main(args.load)

    from procs import Procs, can_pin
    from product import Product

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the children
    asked = 2_000 if args.quick else args.connections
    args.n = min(asked, hard - FD_MARGIN)
    capped = None
    if args.n < asked:
        capped = (
            f"this host's hard RLIMIT_NOFILE is {hard} (the bench raises only the soft limit): "
            f"{args.n} connections instead of {asked}; {asked} need a hard limit of at least "
            f"{asked + FD_MARGIN} (ulimit -Hn, systemd LimitNOFILE, docker --ulimit nofile)"
        )
        print(capped, flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="chat-bench-idle-"))
    procs = Procs(tmp, pin=can_pin())
    jwks = Jwks()
    product = Product(
        pg_admin_url=args.pg, redis_host="127.0.0.1", redis_port=6379, redis_db=args.redis_db
    )
    results: dict[str, dict[str, Any]] = {}
    try:
        if "product" in args.only:
            product.create_database()
        for index, target in enumerate(t for t in ("relay", "product") if t in args.only):
            server = start(procs, target, product, jwks, tmp, args)
            try:
                print(f"{target}: opening {args.n} connections ...", flush=True)
                results[target] = measure(procs, server, args, jwks, net=10 + 10 * index)
            finally:
                procs.stop(target)
            print(f"{target}: {json.dumps(results[target])}", flush=True)
    finally:
        procs.stop_all()
        jwks.close()
        product.drop_database()
        product.clean_redis()
    report(results, capped)
    Path(args.out).write_text(json.dumps({"results": results, "capped": capped}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
