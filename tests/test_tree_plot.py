"""The tree picture stays readable: no overlapping or clipped labels, legend off the nodes, capped size."""

import random
import struct

import pytest

from hydra_llm.explore.tree import Node, ucb_scores
from hydra_llm.explore.tree_plot import DPI, FONT_SIZES, MAX_PX, _draw, layout, plot_tree

LONG = (
    "training.learning_rate: 0.001 -> 0.0003; model.hidden_dim: 64 -> 256; "
    "training.batch_size: 32 -> 128 (the optimiser diverged on the previous setting)"
)


def make_node(i, parent, rng):
    crashed = i % 9 == 4
    value = round(rng.uniform(-0.2, 1.0), 4)
    cls = "failed" if crashed or value < 0.5 else "partial" if value < 0.9 else "converged"
    return Node(
        id=i,
        parent=parent,
        block=1,
        slot=i % 4,
        strategy="exploit",
        overrides={"lr": i},
        mutation={"lr": i},
        simulation={"sim.n_neurons": 1000},
        seeds={"training": i},
        job_num=i - 1,
        status="failed" if crashed else "completed",
        metrics={} if crashed else {"connectivity_R2": value},
        reward=0.0 if crashed else value,
        classification=cls,
        mutation_text=LONG if i % 3 else f"training.lr: {i / 1000} -> {i / 500}",
    )


def random_tree(n, seed=13):
    """``n`` nodes, each parent with 1-4 children, deep (the newest nodes are preferred as parents)."""
    rng = random.Random(seed)
    nodes = [make_node(1, None, rng)]
    children = {1: 0}
    for i in range(2, n + 1):
        if i % 17 == 0:
            parent = None  # another child of the block root
        else:
            open_ = [n.id for n in nodes if children[n.id] < 4]
            parent = max(open_) if rng.random() < 0.6 else rng.choice(open_)
        nodes.append(make_node(i, parent, rng))
        children[i] = 0
        if parent is not None:
            children[parent] += 1
    return nodes


def extent(artist, renderer):
    box = artist.get_window_extent(renderer)
    return (box.x0, box.y0, box.x1, box.y1)


def intersects(a, b, tol=0.5):
    return min(a[2], b[2]) - max(a[0], b[0]) > tol and min(a[3], b[3]) - max(a[1], b[1]) > tol


def marker_extents(fig, renderer):
    """Display-space boxes of every node marker (scatter collections of the drawing area)."""
    from matplotlib.collections import PathCollection

    boxes = []
    for ax in fig.axes:
        for coll in ax.collections:
            if not isinstance(coll, PathCollection):
                continue
            sizes = coll.get_sizes()
            for k, (x, y) in enumerate(ax.transData.transform(coll.get_offsets())):
                r = (sizes[k % len(sizes)] ** 0.5) / 2 * fig.dpi / 72
                boxes.append((x - r, y - r, x + r, y + r))
    return boxes


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


TREES = {
    "one": random_tree(1),
    "two": random_tree(2),
    "two_roots": [make_node(1, None, random.Random(1)), make_node(2, None, random.Random(2))],
    "fifty": random_tree(50),
    # breadth-first, four children each: 50 nodes, ~37 leaves
    "fifty_wide": [
        make_node(i, None if i == 1 else (i - 2) // 4 + 1, random.Random(i)) for i in range(1, 51)
    ],
}


def test_fifty_node_tree_is_deep_and_bushy():
    pos = layout(TREES["fifty"])
    depth = max(x for x, _ in pos.values())
    leaves = max(y for _, y in pos.values()) + 1
    assert 10 <= depth <= 20 and leaves >= 10
    kids = {}
    for n in TREES["fifty"]:
        kids[n.parent] = kids.get(n.parent, 0) + 1
    assert max(v for k, v in kids.items() if k is not None) == 4


@pytest.mark.parametrize("name", list(TREES))
def test_labels_do_not_overlap_or_clip_and_legend_is_off_the_nodes(name, tmp_path):
    from matplotlib.text import Text

    nodes = TREES[name]
    title = "UCB tree: block 1, iterations 1-50 (a_rather_long_experiment_name_for_the_flyvis_regime)"
    sim = {"simulation.n_neurons": 1000, "simulation.noise_model_level": 0.05, "simulation.seed": 3}
    fig = _draw(nodes, ucb_scores(nodes), title, "connectivity_R2", sim)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    node_labels = [t for t in texts if t.get_text().startswith("#")]
    assert len(node_labels) == len(nodes)
    boxes = [(t.get_text(), extent(t, renderer)) for t in texts]
    for i, (a_text, a) in enumerate(boxes):
        for b_text, b in boxes[i + 1 :]:
            assert not intersects(a, b), f"{a_text!r} overlaps {b_text!r}"
    width, height = fig.bbox.width, fig.bbox.height
    for text, (x0, y0, x1, y1) in boxes:
        assert x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height, f"{text!r} is clipped"
    # every mutation line is short, the full text lives in the HTML report
    assert all(len(t.get_text().replace("\n", "")) <= 28 for t in texts if "→" in t.get_text())
    # a 50-node tree keeps full labels at a readable size and resolution
    assert fig.dpi == DPI and min(t.get_fontsize() for t in node_labels) >= FONT_SIZES[-1]
    # crashed runs are marked
    if any(n.status == "failed" for n in nodes):
        assert any("run failed" in t.get_text() for t in node_labels)
    (legend,) = fig.legends
    legend_box = extent(legend, renderer)
    assert legend_box[0] >= 0 and legend_box[1] >= 0 and legend_box[2] <= width and legend_box[3] <= height
    markers = marker_extents(fig, renderer)
    assert len(markers) == len(nodes) + 1  # + the block root
    assert not any(intersects(legend_box, m, tol=0.0) for m in markers)
    assert not any(intersects(extent(t, renderer), m) for t in texts for m in markers)

    path = plot_tree(nodes, ucb_scores(nodes), tmp_path / "tree" / "t.png", title, "connectivity_R2", sim)
    w_px, h_px = png_size(path)
    assert (w_px, h_px) == (int(width), int(height))
    assert w_px <= MAX_PX and h_px <= MAX_PX


def test_picture_is_deterministic(tmp_path):
    nodes = TREES["fifty"]
    paths = [
        plot_tree(nodes, ucb_scores(nodes), tmp_path / f"{k}.png", "block 1", "r2", {}) for k in range(2)
    ]
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_huge_tree_stays_within_the_cap(tmp_path):
    rng = random.Random(3)
    chain = [make_node(1, None, rng)] + [make_node(i, i - 1, rng) for i in range(2, 61)]
    path = plot_tree(chain, ucb_scores(chain), tmp_path / "chain.png", "a 60-deep chain", "r2", {})
    w_px, h_px = png_size(path)
    assert w_px <= MAX_PX and h_px <= MAX_PX
