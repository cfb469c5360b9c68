"""W&B that compares, read back from the offline run files of a real tiny sweep of train.py: per child
a tagged run with its metrics in the summary and its plots as images; per sweep one job_type=sweep
run (same group) with the node table, the tree picture and the best-so-far curve after every batch."""

from __future__ import annotations

import json

import pytest

from hydra_llm.explore import reports
from hydra_llm.explore.tree import Node
from tests.test_sweeper_train_e2e import tiny_sweep
from tests.wandb_files import offline_runs


def test_wandb_runs_of_a_sweep(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = tiny_sweep(tmp_path, wandb_mode="offline")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "wandb:" not in proc.stdout + proc.stderr  # W&B's lines went to the children's logs
    state = json.loads((sweep_dir / "exploration" / "state.json").read_text())
    nodes = {n["job_num"]: n for n in state["nodes"]}

    children = [r for r in offline_runs(sweep_dir) if r.job_type == "train"]
    assert len(children) == 4 and {r.group for r in children} == {state["sweep_id"]}
    for run in children:
        node = next(n for n in nodes.values() if n["id"] == run.config["sweep_node"]["node"])
        assert run.summary["connectivity_R2"] == node["metrics"]["connectivity_R2"]
        assert "regime:signal_chaotic" in run.tags and "block:1" in run.tags
        assert any(t.startswith("strategy:") for t in run.tags)
        assert run.config["sweep_node"]["strategy"] == node["strategy"]
        images = [v for row in run.history for k, v in row.items() if k.startswith("plots/")]
        assert images and all(v["_type"] == "image-file" for v in images)

    sweep_runs = offline_runs(sweep_dir / "exploration")
    assert len(sweep_runs) == 2, "one segment per batch"
    assert {r.job_type for r in sweep_runs} == {"sweep"} and len({r.run_id for r in sweep_runs}) == 1
    assert {r.group for r in sweep_runs} == {state["sweep_id"]}
    last = sweep_runs[-1]
    tables = [row["nodes_table"] for r in sweep_runs for row in r.history if "nodes_table" in row]
    trees = [row["tree"] for r in sweep_runs for row in r.history if "tree" in row]
    assert len(tables) == 2 and tables[-1]["_type"] == "table-file" and tables[-1]["nrows"] == 4
    assert len(trees) == 2 and trees[-1]["_type"] == "image-file"
    curve = [row["best_so_far"] for r in sweep_runs for row in r.history if "best_so_far" in row]
    # after each node, the replicate mean of the best config so far (it may fall when a replicate does)
    by_id = sorted(state["nodes"], key=lambda n: n["id"])
    expected = [reports.best_config([Node.from_dict(n) for n in by_id[: i + 1]]) for i in range(4)]
    assert curve == [pytest.approx(b.mean("connectivity_R2")) for b in expected]
    assert last.summary["nodes"] == 4
