"""The bench of issue 7: the product against two bare relays, one command.

    /tmp/venv/bin/python bench/run.py            # full: a few minutes per system
    /tmp/venv/bin/python bench/run.py --quick    # scaled down: about a minute per system

A loopback OpenAI-compatible upstream (``upstream.py``) and the load client
(``loadclient.py``) run on core 1; each server under test runs alone on core 0:
the raw-httpx relay (the floor), the openai-SDK relay (``relays.py``), and the product
(``python -m chat_server serve``) with every feature on (Postgres, Redis, auth, flag,
quota, grounding). Scenarios: 1 stream; 50 streams x 50 tok/s (200-token answers); a
ramp of 50 tok/s streams until the inter-token gap p99 passes 50 ms; lockstep bursts
(issue 21: 50 clients asking at the same instant, 200- and 4-token answers: first
token and CPU per turn); memory per idle authenticated connection after one turn
(``--connections``). ``--only ...,litellm`` adds LiteLLM's proxy as a third
reference. Prints one table and the targets; writes every figure as JSON
(``--out``). Ctrl-C stops every child and drops the bench database.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import procs as procs_module  # noqa: E402
from procs import Procs, can_pin  # noqa: E402
from product import Product  # noqa: E402
from report import burst_targets, ramp_lines, table, targets  # noqa: E402
from scenarios import LOAD_CORE, SCENARIOS, SERVER_CORE, TOKENS, Bench  # noqa: E402


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer turns, a shorter ramp, 300 idle")
    p.add_argument(
        "--only",
        default="httpx,sdk,product",
        help="comma list: httpx,sdk,product,litellm (litellm: LiteLLM's proxy behind the "
        "httpx relay, installed on first use into --litellm-venv)",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma list of " + ",".join(SCENARIOS) + " (burst: 50 clients asking in "
        "lockstep, 5 rounds of 200 tokens; burst_short: the same with 4-token answers; "
        "'' for none, e.g. with --fanout alone)",
    )
    p.add_argument("--litellm-venv", default=str(HERE / ".litellm-venv"))
    p.add_argument("--runs", type=int, default=1, help="median of N runs (1 and 50 streams)")
    p.add_argument("--streams", type=int, default=50)
    p.add_argument("--ramp", default=None, help="steps (default 25,50,75,...,200,250); 0: none")
    p.add_argument("--ramp-budget", type=float, default=300.0, help="seconds per system")
    p.add_argument("--connections", type=int, default=None, help="idle connections (0: none)")
    p.add_argument("--deflate", action="store_true", help="clients offer permessage-deflate")
    p.add_argument(
        "--profile",
        nargs="?",
        const="product",
        default="",
        help="py-spy these systems at 50 streams (default: product)",
    )
    p.add_argument(
        "--profile-turn",
        action="store_true",
        help="py-spy the product at 1 stream of 2-token answers: where a turn's own CPU goes",
    )
    p.add_argument(
        "--profile-burst",
        nargs="?",
        const="short,long",
        default="",
        help="py-spy the product under lockstep bursts: short (4-token answers), long "
        "(200 tokens), or both (the default)",
    )
    p.add_argument("--profile-seconds", type=int, default=20)
    p.add_argument("--profile-dir", default="/tmp/chat-bench-profile")
    p.add_argument(
        "--nice",
        type=int,
        default=-10 if os.geteuid() == 0 else 0,
        help="priority of the bench's processes (default -10 as root)",
    )
    p.add_argument("--gcprobe", action="store_true", help="the product's GC pauses vs stalls")
    p.add_argument("--memprobe", action="store_true", help="tracemalloc the product's idle conns")
    p.add_argument("--spanprobe", action="store_true", help="the product's turn spans, 1 stream")
    p.add_argument(
        "--spanprobe-burst",
        action="store_true",
        help="the product's turn spans under lockstep bursts of 4-token answers",
    )
    p.add_argument(
        "--scaling",
        type=int,
        nargs="?",
        const=50,
        default=0,
        help="two product instances, one per core, each at N streams (default 50) vs one",
    )
    p.add_argument(
        "--fanout",
        type=int,
        nargs="?",
        const=20,
        default=0,
        help="N streams on one instance, each also followed from a second one, vs not (#18)",
    )
    p.add_argument(
        "--ai-sdk",
        action="store_true",
        help="the product's /ws/ai-sdk against /ws/chat at --streams streams (CPU per token)",
    )
    p.add_argument(
        "--product-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for the product (repeatable), e.g. DATABASE_POOL_SIZE=30",
    )
    p.add_argument("--no-accounting", action="store_true", help="skip the per-turn accounting")
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--redis-db", type=int, default=13)
    p.add_argument("--out", default="/tmp/chat-bench-results.json")
    args = p.parse_args(argv)
    if args.ramp is None:
        args.ramp = "50,100,150" if args.quick else "25,50,75,100,125,150,175,200,250"
    args.ramp = [int(s) for s in args.ramp.split(",") if int(s) > 0]
    args.profile = [t for t in args.profile.split(",") if t]
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    args.profile_burst = [b for b in args.profile_burst.split(",") if b]
    if set(args.profile_burst) - {"short", "long"}:
        p.error("--profile-burst: short, long or both")
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.connections is None:
        args.connections = 300 if args.quick else 1000
    if any("=" not in kv for kv in args.product_env):
        p.error("--product-env takes KEY=VALUE")
    if args.redis_db in (0, 9):
        p.error("--redis-db 0 and 9 belong to others")
    return args


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.connections + 2000  # per process: the server or the load client
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, max(need, soft))), hard))
    if need > hard:
        print(f"warning: ulimit -n hard limit {hard} < {need}", file=sys.stderr)
    signal.signal(signal.SIGTERM, _interrupt)
    procs_module.NICE = args.nice
    only = [t for t in ("httpx", "sdk", "product", "litellm") if t in args.only.split(",")]
    pin = can_pin()
    if not pin:
        print("warning: no taskset or < 2 cores: nothing is pinned", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    procs = Procs(tmp, pin=pin)
    product = None
    if "product" in only:
        product = Product(
            pg_admin_url=args.pg, redis_host="127.0.0.1", redis_port=6379, redis_db=args.redis_db
        )
        product.extra_env = dict(kv.split("=", 1) for kv in args.product_env)
    results: dict[str, Any] = {"meta": machine() | {"args": vars(args), "pinned": pin}}
    status = 0
    try:
        if product is not None:
            product.create_database()
        bench = Bench(args, procs, product)
        bench.start_upstream()
        bench.measure(only, results)
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        status = 130
    except Exception as exc:  # show what was measured before the failure
        print(f"the bench failed: {exc!r}; logs: {tmp}", file=sys.stderr)
        status = 1
    finally:
        procs.stop_all()
        if product is not None:
            for step in (product.drop_database, product.clean_redis):
                try:
                    step()
                except Exception as exc:  # report, never hide the original error
                    print(f"cleanup failed: {exc!r}", file=sys.stderr)
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    if status == 130:
        return status
    report(results, args, pin)
    print(f"\nevery figure: {args.out}; logs: {tmp}")
    return status


def report(results: dict[str, Any], args: argparse.Namespace, pin: bool) -> None:
    meta = results["meta"]
    print(
        f"\n{meta['date']}; {meta['cores']} cores, {meta['cpu']}; Python {meta['python']}; "
        f"server on core {SERVER_CORE}, load + upstream on core {LOAD_CORE}"
        + ("" if pin else " (NOT pinned)")
        + f"; {args.streams} streams x 50 tok/s, {TOKENS}-token answers; "
        f"{args.connections} idle connections; runs {args.runs}\n"
    )
    print(table(results))
    print("\nRamp (gap p99 per step):")
    print(ramp_lines(results))
    print("\nTargets (issue 7):")
    print(targets(results, args.connections))
    print("\nTargets (issue 21: a turn's own cost, bursts):")
    print(burst_targets(results))
    scen = [r.get(s) or {} for t, r in results.items() if t != "meta" for s in args.scenarios]
    load = max((r.get("load_busy", 0) for r in scen), default=0)
    others = max((r.get("others_busy", 0) for r in scen), default=0)
    if load > 0.85:
        print(f"\nwarning: the load core was {load:.0%} busy: figures may be load-bound")
    if others > 0.25:
        print(
            f"\nwarning: other processes used up to {others:.0%} of a core on the bench's "
            "cores (Postgres and Redis count here too): latency figures are disturbed"
        )


if __name__ == "__main__":
    sys.exit(main())
