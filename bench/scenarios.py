"""The bench's systems and scenarios: start a server, drive the load, read the figures.

``Bench`` owns the upstream and the servers under test (through ``Procs``) and runs
each scenario as one bounded load-client process; ``run.py`` is the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from procs import Procs, free_port, wait_healthy
from product import Product, RedisMonitor
from report import TITLES

HERE = Path(__file__).resolve().parent

PY = sys.executable
SERVER_CORE, LOAD_CORE = 0, 1
GAP_MS, TOKENS = 20.0, 200  # 50 tok/s, 200-token answers
GAP_LIMIT_MS = 50.0
SHORT_TOKENS = 4  # issue 21's short answers
SCENARIOS = ("one", "fifty", "burst", "burst_short")
KEEP_UP = 0.95  # a ramp step must deliver this share of the tokens the upstream sends


class Bench:
    def __init__(self, args: argparse.Namespace, procs: Procs, product: Product | None) -> None:
        self.args, self.procs, self.product = args, procs, product
        self.upstream_url = ""
        self.upstream_pid: int | None = None
        self.data_dir = Path(procs.log_dir)

    # -- processes -------------------------------------------------------------------
    def start_upstream(self) -> None:
        port = free_port()
        proc = self.procs.start(
            "upstream", [PY, str(HERE / "upstream.py"), "--port", str(port)], core=LOAD_CORE
        )
        wait_healthy(f"http://127.0.0.1:{port}/healthz", proc, timeout=30)
        self.upstream_url = f"http://127.0.0.1:{port}/v1"
        self.upstream_pid = proc.pid

    def start_server(
        self,
        target: str,
        *,
        probe: dict[str, str] | None = None,
        name: str | None = None,
        core: int = SERVER_CORE,
    ) -> dict[str, Any]:
        """Start one system (``name`` tells two instances of it apart) and set it up."""
        name = name or target
        port = free_port()
        extra_pids: list[int] = []
        if target == "product":
            assert self.product is not None
            env = self.product.env(
                port=port, upstream=self.upstream_url, data_dir=str(self.data_dir / "data")
            )
            cmd = [PY, "-m", "chat_server", "serve"]
            if probe:  # bench/probe.py: the same server, instrumented
                cmd = [PY, str(HERE / "probe.py")]
                env |= probe
            proc = self.procs.start(name, cmd, core=core, env=env, cwd=self.data_dir)
        else:
            upstream, relay_env = self.upstream_url, None
            if target == "litellm":  # the httpx relay in front of LiteLLM's proxy
                extra_pids, upstream, key = self.start_litellm(f"{name}-proxy", core)
                relay_env = os.environ | {"BENCH_API_KEY": key}
            cmd = [PY, str(HERE / "relays.py"), "sdk" if target == "sdk" else "httpx"]
            cmd += ["--port", str(port), "--upstream", upstream]
            proc = self.procs.start(name, cmd, core=core, env=relay_env)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(f"{base}/healthz", proc)
        except RuntimeError:
            print(self.procs.log_tail(name), file=sys.stderr)
            raise
        game_id, secret = "bench-game", None
        if target == "product":
            assert self.product is not None
            game_id, secret = self.product.admin_setup(base), self.product.secret
        return {
            "target": target,
            "name": name,
            "pid": proc.pid,
            "extra_pids": extra_pids,
            "ws": f"ws://127.0.0.1:{port}/ws/chat",
            "game_id": game_id,
            "secret": secret,
        }

    def stop_server(self, name: str) -> None:
        self.procs.stop(name)
        self.procs.stop(f"{name}-proxy")  # LiteLLM's proxy, if this system has one

    def start_litellm(self, name: str, core: int) -> tuple[list[int], str, str]:
        """LiteLLM's proxy on ``core`` in front of the upstream: pid, base URL, key."""
        import litellm_ref

        python = litellm_ref.ensure_venv(self.args.litellm_venv)
        port = free_port()
        config = litellm_ref.write_config(self.data_dir / "litellm.yaml", self.upstream_url)
        key = "sk-bench-" + secrets.token_hex(24)
        proc = self.procs.start(
            name,
            litellm_ref.command(python, config, port),
            core=core,
            env=litellm_ref.env(key),
            cwd=self.data_dir,
        )
        try:
            wait_healthy(f"http://127.0.0.1:{port}/health/liveliness", proc, timeout=180)
        except RuntimeError:
            print(self.procs.log_tail(name), file=sys.stderr)
            raise
        return [proc.pid], f"http://127.0.0.1:{port}/v1", key

    def load(self, server: dict[str, Any], name: str, **cfg: Any) -> dict[str, Any]:
        """Run the load client once (bounded) and return its result."""
        cfg = {
            "url": server["ws"],
            "game_id": server["game_id"],
            "secret": server["secret"],
            "server_pid": server["pid"],
            # LiteLLM's proxy: its CPU counts with its relay's (``--fanout`` passes
            # the second instance's here too).
            "server_pids": server.get("extra_pids", []),
            "upstream_pid": self.upstream_pid,
            "user_prefix": f"bench-{name}-{int(time.time() * 1000) % 10**8}-",
            "deflate": self.args.deflate,
            **cfg,
        }
        dur = (cfg.get("first_ms", 0) + cfg.get("tokens", 0) * cfg.get("gap_ms", 0)) / 1000
        rounds = cfg.get("turns", 1) + cfg.get("rounds", 0)
        budget = 120 + cfg["clients"] / 20 + 3 * dur * (rounds + 1) + cfg.get("seconds", 0)
        cfg["timeout_s"] = budget
        out = self.procs.run(
            f"load-{name}",
            [PY, str(HERE / "loadclient.py"), json.dumps(cfg)],
            core=LOAD_CORE,
            timeout=budget + 30,
            cwd=HERE,
        )
        for line in out.splitlines():
            if line.startswith("RESULT "):
                result: dict[str, Any] = json.loads(line[7:])
                return result
        raise RuntimeError(f"load client gave no result:\n{out[-2000:]}")

    # -- scenarios -------------------------------------------------------------------
    def warmup(self, server: dict[str, Any]) -> None:
        """Pay the lazy imports and fill the pools; wait for the flag to be in force."""
        for _ in range(15):
            r = self.load(server, "warmup", clients=5, turns=2, tokens=20, gap_ms=5, stagger=False)
            if r["turns_ok"] == r["turns"] and r["turns"]:
                return
            time.sleep(1.0)
        raise RuntimeError(f"{server['target']}: warm-up turns fail: {r['errors']}")

    def one(self, server: dict[str, Any]) -> dict[str, Any]:
        turns = 8 if self.args.quick else 20
        return self.load(
            server, "one", clients=1, turns=turns, tokens=50, gap_ms=GAP_MS, stagger=False
        )

    def fifty(self, server: dict[str, Any]) -> dict[str, Any]:
        turns = 2 if self.args.quick else 3
        return self.load(
            server, "fifty", clients=self.args.streams, turns=turns, tokens=TOKENS, gap_ms=GAP_MS
        )

    def burst(self, server: dict[str, Any]) -> dict[str, Any]:
        """Lockstep bursts (issue 21): every client asks at the same instant, 5 rounds of
        200-token answers at 50 tok/s: the first token's p50 and p99 under a burst."""
        return self.load(
            server,
            "burst",
            mode="lockstep",
            clients=self.args.streams,
            rounds=5,
            tokens=TOKENS,
            gap_ms=GAP_MS,
        )

    def burst_short(self, server: dict[str, Any]) -> dict[str, Any]:
        """The same bursts with 4-token answers, many rounds: the turn dominates the CPU
        (issue 21's target 1: CPU per turn against the relay's)."""
        return self.load(
            server,
            "burst-short",
            mode="lockstep",
            clients=self.args.streams,
            rounds=20 if self.args.quick else 40,
            tokens=SHORT_TOKENS,
            gap_ms=GAP_MS,
        )

    def ai_sdk(self, server: dict[str, Any]) -> dict[str, Any]:
        """CPU per delivered token: /ws/ai-sdk against /ws/chat on the same server, in
        alternating runs of the fifty-streams scenario (issue 17: at most 1.1x)."""
        turns = 2 if self.args.quick else 3
        ai_url = server["ws"].replace("/ws/chat", "/ws/ai-sdk")
        runs: dict[str, list[dict[str, Any]]] = {"chat": [], "ai_sdk": []}
        for _ in range(self.args.runs):
            for name, extra in (("chat", {}), ("ai_sdk", {"url": ai_url, "protocol": "ai-sdk"})):
                runs[name].append(
                    self.load(
                        server,
                        f"ai-sdk-{name}",
                        clients=self.args.streams,
                        turns=turns,
                        tokens=TOKENS,
                        gap_ms=GAP_MS,
                        **extra,
                    )
                )
        chat, ai = _median(runs["chat"]), _median(runs["ai_sdk"])
        per_chat, per_ai = chat.get("server_cpu_per_1k"), ai.get("server_cpu_per_1k")
        ratio = per_ai / per_chat if per_chat and per_ai else None
        return {"chat": chat, "ai_sdk": ai, "cpu_per_token_ratio": ratio}

    def ramp(self, server: dict[str, Any]) -> dict[str, Any]:
        steps: list[dict[str, Any]] = []
        sustained = 0
        deadline = time.monotonic() + self.args.ramp_budget
        for clients in self.args.ramp:
            if time.monotonic() > deadline:
                break
            for _attempt in range(2):  # a step fails only if it fails twice
                r = self.load(
                    server, f"ramp{clients}", clients=clients, turns=2, tokens=TOKENS, gap_ms=GAP_MS
                )
                p99 = r["gap_ms_p99"]
                # Keeping up: the gap p99 within the limit, every turn complete, and the
                # tokens delivered at the rate the upstream sends them (a saturated
                # server falls behind slowly, which a short run's gaps barely show).
                r["passed"] = bool(
                    p99 is not None
                    and p99 <= GAP_LIMIT_MS
                    and r["turns_ok"] == clients * 2
                    and r["tokens_per_s"] >= KEEP_UP * clients * 1000 / GAP_MS
                )
                if r["passed"]:
                    break
            steps.append(r)
            print(
                f"  ramp {clients}: gap p99 {p99 and round(p99, 1)} ms, server busy "
                f"{r['server_busy']:.0%}, load busy {r['load_busy']:.0%}, others "
                f"{r['others_busy']:.0%}, {r['tokens_per_s']:.0f} tok/s, ok "
                f"{r['turns_ok']}/{clients * 2}",
                file=sys.stderr,
            )
            if not r["passed"]:
                break
            sustained = clients
        return {"sustained": sustained, "steps": steps}

    def idle(self, target: str) -> dict[str, Any]:
        server = self.start_server(target)
        try:
            self.warmup(server)
            return self.load(
                server,
                "idle",
                mode="idle",
                clients=self.args.connections,
                tokens=20,
                connect_concurrency=100,
                turn_concurrency=50,
            )
        finally:
            self.stop_server(target)

    def accounting(self, server: dict[str, Any]) -> dict[str, Any]:
        """Redis commands, Postgres transactions and rows, server CPU: per turn, per token.

        Three runs of 5 clients: 4 turns of 200 tokens (A), 16 turns of 20 tokens (B), 4
        turns of 20 tokens (C). B - C is what one more short turn costs (connections and
        sessions cancel out); A - C is what 180 more tokens per turn cost.
        """
        product = self.product if server["target"] == "product" else None
        plan = (("A", 4, 200), ("B", 16, 20), ("C", 4, 20))
        counters = [product.db_counters() if product else {}]
        runs: dict[str, dict[str, Any]] = {}
        for name, turns, tokens in plan:
            with (
                RedisMonitor(product.redis_host, product.redis_port, product.redis_db)
                if product
                else RedisMonitor.none()
            ) as mon:
                r = self.load(
                    server,
                    f"acct{name}",
                    clients=5,
                    turns=turns,
                    tokens=tokens,
                    gap_ms=2,
                    stagger=False,
                )
            counters.append(product.db_counters() if product else {})
            before, after = counters[-2], counters[-1]
            runs[name] = {
                "turns": r["turns"],
                "redis": Counter(mon.client),
                "lua": Counter(mon.scripted),
                "xact": after.get("xact_commit", 0) - before.get("xact_commit", 0),
                "rows": sum(
                    after.get(k, 0) - before.get(k, 0)
                    for k in ("tup_inserted", "tup_updated", "tup_deleted")
                ),
                "cpu": r["server_cpu_s"],
            }
        a, b, c = runs["A"], runs["B"], runs["C"]
        extra = max(1, b["turns"] - c["turns"])
        marginal = {k: (b["redis"][k] - c["redis"][k]) / extra for k in b["redis"]}
        per_token = (a["cpu"] - c["cpu"]) / max(1, a["turns"]) / 180
        return {
            "tokens_long": 200,
            "tokens_short": 20,
            "redis_per_turn": sum(marginal.values()),
            "redis_per_turn_by_command": {k: round(v, 2) for k, v in marginal.items() if v},
            "evalsha_per_turn": marginal.get("EVALSHA", 0.0),
            "redis_commands_run_a": dict(a["redis"]) | {f"lua:{k}": v for k, v in a["lua"].items()},
            "xact_per_turn": (b["xact"] - c["xact"]) / extra,
            "rows_per_turn": (b["rows"] - c["rows"]) / extra,
            "rows_per_turn_at_200": a["rows"] / max(1, a["turns"]),
            "rows_per_turn_at_20": c["rows"] / max(1, c["turns"]),
            # A turn's own cost: one more 20-token turn, less its 20 tokens.
            "cpu_ms_per_turn": ((b["cpu"] - c["cpu"]) / extra - 20 * per_token) * 1000,
            "cpu_ms_per_token": per_token * 1000,
        }

    def scaling(self) -> dict[str, Any]:
        """Two instances of the product, one per core, against one alone: CPU per token.

        On a 2-core machine the load and the upstream need a core, so two instances
        cannot both be driven to saturation. What decides how far they scale can be
        measured: each instance's CPU per 1,000 tokens while both serve
        ``--scaling`` streams at once (sharing Postgres, Redis and the cross-instance
        signals), against one instance serving them alone with the other idle. An
        instance's capacity goes as the inverse of its CPU per token, so two deliver
        ``alone / a + alone / b`` times one: an estimate, and said to be one.
        """
        streams, turns = self.args.scaling, 2 if self.args.quick else 3
        cfg = {"clients": streams, "turns": turns, "tokens": TOKENS, "gap_ms": GAP_MS}
        pair = [
            self.start_server("product", name="product-a", core=SERVER_CORE),
            self.start_server("product", name="product-b", core=LOAD_CORE),
        ]
        alone: list[dict[str, Any]] = []
        together: list[list[dict[str, Any]]] = []
        try:
            for server in pair:
                self.warmup(server)
            for _ in range(self.args.runs):
                alone.append(self.load(pair[0], "scale-alone", **cfg))
                with ThreadPoolExecutor(2) as pool:
                    futures = [pool.submit(self.load, s, f"scale-{s['name']}", **cfg) for s in pair]
                    together.append([f.result() for f in futures])
        finally:
            for server in pair:
                self.procs.stop(server["name"])
        one = _median(alone)
        a, b = _median([t[0] for t in together]), _median([t[1] for t in together])
        # Also run by run: each "together" run follows its "alone" run, so pairing
        # them cancels the drift of the machine between runs.
        paired = [_two_over_one(x, y, z) for x, (y, z) in zip(alone, together, strict=True)]
        paired_known = [e for e in paired if e is not None]
        return {
            "streams": streams,
            "alone": one,
            "a": a,
            "b": b,
            "tokens_per_s_alone": one["tokens_per_s"],
            "tokens_per_s_together": a["tokens_per_s"] + b["tokens_per_s"],
            "estimate": _two_over_one(one, a, b),
            "estimate_paired": statistics.median(paired_known) if paired_known else None,
            "estimates_by_run": paired,
        }

    def fanout(self) -> dict[str, Any]:
        """Issue 18: CPU per delivered token when each session is followed from a second
        instance (two followers, one per instance) against nobody following, same run.

        Two instances; ``--fanout`` clients ask on A. "alone": nobody else follows (one
        delivery per token); "followed": each session is also followed by a connection
        on B (two deliveries per token, one per instance, B's through the relay). The
        CPU of both instances over the tokens every connection received.
        """
        streams, turns = self.args.fanout, 2 if self.args.quick else 3
        cfg = {"clients": streams, "turns": turns, "tokens": TOKENS, "gap_ms": GAP_MS}
        pair = [
            self.start_server("product", name="product-a", core=SERVER_CORE),
            self.start_server("product", name="product-b", core=LOAD_CORE),
        ]
        alone: list[dict[str, Any]] = []
        followed: list[dict[str, Any]] = []
        try:
            for server in pair:
                self.warmup(server)
            more = {"server_pids": [pair[1]["pid"]]}
            for _ in range(self.args.runs):
                alone.append(self.load(pair[0], "fanout-alone", **more, **cfg))
                followed.append(
                    self.load(
                        pair[0], "fanout-followed", follow_urls=[pair[1]["ws"]], **more, **cfg
                    )
                )
        finally:
            for server in pair:
                self.procs.stop(server["name"])
        key = "server_cpu_per_1k_delivered"
        one, two = _median(alone), _median(followed)
        paired = [
            y[key] / x[key] if x.get(key) and y.get(key) else None
            for x, y in zip(alone, followed, strict=True)
        ]
        known = [r for r in paired if r is not None]
        return {
            "streams": streams,
            "alone": one,
            "followed": two,
            "ratio": two[key] / one[key] if one.get(key) and two.get(key) else None,
            "ratio_paired": statistics.median(known) if known else None,
            "ratios_by_run": paired,
        }

    def measure(self, only: list[str], results: dict[str, Any]) -> None:
        """Every scenario for every system; the systems take turns, run after run.

        Fills ``results`` as it goes, so an interrupted run still shows what it got.
        """
        import probes  # it imports this module

        for target in only:
            results[target] = {}
        servers = {}
        try:
            for target in only:
                servers[target] = self.start_server(target)
                self.warmup(servers[target])
            runners = {
                "one": self.one,
                "fifty": self.fifty,
                "burst": self.burst,
                "burst_short": self.burst_short,
            }
            for scenario in self.args.scenarios:
                runner = runners[scenario]
                runs: dict[str, list[dict[str, Any]]] = {t: [] for t in only}
                for _ in range(self.args.runs):
                    for target in only:
                        runs[target].append(runner(servers[target]))
                for target in only:
                    results[target][scenario] = r = _median(runs[target])
                    brief = _brief_burst(r) if scenario.startswith("burst") else _brief(r)
                    print(f"  {TITLES[target]} {scenario}: {brief}", file=sys.stderr)
            if self.args.ai_sdk and "product" in servers:
                results["product"]["ai_sdk"] = r = self.ai_sdk(servers["product"])
                ratio = r["cpu_per_token_ratio"]
                print(
                    f"  product ai-sdk: {_brief(r['ai_sdk'])}; CPU per token "
                    + (f"{ratio:.2f}x /ws/chat's" if ratio else "n/a"),
                    file=sys.stderr,
                )
            if not self.args.no_accounting:
                for target in only:
                    results[target]["accounting"] = self.accounting(servers[target])
            for target in self.args.profile:
                if target in servers:
                    probes.profile(self, servers[target])
            if self.args.profile_turn and "product" in servers:
                probes.profile(self, servers["product"], per_turn=True)
            for burst in self.args.profile_burst:
                if "product" in servers:
                    probes.profile(self, servers["product"], burst=burst)
            if self.args.ramp:
                for target in only:
                    print(f"== ramp {TITLES[target]}", file=sys.stderr)
                    results[target]["ramp"] = self.ramp(servers[target])
        finally:
            for target in only:
                self.stop_server(target)
        if self.args.connections:
            for target in only:
                try:
                    results[target]["idle"] = self.idle(target)
                except (RuntimeError, OSError) as exc:
                    print(f"  {TITLES[target]} idle failed: {exc}", file=sys.stderr)
                    continue
                print(
                    f"  {TITLES[target]} idle: {results[target]['idle']['rss_per_conn_kb']}"
                    " KB/conn",
                    file=sys.stderr,
                )
        if self.args.fanout and "product" in only:
            try:
                results["product"]["fanout"] = fan = self.fanout()
                print(f"  product fan-out: {fan['ratio']}x per delivered token", file=sys.stderr)
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                print(f"  fan-out failed: {exc}", file=sys.stderr)
        if self.args.scaling and "product" in only:
            try:
                results["product"]["scaling"] = scaling = self.scaling()
                print(f"  product scaling: {_brief_scaling(scaling)}", file=sys.stderr)
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                print(f"  scaling failed: {exc}", file=sys.stderr)
        for wanted, probe in (
            (self.args.gcprobe, probes.gcprobe),
            (self.args.memprobe, probes.memprobe),
            (self.args.spanprobe, probes.spanprobe),
            (self.args.spanprobe_burst, probes.spanprobe_burst),
        ):
            if wanted and "product" in only:
                try:
                    results["product"][probe.__name__] = probe(self)
                except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                    print(f"  {probe.__name__} failed: {exc}", file=sys.stderr)


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each numeric figure's median over the runs (the runs kept under ``runs``)."""
    if len(runs) == 1:
        return runs[0]
    merged = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            vals = [r[key] for r in runs if r.get(key) is not None]
            merged[key] = statistics.median(vals) if vals else None
    merged["runs"] = runs
    return merged


def _two_over_one(alone: dict[str, Any], a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """What two instances deliver against one, from their CPU per token."""
    cpu, cpu_a, cpu_b = (r["server_cpu_per_1k"] for r in (alone, a, b))
    return cpu / cpu_a + cpu / cpu_b if cpu and cpu_a and cpu_b else None


def _brief_scaling(s: dict[str, Any]) -> str:
    def f(v: float | None) -> str:
        return "-" if v is None else format(v, ".2f")

    return (
        f"{s['streams']} streams each: CPU-s/1k alone {s['alone']['server_cpu_per_1k']:.3f}, "
        f"together {s['a']['server_cpu_per_1k']:.3f} + {s['b']['server_cpu_per_1k']:.3f}; "
        f"tok/s {s['tokens_per_s_alone']:.0f} -> {s['tokens_per_s_together']:.0f}; "
        f"estimate {f(s['estimate'])}x (medians), {f(s['estimate_paired'])}x (paired runs)"
    )


def _brief_burst(r: dict[str, Any]) -> str:
    def f(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    return (
        f"{r['connected']} clients x {r['rounds']} rounds of {r['tokens']} tokens, first p50/p99 "
        f"{f(r['first_ms_p50'], '.1f')}/{f(r['first_ms_p99'], '.1f')} ms, started p50 "
        f"{f(r['started_ms_p50'], '.1f')} ms, CPU {f(r['server_cpu_ms_per_turn'], '.2f')} ms/turn, "
        f"{f(r['turns_per_s'], '.0f')} turns/s, server busy {r['server_busy']:.0%}, load busy "
        f"{r['load_busy']:.0%}, others {r['others_busy']:.0%}, ok {r['turns_ok']}/{r['turns']}, "
        f"errors {r['errors'] or 0}"
    )


def _brief(r: dict[str, Any]) -> str:
    def f(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    return (
        f"{f(r['tokens_per_s'], '.0f')} tok/s, first p50/p99 {f(r['first_ms_p50'], '.1f')}/"
        f"{f(r['first_ms_p99'], '.1f')} ms, gap p99 {f(r['gap_ms_p99'], '.1f')} ms, "
        f"{f(r['server_cpu_per_1k'], '.3f')} CPU-s/1k, load busy {r['load_busy']:.0%}, "
        f"others {r['others_busy']:.0%}, "
        f"errors {r['errors'] or 0}"
    )
