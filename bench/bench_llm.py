"""How much the LLM proposer adds to a sweep beyond the endpoint's own latency.

Runs the same 3-batch sweep of ``tests/apps/llm_toy`` (6 iterations, 2 slots) twice per repetition:
with the offline rules proposer (the baseline) and with the LLM proposer against the loopback fake
server answering after ``--latency`` seconds. The overhead per batch is

    (median wall time with LLM - median wall time with rules - server calls x latency) / batches

and includes everything the LLM path adds: prompt building, JSON schema, HTTP round trips through the
openai client, validation, redaction, saving the records. It also prints the client-side latency
of each call minus the server's latency (the HTTP + client share) from ``state.json``.

    .venv/bin/python bench/bench_llm.py [--repeats 3] [--latency 0.3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fake_openai import FakeOpenAIServer, SweepResponder  # noqa: E402

APP = ROOT / "tests" / "apps" / "llm_toy" / "llm_toy_app.py"
PROTOCOL = ROOT / "instructions" / "signal_landscape.md"
N_ITERATIONS, N_PARALLEL = 6, 2
BATCHES = N_ITERATIONS // N_PARALLEL
KEY = "sk-bench-not-a-real-key-000000"


def sweep(sweep_dir: Path, proposer_args: list[str]) -> float:
    """Wall time (s) of one sweep subprocess."""
    env = {**os.environ, "HYDRA_LLM_FAKE_KEY": KEY, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [
        sys.executable,
        str(APP),
        "-m",
        f"hydra.sweep.dir={sweep_dir}",
        f"hydra.sweeper.protocol={PROTOCOL}",
        f"hydra.sweeper.n_iterations={N_ITERATIONS}",
        f"hydra.sweeper.n_parallel={N_PARALLEL}",
        *proposer_args,
    ]
    start = time.perf_counter()
    proc = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"sweep failed:\n{proc.stderr[-3000:]}")
    return elapsed


def llm_args(base_url: str) -> list[str]:
    return [
        "hydra/sweeper/proposer=llm",
        "hydra.sweeper.proposer.model=fake-model",
        f"hydra.sweeper.proposer.base_url={base_url}",
        "hydra.sweeper.proposer.api_key_env=HYDRA_LLM_FAKE_KEY",
    ]


def synthetic_view(tmp: Path):
    """A 4-slot view mid-block: 20 UCB rows, the signal protocol, a 300-line memory, plots on disk."""
    from hydra_llm.explore.proposers.base import ExplorationView, ParamSpec
    from hydra_llm.explore.tree import Node, UCBScore

    space = (
        ParamSpec("training.lr", "float", 1e-4, 1e-1, log=True, default=0.01),
        ParamSpec("training.width", "int", 2, 15, default=4),
    )

    def node(i: int, parent: int | None, slot: int, lr: float, metrics: dict[str, float]) -> Node:
        return Node(
            id=i,
            parent=parent,
            block=2,
            slot=slot,
            strategy="exploit",
            overrides={"training.lr": lr},
            mutation={"training.lr": lr},
            simulation={},
            seeds={"simulation": slot, "training": 1000 * i + slot},
            job_num=i - 1,
            metrics=metrics,
            reward=metrics["score"],
            output_dir=str(tmp),
            mutation_text=f"training.lr: 0.01 -> {lr:g}",
        )

    rows = tuple(
        UCBScore(
            node(i, None if i == 1 else i - 1, 0, 1e-3 * i, {"score": 0.5 + i / 50}),
            2.0 - i / 20,
            21 - i,
            0.5 + i / 50,
        )
        for i in range(1, 21)
    )
    results = tuple(node(17 + s, 16, s, 1e-3 * (17 + s), {"score": 0.8, "test_R2": 0.7}) for s in range(4))
    memory = "".join(f"- observation line {i}: lr 1e-3 works (nodes 3, 7, 9)\n" for i in range(300))
    return ExplorationView(
        first_iteration=21,
        n_iterations=48,
        block=2,
        iter_in_block=9,
        n_iter_block=12,
        is_block_end=False,
        n_parallel=4,
        slot_roles=("exploit", "exploit", "replicate", "replicate"),
        ucb_table=rows,
        last_batch=results,
        search_space=space,
        block_search_space=(),
        current_simulation={},
        variance_table="| Config | Runs |\n|---|---|\n" * 10,
        memory=memory,
        protocol=PROTOCOL.read_text(),
        user_input="",
        objective={"metric": "score", "direction": "maximize"},
        sweep_seed=0,
    )


def in_process(latency: float, repeats: int = 10) -> tuple[float, float]:
    """Median seconds of one ``propose`` beyond the server latency, and of one prompt build."""
    from hydra_llm.explore.proposers.llm import LLMProposer

    os.environ["HYDRA_LLM_FAKE_KEY"] = KEY
    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeOpenAIServer(default=SweepResponder(), latency_s=latency) as server,
    ):
        view = synthetic_view(Path(tmp))
        proposer = LLMProposer(
            model="fake",
            base_url=server.base_url,
            api_key_env="HYDRA_LLM_FAKE_KEY",
            record_dir=Path(tmp) / "llm",
        )
        proposer.propose(view)  # client construction and connection set-up happen once per sweep
        times, builds = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            reply = proposer.propose(view)
            times.append(time.perf_counter() - start - latency)
            assert "fallback" not in reply.extra, reply.extra
            start = time.perf_counter()
            proposer.builder.messages(view)
            builds.append(time.perf_counter() - start)
    return statistics.median(times), statistics.median(builds)


def import_cost(repeats: int = 3) -> float:
    """Median extra seconds to import the LLM proposer (openai client) over the rules proposer."""

    def once(module: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, check=True)
        return time.perf_counter() - start

    llm = [once("hydra_llm.explore.proposers.llm") for _ in range(repeats)]
    rules = [once("hydra_llm.explore.proposers.rules") for _ in range(repeats)]
    return statistics.median(llm) - statistics.median(rules)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.3, help="fake server latency per call (s)")
    args = parser.parse_args()
    rules_times, llm_times, calls, client_extra = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            rules_times.append(sweep(Path(tmp) / f"rules{rep}", ["hydra/sweeper/proposer=rules"]))
            with FakeOpenAIServer(default=SweepResponder(), latency_s=args.latency) as server:
                llm_dir = Path(tmp) / f"llm{rep}"
                llm_times.append(sweep(llm_dir, llm_args(server.base_url)))
                calls.append(len(server.requests))
            state = json.loads((llm_dir / "exploration" / "state.json").read_text())
            for reply in state["replies"]:
                for call in (reply.get("extra") or {}).get("calls", []):
                    client_extra.append(call["latency_s"] - args.latency)
    rules_med, llm_med = statistics.median(rules_times), statistics.median(llm_times)
    n_calls = statistics.median(calls)
    overhead = (llm_med - rules_med - n_calls * args.latency) / BATCHES
    per_call, build = in_process(args.latency)
    import_s = import_cost()
    load = os.getloadavg()
    print(
        f"bench_llm: {BATCHES}-batch sweep ({N_ITERATIONS} iterations, {N_PARALLEL} slots), x{args.repeats}"
    )
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"rules proposer (baseline): median {rules_med:.3f} s  runs {[round(t, 3) for t in rules_times]}")
    print(f"llm proposer:              median {llm_med:.3f} s  runs {[round(t, 3) for t in llm_times]}")
    print(
        f"server calls per sweep: {n_calls:g} at {args.latency:.3f} s each = {n_calls * args.latency:.3f} s"
    )
    print(f"ratio llm/rules wall time: {llm_med / rules_med:.3f}")
    extra_ms = statistics.median(client_extra) * 1000
    print(f"client-side latency beyond the server's, per call: median {extra_ms:.1f} ms")
    print(f"LLM overhead beyond server latency: {overhead:.3f} s per batch (target <= 0.5 s)")
    print(f"  of which the one-off import of the openai client: {import_s:.3f} s per sweep")
    print(f"  without that one-off import: {overhead - import_s / BATCHES:.3f} s per batch")
    print(
        f"in-process propose() beyond server latency (4 slots, 20 UCB rows, 300-line memory): "
        f"median {per_call * 1000:.1f} ms; prompt build {build * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
