"""The offline rules proposer: deterministic, one parameter at a time on its scale, the strategy table."""

import dataclasses
import math
import random

import pytest

from hydra_llm.explore.proposers.base import ExplorationView, ParamSpec
from hydra_llm.explore.proposers.rules import RulesProposer
from hydra_llm.explore.tree import Node, UCBScore

SPACE = (
    ParamSpec("training.lr", "float", 1e-5, 1e-1, log=True, default=1e-3),
    ParamSpec("training.width", "int", 1, 16, default=4),
    ParamSpec("training.act", "choice", choices=("relu", "tanh", "gelu"), default="relu"),
)
BLOCK = (
    ParamSpec("simulation.regime", "choice", choices=("smooth", "rough"), block_level=True, default="smooth"),
)


def view(
    rows=(),
    first=1,
    block=1,
    is_block_end=False,
    seed=0,
    roles=("exploit", "exploit", "replicate", "replicate"),
):
    return ExplorationView(
        first_iteration=first,
        n_iterations=24,
        block=block,
        iter_in_block=1 if is_block_end else first,
        n_iter_block=12,
        is_block_end=is_block_end,
        n_parallel=len(roles),
        slot_roles=roles,
        ucb_table=tuple(rows),
        last_batch=(),
        search_space=SPACE,
        block_search_space=BLOCK,
        current_simulation={},
        variance_table="",
        memory="",
        protocol="",
        user_input="",
        objective={"metric": "r2", "direction": "maximize", "converged": 0.9, "partial": 0.5},
        sweep_seed=seed,
    )


def row(i, ucb, r2, parent=None, overrides=None, mutation="", moved=None, status="completed"):
    """A UCB row; ``moved``: the node's move from its parent (its ``mutation``)."""
    node = Node(
        id=i,
        parent=parent,
        block=1,
        slot=0,
        strategy="exploit",
        overrides=overrides or {},
        mutation=dict(moved or {}),
        simulation={},
        seeds={},
        job_num=i,
        status=status,
        metrics={"r2": r2} if status == "completed" else {},
        reward=r2 if status == "completed" else 0.0,
        mutation_text=mutation,
    )
    return UCBScore(node, ucb, 1, node.reward)


def test_deterministic_for_a_seed_and_varies_with_it():
    rows = [row(1, 1.5, 0.7, overrides={"training.lr": 0.002}), row(2, 1.2, 0.6)]
    a = RulesProposer().propose(view(rows, first=3, seed=7)).proposals
    b = RulesProposer().propose(view(rows, first=3, seed=7)).proposals
    assert [(p.parent, p.overrides, p.strategy) for p in a] == [
        (p.parent, p.overrides, p.strategy) for p in b
    ]
    others = [RulesProposer().propose(view(rows, first=3, seed=s)).proposals for s in range(8)]
    assert len({str([(p.parent, p.overrides) for p in o]) for o in others}) > 1


def test_start_of_sweep_exploits_root_and_replicates_baseline():
    reply = RulesProposer().propose(view())
    strategies = [p.strategy for p in reply.proposals]
    assert strategies == ["exploit", "exploit", "baseline", "baseline"]
    assert all(p.parent is None for p in reply.proposals)
    assert all(len(p.overrides) == 1 for p in reply.proposals[:2])
    assert reply.proposals[2].overrides == {} and reply.memory.startswith("# Working memory")
    # an empty tree has no gains to cite: the reason says so, not "mean gain +0 over 0 move(s)"
    assert all(p.hypothesis.endswith("from the block root: not tried yet") for p in reply.proposals[:2])


def test_exploit_parents_follow_ucb_rank_and_mutate_one_key():
    rows = [row(5, 2.0, 0.7, overrides={"training.lr": 0.004}), row(3, 1.0, 0.6)]
    reply = RulesProposer().propose(view(rows, first=7))
    exploit = reply.proposals[:2]
    assert [p.parent for p in exploit] == [5, 3]
    assert all(len(p.overrides) == 1 for p in exploit)
    replicate = reply.proposals[2:]
    assert {p.strategy for p in replicate} == {"robustness-test"} and all(
        p.overrides == {} for p in replicate
    )
    assert {p.parent for p in replicate} == {5, 3}


def test_mutation_scales():
    rules, rng = RulesProposer(step_factor=2.0, probe_factor=10.0), random.Random(0)
    lr = rules.mutate_value(SPACE[0], 1e-3, rng)
    assert lr == pytest.approx(2e-3) or lr == pytest.approx(5e-4)
    assert rules.mutate_value(SPACE[0], 1e-3, rng, extreme=True) in (pytest.approx(1e-2), pytest.approx(1e-4))
    assert rules.mutate_value(SPACE[0], 1e-1, rng) == pytest.approx(5e-2)  # clipped side flips direction
    width = rules.mutate_value(SPACE[1], 4, rng)
    assert isinstance(width, int) and abs(width - 4) == 2  # (16-1)/8 rounds to a step of 2
    assert rules.mutate_value(SPACE[2], "relu", rng) in ("tanh", "gelu")


def test_failure_probe_after_three_converged_and_explore_after_window():
    rows = [row(i, 3.0 - 0.1 * i, 0.95, overrides={"training.lr": 1e-3 * i}) for i in range(1, 5)]
    reply = RulesProposer().propose(view(rows, first=5))
    assert reply.proposals[0].strategy == "failure-probe"
    assert reply.proposals[1].strategy == "explore"
    # explore takes the best node outside the last n_iter_block/4 = 3 nodes
    assert reply.proposals[1].parent == 1
    probe = reply.proposals[0]
    ((key, value),) = probe.overrides.items()
    if key == "training.lr":
        old = rows[0].overrides["training.lr"]
        assert math.isclose(value / old, 10) or math.isclose(old / value, 10)


def test_block_end_picks_next_simulation_and_summary():
    rows = [row(1, 1.0, 0.7)]
    reply = RulesProposer().propose(view(rows, first=13, block=2, is_block_end=True))
    assert reply.next_simulation == {"simulation.regime": "rough"}
    assert reply.block_summary is not None and reply.protocol_rules is None


def test_block_summary_covers_the_whole_finished_block():

    finished = (row(3, 1.9, 0.6), row(1, 1.5, 0.93, overrides={"training.lr": 0.002}), row(2, 1.1, 0.4))
    block_end = dataclasses.replace(view((), first=13, block=2, is_block_end=True), finished_block=finished)
    summary = RulesProposer().propose(block_end).block_summary
    assert "Best r2 in block 1: 0.9300 at Node 1 (training.lr=0.002)" in summary
    assert "Converged: Yes" in summary


def test_exploit_never_reproposes_an_existing_config():
    rows = [
        row(1, 2.0, 0.8),
        row(2, 1.5, 0.7, parent=1, overrides={"training.lr": 2e-3}),
        row(3, 1.4, 0.6, parent=1, overrides={"training.lr": 5e-4}),
    ]
    existing = [r.overrides for r in rows]
    for seed in range(20):
        reply = RulesProposer().propose(view(rows, first=4, seed=seed, roles=("exploit", "exploit")))
        for p in reply.proposals:
            parent = next(r for r in rows if r.node_id == p.parent)
            assert {**parent.overrides, **p.overrides} not in existing, (seed, p)


def test_replicates_stay_in_the_slot_whose_fixed_values_they_ran_with():

    h = "training.horizon"
    rows = [
        row(1, 1.9, 0.9, overrides={h: 4}),
        row(2, 1.5, 0.7, overrides={h: 16}),
        row(3, 1.2, 0.5, overrides={h: 32, "training.lr": 0.002}),
    ]
    roles = ("replicate", "replicate", "replicate", "replicate")
    plain = RulesProposer().propose(view(rows, first=4, roles=roles))
    assert [p.parent for p in plain.proposals][:3] == [1, 2, 3]  # best groups first, any slot
    fixed = dataclasses.replace(view(rows, first=4, roles=roles), slot_params={h: (4, 16, 32, 64)})
    reply = RulesProposer().propose(fixed)
    # slot s re-runs the best node that ran with slot s's horizon; slot 3 (64) has none: best overall
    assert [p.parent for p in reply.proposals] == [1, 2, 3, 1]
    assert all(p.overrides == {} for p in reply.proposals)


def moved(i, r2, mutation, parent=None, base=None, status="completed"):
    """A node that moved ``mutation`` from ``parent`` (whose overrides are ``base``)."""
    return row(i, r2, r2, parent, {**(base or {}), **mutation}, moved=mutation, status=status)


ROOT_RUN = moved(1, 0.5, {})  # a run of the root config: the parent of the root's children


def exploit_once(rows, seed=0):
    return (
        RulesProposer().propose(view(rows, first=len(rows) + 1, seed=seed, roles=("exploit",))).proposals[0]
    )


def test_a_gaining_move_is_continued_with_a_longer_step():
    proposal = exploit_once([ROOT_RUN, moved(2, 0.7, {"training.lr": 3e-3})])
    assert proposal.parent == 2 and "continue Node 2's move" in proposal.hypothesis
    assert proposal.overrides == {"training.lr": pytest.approx(3e-3 * 3**1.5, rel=1e-5)}


def test_a_failed_move_is_never_repeated_from_the_same_config():
    for seed in range(6):
        proposal = exploit_once([ROOT_RUN, moved(2, 0.0, {"training.lr": 3e-3}, status="failed")], seed)
        assert proposal.parent == 1 and proposal.overrides != {"training.lr": pytest.approx(3e-3)}


def test_a_gaining_sibling_move_is_combined_with_the_best_node():
    # Node 2 sits at lr's upper bound (no step further); Node 3's width move also gained.
    rows = [ROOT_RUN, moved(2, 0.7, {"training.lr": 1e-1}), moved(3, 0.6, {"training.width": 6})]
    proposal = exploit_once(rows)
    assert proposal.parent == 2 and proposal.overrides == {"training.width": 6}
    assert "combine: Node 3's move" in proposal.hypothesis


def test_half_steps_once_every_full_step_from_the_best_config_lost():
    rows = [
        ROOT_RUN,
        moved(2, 0.40, {"training.lr": 3e-3}),
        moved(3, 0.45, {"training.lr": 1e-3 / 3}),
        moved(4, 0.30, {"training.width": 6}),
        moved(5, 0.30, {"training.width": 2}),
        moved(6, 0.20, {"training.act": "tanh"}),
        moved(7, 0.20, {"training.act": "gelu"}),
    ]
    proposal = exploit_once(rows)
    # the least-bad direction (lr down, -0.05) at half its step: 1e-3 / sqrt(3)
    assert proposal.parent == 1 and "half step" in proposal.hypothesis
    assert proposal.overrides == {"training.lr": pytest.approx(1e-3 / 3**0.5, rel=1e-5)}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"step_factor": 1.0}, r"^rules proposer: step_factor=1.0 must be a finite number > 1$"),
        ({"step_factor": math.nan}, r"^rules proposer: step_factor=nan must be"),
        ({"probe_factor": math.inf}, r"^rules proposer: probe_factor=inf must be"),
        ({"n_steps": 0}, r"^rules proposer: n_steps must be >= 1$"),
    ],
)
def test_bad_rules_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RulesProposer(**kwargs)


def test_the_final_memory_names_the_last_block_that_ran():
    """A sweep of 24 iterations in blocks of 12 ends in block 2; its final view counts block 3 (the one
    its next batch would have started). One of 8 iterations ends inside block 1, and its final view is
    a block end too (block 2), as the engine's final call closes the block the sweep ends in."""
    final = dataclasses.replace(view(first=25, block=3, is_block_end=True, roles=()), n_parallel=0)
    memory = RulesProposer().propose(final).memory
    assert "- Sweep finished after 24 iterations (last block 2)" in memory.splitlines()
    partial = dataclasses.replace(view(first=9, block=2, is_block_end=True, roles=()), n_parallel=0)
    assert "- Sweep finished after 8 iterations (last block 1)" in RulesProposer().propose(partial).memory
