"""UCB scores, rewards, replicate groups and classification against hand-computed values."""

import copy
import math
import random

import pytest

from hydra_llm.explore.tree import Node, Objective, config_hash, descendant_counts, ucb_scores


def node(i, parent, reward, overrides=None, block=1, status="completed"):
    return Node(
        id=i,
        parent=parent,
        block=block,
        slot=0,
        strategy="exploit",
        overrides=overrides if overrides is not None else {"lr": i},
        mutation={},
        simulation={},
        seeds={"training": i},
        job_num=i - 1,
        status=status,
        reward=reward,
    )


# Tree: 1 (root child) -> 2 -> 4 ; 1 -> 3 ; 5 (root child)
TREE = [node(1, None, 0.5), node(2, 1, 0.7), node(3, 1, 0.2), node(4, 2, 0.9), node(5, None, 0.4)]


def test_descendants():
    assert descendant_counts(TREE) == {1: 3, 2: 1, 3: 0, 4: 0, 5: 0}


def test_ucb1_matches_hand_computation():
    scores = {s.node_id: s for s in ucb_scores(TREE, "ucb1", c=1.414)}
    n = 5
    # visits = 1 + descendants
    assert scores[1].visits == 4 and scores[2].visits == 2 and scores[4].visits == 1
    assert scores[1].ucb == pytest.approx(0.5 + 1.414 * math.sqrt(math.log(n) / 5))
    assert scores[2].ucb == pytest.approx(0.7 + 1.414 * math.sqrt(math.log(n) / 3))
    assert scores[4].ucb == pytest.approx(0.9 + 1.414 * math.sqrt(math.log(n) / 2))
    # by hand: 0.9 + 1.414*sqrt(ln 5 / 2) = 0.9 + 1.414*0.8971
    assert scores[4].ucb == pytest.approx(2.1685, abs=1e-3)


def test_puct_matches_hand_computation():
    scores = {s.node_id: s for s in ucb_scores(TREE, "puct", c=1.0)}
    assert scores[1].ucb == pytest.approx(0.5 + math.sqrt(5) / 5)
    assert scores[3].ucb == pytest.approx(0.2 + math.sqrt(5) / 2)
    # the original's committed example: N=1, c=1.0, R2=0.032 -> UCB=0.532 (visits 1)
    single = ucb_scores([node(1, None, 0.032)], "puct", c=1.0)
    assert single[0].ucb == pytest.approx(0.532)


def test_sorted_descending_and_single_node_ucb1():
    scores = ucb_scores(TREE, "ucb1")
    assert [s.ucb for s in scores] == sorted((s.ucb for s in scores), reverse=True)
    # ln(1) = 0: a lone node's UCB is its reward
    assert ucb_scores([node(1, None, 0.3)], "ucb1")[0].ucb == pytest.approx(0.3)


def test_replicates_share_group_mean_and_lcb():
    same = {"lr": 0.1}
    nodes = [node(1, None, 0.8, same), node(2, 1, 0.6, same), node(3, 1, 0.9, {"lr": 0.2})]
    mean = {s.node_id: s.reward for s in ucb_scores(nodes, "ucb1", replicate_reward="mean")}
    assert mean[1] == pytest.approx(0.7) and mean[2] == pytest.approx(0.7) and mean[3] == pytest.approx(0.9)
    lcb = {s.node_id: s.reward for s in ucb_scores(nodes, "ucb1", replicate_reward="lcb", lcb_kappa=1.0)}
    std = math.sqrt(((0.8 - 0.7) ** 2 + (0.6 - 0.7) ** 2) / 1)
    assert lcb[1] == pytest.approx(0.7 - std / math.sqrt(2))
    assert lcb[3] == pytest.approx(0.9)


def test_config_hash_ignores_seeds_and_order():
    assert config_hash({"a": 1, "b": 2}, {}) == config_hash({"b": 2, "a": 1}, {})
    assert config_hash({"a": 1}, {}) != config_hash({"a": 1}, {"sim": "x"})
    a, b = node(1, None, 0.1, {"x": 1}), node(2, None, 0.1, {"x": 1})
    b.seeds = {"training": 999}
    assert a.config_hash == b.config_hash


def test_bad_formula_names_allowed_values():
    with pytest.raises(ValueError, match="ucb.formula.*ucb1, puct"):
        ucb_scores(TREE, "ucb2")
    with pytest.raises(ValueError, match="replicate_reward.*mean, lcb"):
        ucb_scores(TREE, "ucb1", replicate_reward="median")


def test_objective_directions_and_classes():
    up = Objective(metric="r2", converged=0.9, partial=0.5)
    assert up.reward(0.7) == 0.7 and up.classify(0.95) == "converged" and up.classify(0.6) == "partial"
    assert up.classify(0.1) == "failed" and up.classify(math.nan) == "failed" and up.fail_reward == 0.0
    down = Objective(metric="loss", direction="minimize", converged=0.01, partial=0.1, failure_reward=-5)
    assert down.reward(0.2) == -0.2 and down.classify(0.005) == "converged" and down.fail_reward == -5
    target = Objective(metric="slope", direction="target", target=1.0, converged=0.1, partial=0.5)
    assert target.reward(0.7) == pytest.approx(-0.3) and target.classify(1.05) == "converged"
    assert target.classify(0.6) == "partial" and target.classify(3.0) == "failed"
    with pytest.raises(ValueError, match="objective.direction.*maximize, minimize, target"):
        Objective(direction="up")
    with pytest.raises(ValueError, match="objective.target"):
        Objective(direction="target")


def test_objective_bands_override_the_symmetric_thresholds():
    # the homeostasis protocol: converged 0.8 .. 1.2, partial 0.3 .. 0.8 or 1.2 .. 3.0, failed outside
    bands = Objective(
        metric="avg_slope_ratio",
        direction="target",
        target=1.0,
        converged_band=[0.8, 1.2],
        partial_band=[0.3, 3.0],
    )
    values = [0.29, 0.3, 0.79, 0.8, 1.0, 1.2, 1.21, 2.5, 3.0, 3.01, math.nan]
    assert [bands.classify(v) for v in values] == [
        "failed",
        "partial",
        "partial",
        "converged",
        "converged",
        "converged",
        "partial",
        "partial",
        "partial",
        "failed",
        "failed",
    ]
    assert bands.converged_band == (0.8, 1.2) and bands.reward(2.5) == pytest.approx(-1.5)
    assert bands.describe_classes().startswith("converged: 0.8 <= avg_slope_ratio <= 1.2; partial: 0.3")
    # the symmetric form (|v - 1| <= 0.7) would call 2.5 failed and 0.29 partial
    symmetric = Objective(metric="s", direction="target", target=1.0, converged=0.2, partial=0.7)
    assert symmetric.classify(2.5) == "failed" and symmetric.classify(0.3) == "partial"
    # one band alone: the other class keeps its threshold
    only = Objective(metric="r2", converged=0.9, partial=0.5, converged_band=(0.85, 0.95))
    assert [only.classify(v) for v in (0.97, 0.9, 0.6, 0.4)] == ["partial", "converged", "partial", "failed"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"converged_band": [1.2, 0.8]},
            r"objective.converged_band: \[1.2, 0.8\] is not allowed; allowed: finite",
        ),
        (
            {"partial_band": [0.3]},
            r"objective.partial_band: \[0.3\] is not allowed; allowed: null or \[low, high\]",
        ),
        ({"partial_band": ["a", 1]}, "objective.partial_band"),
        (
            {"converged_band": [0.8, 1.2], "partial_band": [0.9, 3.0]},
            r"objective.partial_band: \[0.9, 3.0\] must contain objective.converged_band \[0.8, 1.2\]",
        ),
        ({"target": math.nan}, r"objective.target: nan is not allowed; allowed: a finite number"),
        ({"failure_reward": -math.inf}, r"objective.failure_reward: -inf is not allowed"),
        ({"converged": math.nan}, r"objective.converged: nan is not allowed"),
    ],
)
def test_objective_bad_bands_and_values_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Objective(**{"metric": "s", "direction": "target", "target": 1.0, **kwargs})


def test_tree_layout_depth_and_centring():
    from hydra_llm.explore.tree_plot import layout

    pos = layout(TREE)
    assert {i: pos[i][0] for i in pos} == {1: 1, 2: 2, 3: 2, 4: 3, 5: 1}
    assert pos[1][1] == (pos[2][1] + pos[3][1]) / 2  # a parent sits between its children
    assert len({pos[i][1] for i in (4, 3, 5)}) == 3  # leaves get their own rows


def test_tree_picture_is_written(tmp_path):
    from hydra_llm.explore.tree_plot import plot_tree

    tree = copy.deepcopy(TREE)
    for n, cls in zip(tree, ["partial", "converged", "failed", "converged", "partial"], strict=True):
        n.classification = cls
        n.metrics = {"r2": n.reward}
    path = plot_tree(tree, ucb_scores(tree), tmp_path / "t.png", "UCB tree: block 1", "r2", {"sim.k": 1})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def _run(i, reward, overrides):
    n = node(i, None, reward, overrides=overrides)
    n.metrics = {"score": reward}
    return n


def test_best_config_is_judged_on_its_replicates_not_one_lucky_run():
    from hydra_llm.explore.reports import best_config, optimization_results, pooled_std, render_variance

    a, b, c = {"lr": 1}, {"lr": 2}, {"lr": 3}
    # A ran three times (0.80, 0.84, 0.82), B twice (0.70, 0.74); C once, at 0.85: the highest single run.
    nodes = [
        _run(1, 0.80, a),
        _run(2, 0.84, a),
        _run(3, 0.70, b),
        _run(4, 0.85, c),
        _run(5, 0.82, a),
        _run(6, 0.74, b),
    ]
    # pooled over A (dof 2, var 4e-4) and B (dof 1, var 8e-4): sqrt((2*4e-4 + 8e-4) / 3)
    sigma = math.sqrt((2 * 4e-4 + 8e-4) / 3)
    assert pooled_std(nodes) == pytest.approx(sigma)
    # With this tight spread C's single run still has the higher bound: 0.85 - sigma > 0.82 - sigma/sqrt(3).
    best = best_config(nodes)
    assert [n.id for n in best.runs] == [4] and best.score == pytest.approx(0.85 - sigma)
    # what the console and sweep.log say of it: one run has no spread to give (unknown, not 0)
    assert best.summary("score") == "0.85 (1 run: node 4)"
    single = optimization_results(nodes, Objective(metric="score"), [], "t")["best_config_replicates"]
    assert single["runs"] == 1 and single["std"] is None
    # With a larger run-to-run spread the single run loses its lead.
    noisy = [*nodes, _run(7, 0.90, b), _run(8, 0.60, b)]
    best = best_config(noisy)
    assert [n.id for n in best.runs] == [1, 2, 5] and best.node.id == 2
    assert best.summary("score") == "0.82 +- 0.02 (3 runs: nodes 1, 2, 5)"
    variance = render_variance(noisy, Objective(metric="score"))
    assert "| 0.8200 ± 0.0200 | 2.4% |" in variance and "| 0.8500 (one run) | - |" in variance
    # besides the objective, the spread of the headline metrics of the regime the runs belong to
    for k, n in enumerate(noisy):
        n.metrics.update(rate_constants_R2=k / 10, avg_slope_ratio=1.0, embedding_cluster_acc=0.5)
        n.metrics.update(test_R2=0.9, tau_R2=0.3)  # tau_R2: returned, but not in the metabolism headline
    head = render_variance(noisy, Objective(metric="score")).splitlines()[0]
    assert [c.split(" (")[0] for c in head.split(" | ")[4:-1:2]] == [
        "score",
        "rate_constants_R2",
        "avg_slope_ratio",
        "embedding_cluster_acc",
        "test_R2",
    ]
    failed = node(9, None, -1.0, overrides=a, status="failed")
    one_done = best_config([_run(1, 0.8, a), failed])
    assert one_done.summary("score") == "0.8 (1 of 2 runs completed: nodes 1, 9)"
    assert one_done.summary("loss") == "nan (0 of 2 runs with loss: nodes 1, 9)"  # a metric no run gave
    results = optimization_results(noisy, Objective(metric="score"), [], "t")
    assert results["best_value"] == pytest.approx(0.82) and results["best_run_value"] == pytest.approx(0.84)
    assert results["best_config_replicates"]["nodes"] == [1, 2, 5]
    assert results["best_config_replicates"]["values"] == pytest.approx([0.80, 0.84, 0.82])
    # No replicates at all: the plain highest run.
    assert best_config([_run(1, 0.5, a), _run(2, 0.6, b)]).node.id == 2
    assert best_config([]) is None


def test_the_best_config_so_far_is_the_best_config_of_every_prefix():
    """``best_so_far`` (one pass, as the report and W&B draw it) names, after each node, the config
    that ``best_config`` names among that node and those before it: 300 nodes over 40 configs, some
    failed, handed over out of id order."""
    from hydra_llm.explore.reports import best_config, best_so_far

    rng = random.Random(3)
    nodes = []
    for i in range(1, 301):
        overrides = {"lr": rng.randrange(40)}
        if rng.random() < 0.1:
            nodes.append(node(i, None, -1.0, overrides=overrides, status="failed"))
        else:
            nodes.append(_run(i, round(rng.gauss(0.8, 0.05), 3), overrides))
    rng.shuffle(nodes)
    ordered = sorted(nodes, key=lambda n: n.id)
    got = best_so_far(nodes)
    assert len(got) == 300 and len({b.node.id for b in got if b is not None}) > 5
    for i, best in enumerate(got):
        expected = best_config(ordered[: i + 1])
        assert (best is None) == (expected is None)
        if best is not None:
            assert [n.id for n in best.runs] == [n.id for n in expected.runs] and best.node is expected.node
            assert best.score == expected.score and best.pooled_std == expected.pooled_std
