"""The tree picture of one block: x = depth, y = leaf order (parents centred over their children).

Nodes are coloured by reward class (converged green, partial orange, failed red, as classified by the
objective's thresholds); a crashed run is a red cross with a red "run failed" label. Each node carries
a short label: above its branch ``#id metric=value UCB=score``, below it the change against its parent
(clipped to ``MUTATION_CHARS``; the full text lives in ``report.html``), either one line each (wide)
or two lines each (narrow: half the column width, for deep trees). Edges are elbows whose vertical
trunks run in the gap between two depth columns, so no edge crosses a label.

The figure is sized from the layout (width from the depth, height from the number of leaves) with
text measured by matplotlib's own renderer, so labels never overlap or leave the figure: the label
font shrinks down to a readable minimum to keep the PNG within ``MAX_PX`` a side, the label style
that stays most legible once a viewer shrinks the picture to ``VIEW_PX`` wins, labels drop the
mutation text only if nothing else fits, and only as a last resort the resolution drops. Title,
legend and label key sit outside the drawing area (above and below it). Deterministic; matplotlib
(Agg, no pyplot) is imported only when a picture is drawn.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra_llm.explore.tree import Node, UCBScore

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLOURS = {"converged": "#2ca02c", "partial": "#ff7f0e", "failed": "#d62728"}
UNCLASSIFIED = "#9e9e9e"
ROOT_COLOUR = "#555555"
EDGE_COLOUR = "#777777"
DPI = 150
MAX_PX = 4000  # pixel cap of each side of the PNG
FONT_SIZES = (8.0, 7.5, 7.0, 6.5, 6.0, 5.5)  # label font (pt), largest first; 5.5 pt at 150 dpi ~ 11 px
MUTATION_CHARS = 28
NARROW_CHARS = 16  # narrow labels: the mutation text in two lines of at most this many characters
STYLES = ("wide", "narrow")  # node labels: one line above and below the branch, or two each
VIEW_PX = 1568  # long side a viewer shrinks the picture to (an LLM's image input, a page's width)
METRIC_CHARS = 10  # a longer metric name is shown as "m" in the labels and named in the key
MIN_WIDTH_PT = 360.0  # 5 in: room for the title and the legend of a one-node tree
MARGIN_PT = 12.0

_Measure = Callable[..., tuple[float, float]]  # (text, font[, weight]) -> (width, height) in points
_LabelMeasure = Callable[[str, bool, float], tuple[float, float, float, float, float]]


def layout(nodes: Sequence[Node]) -> dict[int, tuple[float, float]]:
    """(depth, y) per node id; roots are nodes whose parent is not in ``nodes``."""
    ids = {n.id for n in nodes}
    children: dict[int | None, list[int]] = {}
    for node in sorted(nodes, key=lambda n: n.id):
        parent = node.parent if node.parent in ids else None
        children.setdefault(parent, []).append(node.id)
    positions: dict[int, tuple[float, float]] = {}
    next_leaf = [0.0]

    def place(node_id: int, depth: int) -> float:
        kids = children.get(node_id, [])
        if not kids:
            y = next_leaf[0]
            next_leaf[0] += 1.0
        else:
            ys = [place(kid, depth + 1) for kid in kids]
            y = (min(ys) + max(ys)) / 2
        positions[node_id] = (float(depth), y)
        return y

    for root in children.get(None, []):
        place(root, 1)
    return positions


def plot_tree(
    nodes: Sequence[Node],
    scores: Sequence[UCBScore],
    path: Path,
    title: str,
    metric: str,
    simulation: Mapping[str, Any],
) -> Path:
    """Draw the block's tree to ``path`` (PNG) and return it."""
    fig = _draw(nodes, scores, title, metric, simulation)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi, facecolor="white")
    return path


# --- labels -------------------------------------------------------------------------------------


def _num(value: float) -> str:
    if not math.isfinite(value):
        return str(value)  # nan, inf, -inf
    magnitude = abs(value)
    if value == 0 or 1e-3 <= magnitude < 1e3:
        return f"{value:.3f}"
    return f"{value:.4g}" if magnitude >= 1e3 else f"{value:.2e}"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


_DOTTED_KEY = re.compile(r"(?<![\w.])[A-Za-z_][\w-]*(?:\.[\w-]+)+(?=:)")


def _mutation(node: Node) -> str:
    """The change against the parent, short: dotted keys by their last part, ``a -> b`` as ``a→b``."""
    text = node.mutation_text or ("root config" if node.parent is None else "replicate (same config)")
    text = _DOTTED_KEY.sub(lambda m: m.group(0).rsplit(".", 1)[1], text)
    text = " ".join(text.replace(" -> ", "→").split())
    return _clip(text, MUTATION_CHARS)


def _metric_tag(metric: str) -> str:
    return metric if len(metric) <= METRIC_CHARS else "m"


def _labels(node: Node, score: UCBScore | None, tag: str, metric: str, style: str) -> tuple[str, str]:
    """(above the branch, below it) for one node. ``wide``: one line each; ``narrow``: two lines each."""
    ucb = f"UCB={_num(score.ucb) if score is not None else '-'}"
    if _crashed(node):
        result = "run failed"
    else:
        value = node.metrics.get(metric)
        result = f"{tag}={_num(float(value)) if value is not None else 'n/a'}"
    mutation = _mutation(node)
    if style == "wide":
        return f"#{node.id}  {result}  {ucb}", mutation
    lines = textwrap.wrap(mutation, NARROW_CHARS, break_on_hyphens=False, max_lines=2, placeholder="…") or [
        mutation
    ]
    return f"#{node.id}  {result}\n{ucb}", "\n".join(lines)


def _crashed(node: Node) -> bool:
    return node.status != "completed"


def _colour(node: Node) -> str:
    if _crashed(node):
        return COLOURS["failed"]
    return COLOURS.get(node.classification, UNCLASSIFIED)


# --- geometry -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tree:
    """The drawing area in points: one depth unit is ``col`` wide, one leaf row ``row`` high."""

    style: str  # "wide" or "narrow" labels
    compact: bool  # labels without the mutation part
    font: float
    marker: float  # marker diameter
    pad: float  # marker edge to label
    col: float
    row: float
    shift: float  # the root column is narrower: depth d >= 1 is drawn at x = d - shift
    x0: float
    x1: float
    y_top: float  # data limits (y grows downwards)
    y_bottom: float

    def x(self, depth: float) -> float:
        return depth - self.shift if depth > 0 else 0.0

    @property
    def width(self) -> float:
        return (self.x1 - self.x0) * self.col

    @property
    def height(self) -> float:
        return (self.y_bottom - self.y_top) * self.row


def _tree_geometry(
    style: str, compact: bool, font: float, depth: float, rows: float, label: _LabelMeasure
) -> _Tree:
    marker = 1.7 * font
    pad = 0.45 * font
    off = 0.2 * font  # label distance from the branch line
    label_w, top_h, bottom_h, header_h, root_w = label(style, compact, font)
    up = max(top_h + off, marker / 2)
    down = max(bottom_h + off, marker / 2)
    col = marker + pad + label_w + 1.5 * font
    row = up + down + 0.6 * font
    shift = 1 - min(col, marker + pad + root_w + 3.0 * font) / col
    last = depth - shift if depth > 0 else 0.0
    last_w = label_w if depth > 0 else root_w
    return _Tree(
        style=style,
        compact=compact,
        font=font,
        marker=marker,
        pad=pad,
        col=col,
        row=row,
        shift=shift,
        x0=-(marker / 2 + 0.3 * font) / col,
        x1=last + (marker / 2 + pad + last_w + 0.3 * font) / col,
        y_top=-(up + 0.5 * font + header_h + 0.2 * font) / row,
        y_bottom=rows - 1 + (down + 0.3 * font) / row,
    )


def _wrap(
    text: str, font: float, width: float, size: _Measure, max_lines: int, weight: str = "normal"
) -> str:
    """``text`` broken at spaces into lines no wider than ``width`` points (at most ``max_lines``).

    Words are measured once at the base font and scaled (cheap), each final line exactly.
    """
    scale = font / FONT_SIZES[0]

    def estimate(word: str) -> float:
        return size(word, FONT_SIZES[0], weight)[0] * scale

    space = estimate("a b") - estimate("ab")
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current, current_w = "", 0.0
        for word in paragraph.split(" "):
            word_w = estimate(word)
            if current and (current_w + space + word_w) * 1.03 > width:
                lines.append(current)
                current, current_w = word, word_w
            elif current:
                current, current_w = f"{current} {word}", current_w + space + word_w
            else:
                current, current_w = word, word_w
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] += " …"
    fitted = []
    for line in lines:
        while len(line) > 1 and size(line, font, weight)[0] > width:
            line = line[: max(1, int(len(line) * 0.97) - 1)].rstrip() + "…"
        fitted.append(line)
    return "\n".join(fitted)


# --- drawing ------------------------------------------------------------------------------------


def _draw(
    nodes: Sequence[Node],
    scores: Sequence[UCBScore],
    title: str,
    metric: str,
    simulation: Mapping[str, Any],
) -> Figure:
    """The tree picture as a matplotlib Figure on an Agg canvas (not saved; no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(6.0, 4.0), dpi=DPI)
    FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()
    cache: dict[tuple[str, float, str], tuple[float, float]] = {}

    def size(text: str, font: float, weight: str = "normal") -> tuple[float, float]:
        """Width and height in points of ``text`` drawn at ``font``."""
        if not text:
            return 0.0, 0.0
        if (text, font, weight) not in cache:
            probe = fig.text(0, 0, text, fontsize=font, fontweight=weight, parse_math=False)
            box = probe.get_window_extent(renderer)
            probe.remove()
            cache[text, font, weight] = (box.width * 72 / DPI, box.height * 72 / DPI)
        return cache[text, font, weight]

    by_score = {s.node_id: s for s in scores}
    tag = _metric_tag(metric)
    labels = {
        style: {n.id: _labels(n, by_score.get(n.id), tag, metric, style) for n in nodes} for style in STYLES
    }
    positions = layout(nodes)
    depth = max((x for x, _ in positions.values()), default=0.0)
    rows = max((y for _, y in positions.values()), default=0.0) + 1
    unclassified_any = any(not _crashed(n) and n.classification not in COLOURS for n in nodes)
    sim = ", ".join(f"{k}={v}" for k, v in simulation.items()) or "root simulation config"
    key = (
        f"node label: #iteration  {tag}=value  UCB=score"
        + (f"  ({tag} = {metric})" if tag != metric else "")
        + f"; below the branch: change vs parent (clipped to {MUTATION_CHARS} characters;"
        " full text in report.html)"
    )

    # What sizes the label columns and rows: the widest lines (exact at every font; the few that are
    # widest at the base font) and one line holding every glyph (as tall as the tallest line).
    def widest(texts: set[str]) -> list[str]:
        ranked = sorted(texts, key=lambda t: (-size(t, FONT_SIZES[0])[0], t))
        return [
            t for t in ranked[:8] if size(t, FONT_SIZES[0])[0] >= 0.95 * size(ranked[0], FONT_SIZES[0])[0]
        ]

    measures = {}
    for style, by_id in labels.items():
        parts = []
        for k in (0, 1):
            lines = {line for pair in by_id.values() for line in pair[k].split("\n")} | (
                {"root"} if k == 0 else set()
            )
            n_lines = max((pair[k].count("\n") + 1 for pair in by_id.values()), default=1)
            tall = "".join(sorted(set("".join(lines))))
            parts.append((widest(lines), "\n".join([tall] * n_lines)))
        measures[style] = parts

    def label_measure(style: str, compact: bool, font: float) -> tuple[float, float, float, float, float]:
        """Widest label line, heights above and below the branch, header height, root label width (pt)."""
        (top_wide, top_tall), (bottom_wide, bottom_tall) = measures[style]
        lines = top_wide + ([] if compact else bottom_wide)
        width = max(size(t, font)[0] for t in lines)
        bottom_h = 0.0 if compact else size(bottom_tall, font)[1]
        return width, size(top_tall, font)[1], bottom_h, size("depth 1", font)[1], size("root", font)[0]

    def handles(tree: _Tree) -> list[Line2D]:
        ms = tree.marker * 0.8

        def entry(marker: str, colour: str, label: str) -> Line2D:
            return Line2D(
                [], [], ls="", marker=marker, markersize=ms, color=colour, mec="black", mew=0.5, label=label
            )

        out = [
            entry("s", ROOT_COLOUR, "root (block's base config)"),
            entry("o", COLOURS["converged"], "converged"),
            entry("o", COLOURS["partial"], "partial"),
            entry("o", COLOURS["failed"], "failed (metric worse than partial, or NaN)"),
            entry("X", COLOURS["failed"], "run crashed (no metric)"),
        ]
        if unclassified_any:
            out.append(entry("o", UNCLASSIFIED, "not classified"))
        return out

    def legend_size(tree: _Tree, ncol: int) -> tuple[float, float]:
        legend = fig.legend(handles=handles(tree), ncol=ncol, fontsize=tree.font, loc="upper left")
        box = legend.get_window_extent(renderer)
        legend.remove()
        return box.width * 72 / DPI, box.height * 72 / DPI

    def compose(tree: _Tree) -> dict[str, Any]:
        """Figure layout in points for one tree geometry."""
        base_w = max(tree.width, MIN_WIDTH_PT)
        n_entries = len(handles(tree))
        ncol, legend_w, legend_h = 1, 0.0, 0.0
        for k in range(n_entries, 0, -1):
            legend_w, legend_h = legend_size(tree, k)
            if legend_w <= base_w:
                ncol = k
                break
        content_w = max(base_w, legend_w)
        title_font = tree.font + 1.5
        title_text = _wrap(title, title_font, content_w, size, 3, "bold")
        regime_text = _wrap(f"regime: {sim}", tree.font, content_w, size, 3)
        key_text = _wrap(key, tree.font, content_w, size, 3)
        gap = 0.9 * tree.font
        title_h = size(title_text, title_font, "bold")[1]
        regime_h = size(regime_text, tree.font)[1]
        key_h = size(key_text, tree.font)[1]
        height = 2 * MARGIN_PT + title_h + 0.3 * gap + regime_h + gap + tree.height + gap + legend_h
        height += 0.5 * gap + key_h
        return {
            "width": content_w + 2 * MARGIN_PT,
            "height": height,
            "ncol": ncol,
            "legend_h": legend_h,
            "title": (title_text, title_font, title_h),
            "regime": (regime_text, regime_h),
            "key": (key_text, key_h),
            "gap": gap,
        }

    def side_px(plan: dict[str, Any]) -> float:
        return max(plan["width"], plan["height"]) * DPI / 72

    def search(style: str, compact: bool) -> tuple[_Tree, dict[str, Any]] | None:
        """The largest label font at which the picture fits ``MAX_PX`` (None if none does)."""
        largest = FONT_SIZES[0]  # everything but the fixed margins scales with the font: skip hopeless sizes
        for font in FONT_SIZES:
            if font > largest:
                continue
            tree = _tree_geometry(style, compact, font, depth, rows, label_measure)
            plan = compose(tree)
            if side_px(plan) <= MAX_PX:
                return tree, plan
            largest = min(largest, font * MAX_PX / side_px(plan))
        return None

    def legibility(found: tuple[_Tree, dict[str, Any]]) -> float:
        """Label size once the picture is shrunk to a viewer's ``VIEW_PX`` (an LLM's image, a page)."""
        return round(found[0].font * min(1.0, VIEW_PX / side_px(found[1])), 3)

    found: list[tuple[_Tree, dict[str, Any]]] = []
    for compact in (False, True):  # without the mutation text only if nothing else fits
        found = found or [f for f in (search("wide", compact), search("narrow", compact)) if f is not None]
    if found:  # the more legible picture; on a tie the wide labels (fewer lines)
        tree, plan = max(found, key=legibility)
    else:  # too large even at the smallest font without mutation texts: the resolution drops
        smallest = [
            _tree_geometry(style, True, FONT_SIZES[-1], depth, rows, label_measure) for style in STYLES
        ]
        tree, plan = min(((t, compose(t)) for t in smallest), key=lambda f: side_px(f[1]))
    width, height = plan["width"], plan["height"]
    dpi = min(float(DPI), (MAX_PX - 0.5) * 72 / max(width, height))
    # Whole pixels (Agg truncates the canvas size): the spare fraction goes to the right and bottom margins.
    w_px, h_px = math.ceil(width * dpi / 72), math.ceil(height * dpi / 72)
    width, height = (w_px + 0.25) * 72 / dpi, (h_px + 0.25) * 72 / dpi
    fig.set_size_inches(width / 72, height / 72)
    fig.set_dpi(dpi)
    font, gap = tree.font, plan["gap"]

    # Title and regime on top, left-aligned.
    title_text, title_font, title_h = plan["title"]
    regime_text, regime_h = plan["regime"]
    top = height - MARGIN_PT
    fig.text(
        MARGIN_PT / width,
        top / height,
        title_text,
        ha="left",
        va="top",
        fontsize=title_font,
        fontweight="bold",
        parse_math=False,
    )
    top -= title_h + 0.3 * gap
    fig.text(
        MARGIN_PT / width, top / height, regime_text, ha="left", va="top", fontsize=font, parse_math=False
    )
    top -= regime_h + gap

    # The drawing area: elbow edges, depth headers, markers, labels.
    ax = fig.add_axes(
        (MARGIN_PT / width, (top - tree.height) / height, tree.width / width, tree.height / height)
    )
    ax.set_xlim(tree.x0, tree.x1)
    ax.set_ylim(tree.y_bottom, tree.y_top)  # inverted: the first leaf on top
    ax.set_axis_off()
    first = [positions[n.id][1] for n in nodes if positions[n.id][0] == 1.0]
    root_y = (min(first) + max(first)) / 2 if first else 0.0
    trunk = (tree.marker / 2 + 0.5 * font) / tree.col  # just left of the child's column
    segments = []
    for node in nodes:
        x, y = positions[node.id]
        px, py = positions.get(node.parent, (0.0, root_y)) if node.parent is not None else (0.0, root_y)
        px, x = tree.x(px), tree.x(x)
        segments.append([(px, py), (x - trunk, py), (x - trunk, y), (x, y)])
    ax.add_collection(LineCollection(segments, colors=EDGE_COLOUR, linewidths=0.9, zorder=1))
    header_y = tree.y_top + 0.2 * font / tree.row
    for d in range(1, int(depth) + 1):
        ax.text(
            tree.x(d) - tree.marker / 2 / tree.col,
            header_y,
            f"depth {d}",
            ha="left",
            va="top",
            fontsize=font,
            color="#555555",
            fontstyle="italic",
        )
    ax.scatter(
        [0.0], [root_y], s=tree.marker**2, marker="s", c=ROOT_COLOUR, edgecolors="black", linewidths=0.5
    )
    for crashed, marker, scale in ((False, "o", 1.0), (True, "X", 1.25)):
        group = [n for n in nodes if _crashed(n) == crashed]
        if group:
            ax.scatter(
                [tree.x(positions[n.id][0]) for n in group],
                [positions[n.id][1] for n in group],
                s=(tree.marker * scale) ** 2,
                marker=marker,
                c=[_colour(n) for n in group],
                edgecolors="black",
                linewidths=0.6 if crashed else 0.5,
                zorder=2,
            )
    off = 0.2 * font
    dx = tree.marker / 2 + tree.pad
    text_style = {"textcoords": "offset points", "ha": "left", "fontsize": font, "parse_math": False}
    ax.annotate("root", (0.0, root_y), xytext=(dx, off), va="bottom", color="#333333", **text_style)
    for node in nodes:
        above, below = labels[tree.style][node.id]
        xy = (tree.x(positions[node.id][0]), positions[node.id][1])
        colour = "#a01010" if _crashed(node) else "black"
        ax.annotate(above, xy, xytext=(dx, off), va="bottom", color=colour, **text_style)
        if not tree.compact:
            ax.annotate(below, xy, xytext=(dx, -off), va="top", color="#444444", **text_style)

    # Legend and key below the drawing area.
    legend_top = top - tree.height - gap
    fig.legend(
        handles=handles(tree),
        ncol=plan["ncol"],
        fontsize=font,
        loc="upper left",
        bbox_to_anchor=(MARGIN_PT / width, legend_top / height),
        borderaxespad=0.0,
    )
    key_text, _ = plan["key"]
    key_top = legend_top - plan["legend_h"] - 0.5 * gap
    fig.text(
        MARGIN_PT / width,
        key_top / height,
        key_text,
        ha="left",
        va="top",
        fontsize=font,
        color="#333333",
        parse_math=False,
    )
    return fig
