"""Sweeper overhead per batch (everything but the children) with a trivial task.

Two measurements, each the median of several batches:

1. engine: the batch loop of ``hydra_llm.explore`` (UCB, rules proposer, validation, state.json and
   every artefact incl. the tree picture) with a launch callable that returns at once. Batches are
   timed at the sweep start (baseline) and once the tree holds ~100 nodes.
2. hydra: a full ``-m hydra/sweeper=llm_ucb`` sweep of the toy test app (basic launcher) run in
   process; per batch, wall time minus the time spent inside the task function. This adds Hydra's own
   per-child work (config composition for validate_batch_is_legal, job folders, .hydra/*.yaml).

Usage: python bench/bench_sweeper.py [--nodes 100] [--repeat 5]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra_llm.explore.children import ChildOutcome  # noqa: E402
from hydra_llm.explore.engine import ExplorationEngine  # noqa: E402
from hydra_llm.explore.engine_config import EngineConfig  # noqa: E402
from hydra_llm.explore.proposers.rules import RulesProposer  # noqa: E402
from hydra_llm.explore.space import parse_space  # noqa: E402
from hydra_llm.explore.tree import Objective  # noqa: E402

PARAMS = {
    "training.lr": "tag(log, interval(1e-5, 1e-1))",
    "training.width": "range(1, 17)",
    "training.act": "choice(relu, tanh)",
}


def trivial_launch(children):
    out = []
    for c in children:
        lr = c.overrides.get("training.lr", 0.01)
        score = 1 - 0.08 * (math.log10(lr) + 3) ** 2
        out.append(ChildOutcome("completed", {"score": score}, output_dir="/x"))
    return out


def bench_engine(nodes: int, repeat: int, n_iter_block: int, plot: bool) -> tuple[float, float]:
    """(median s per batch at the start, median s per batch once ``nodes`` nodes exist)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = EngineConfig(
            n_iterations=nodes + 4 * repeat,
            n_iter_block=n_iter_block,
            objective=Objective(metric="score"),
            tree_plot=plot,
        )
        defaults = {"training.lr": 0.01, "training.width": 4, "training.act": "relu"}
        space = parse_space(PARAMS, {}, [], defaults)
        engine = ExplorationEngine(config, space, RulesProposer(), trivial_launch, tmp)
        start: list[float] = []
        late: list[float] = []
        while engine.state.iteration < config.n_iterations:
            size = engine._batch_size()
            t0 = time.perf_counter()
            engine.run_batch(size)
            elapsed = time.perf_counter() - t0
            if len(start) < repeat:
                start.append(elapsed)
            elif engine.state.iteration > nodes:
                late.append(elapsed)
        return statistics.median(start), statistics.median(late)


def bench_hydra(nodes: int, repeat: int) -> tuple[float, float, float, int]:
    """Median s per batch of a toy-app sweep run in process: sweeper at the start, sweeper at ``nodes``
    nodes (wall minus the launcher call), Hydra's launcher around the tasks at ``nodes`` nodes; batches."""
    from hydra.test_utils.test_utils import SweepTaskFunction

    sys.path.insert(0, str(ROOT / "tests" / "apps" / "toy"))
    import toy_app

    inside: list[float] = []

    def task(cfg):
        t0 = time.perf_counter()
        try:
            return toy_app.run(cfg)
        finally:
            inside.append(time.perf_counter() - t0)

    n_iterations = nodes + 4 * repeat
    with tempfile.TemporaryDirectory() as tmp:
        sweep = SweepTaskFunction()
        sweep.calling_file = str(ROOT / "tests" / "apps" / "toy" / "toy_app.py")
        sweep.calling_module = None
        sweep.task_function = task
        sweep.config_path = "conf"
        sweep.config_name = "config"
        sweep.temp_dir = tmp
        sweep.overrides = [
            "hydra/sweeper=llm_ucb",
            "hydra/sweeper/proposer=rules",
            "hydra.sweeper.objective.metric=score",
            f"hydra.sweeper.n_iterations={n_iterations}",
            "+hydra.sweeper.params={training.lr:'tag(log,interval(1e-5,1e-1))',training.width:'range(1,17)'}",
            "hydra.job.chdir=false",
            "hydra/hydra_logging=disabled",
            "hydra/job_logging=disabled",
        ]
        marks: list[tuple[float, int, float]] = []
        import hydra_plugins.llm_ucb_sweeper._impl as impl

        original = impl.LLMUCBSweeperImpl._launch

        def timed_launch(self, children):
            t0 = time.perf_counter()
            result = original(self, children)
            marks.append((time.perf_counter(), len(inside), time.perf_counter() - t0))
            return result

        impl.LLMUCBSweeperImpl._launch = timed_launch
        t_start = time.perf_counter()
        try:
            with sweep:
                pass
        finally:
            impl.LLMUCBSweeperImpl._launch = original
        sweeper, launcher = [], []
        prev_t, prev_n = t_start, 0
        for t, n, in_launch in marks:
            sweeper.append((t - prev_t) - in_launch)
            launcher.append(in_launch - sum(inside[prev_n:n]))
            prev_t, prev_n = t, n
        # the first batch includes the sweep start-up (config, plugin and proposer loading): skip it
        return (
            statistics.median(sweeper[1 : 1 + repeat]),
            statistics.median(sweeper[-repeat:]),
            statistics.median(launcher[-repeat:]),
            len(sweeper),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"load: {os.getloadavg()}")
    for label, block, plot in (
        ("engine, blocks of 12, tree picture", 12, True),
        ("engine, blocks of 12, no picture", 12, False),
        (f"engine, one block of {args.nodes + 20}, tree picture", args.nodes + 20, True),
    ):
        start, late = bench_engine(args.nodes, args.repeat, block, plot)
        print(
            f"{label:<45} per batch: start {1000 * start:7.1f} ms | at {args.nodes} nodes "
            f"{1000 * late:7.1f} ms | ratio {late / start:5.2f}"
        )
    start, late, launcher, batches = bench_hydra(args.nodes, args.repeat)
    print(
        f"{'hydra toy app, sweeper (outside launch())':<45} per batch: start {1000 * start:7.1f} ms | "
        f"at {args.nodes} nodes {1000 * late:7.1f} ms | ratio {late / start:5.2f} ({batches} batches)"
    )
    print(
        f"{'hydra toy app, basic launcher minus tasks':<45} per batch: at {args.nodes} nodes "
        f"{1000 * launcher:7.1f} ms (Hydra composes and sets up each child; not the sweeper)"
    )


if __name__ == "__main__":
    main()
