"""Search space parsing (Hydra grammar) and proposal validation messages."""

import pytest

from hydra_llm.explore.space import (
    SearchSpaceError,
    coerce,
    edge_rounds,
    format_value,
    parse_space,
    parse_value,
    to_override_strings,
)

PARAMS = {
    "training.lr": "tag(log, interval(1e-5, 1e-1))",
    "training.coeff": "interval(0, 1000)",
    "training.width": "range(1, 17)",
    "training.epochs": "tag(int, interval(1, 10))",
    "training.act": "choice(relu, tanh)",
    "training.batch_size": "choice(1, 2, 4)",
}
BLOCK = {"simulation.regime": "choice(smooth, rough)", "simulation.n_frames": "range(1000, 5000, 1000)"}


@pytest.fixture
def space():
    return parse_space(PARAMS, BLOCK, ["experiment=quick"], {"training.lr": 0.01})


def test_parse_kinds(space):
    lr = space.spec("training.lr")
    assert (lr.kind, lr.low, lr.high, lr.log, lr.default) == ("float", 1e-5, 1e-1, True, 0.01)
    width = space.spec("training.width")
    assert (width.kind, width.low, width.high) == ("int", 1, 16)
    assert space.spec("training.epochs").kind == "int"
    assert space.spec("training.act").choices == ("relu", "tanh")
    assert space.spec("simulation.n_frames").choices == (1000, 2000, 3000, 4000)
    assert space.spec("simulation.regime").block_level and not space.spec("training.act").block_level
    assert space.fixed == ("experiment=quick",)


def test_the_edge_values_go_out_in_as_many_rounds_as_the_longest_choice(space):
    """Every choice and each interval's two ends (ints as ints), each key once per value, in four
    configs (the four values of simulation.n_frames) rather than one per value."""
    rounds = edge_rounds([*space.params, *space.block_params])
    assert len(rounds) == 4
    assert rounds[0] == {
        "training.lr": 1e-5,
        "training.coeff": 0.0,
        "training.width": 1,
        "training.epochs": 1,
        "training.act": "relu",
        "training.batch_size": 1,
        "simulation.regime": "smooth",
        "simulation.n_frames": 1000,
    }
    assert rounds[1]["training.width"] == 16 and isinstance(rounds[1]["training.epochs"], int)
    assert rounds[3] == {"simulation.n_frames": 4000}
    seen = {}
    for values in rounds:
        for key, value in values.items():
            seen.setdefault(key, []).append(value)
    assert seen["training.batch_size"] == [1, 2, 4] and seen["training.lr"] == [1e-5, 1e-1]
    assert edge_rounds([]) == []


def test_cli_sweep_arguments_join_params():
    space = parse_space({}, {}, ["training.lr=interval(0.1, 0.2)", "model=small"])
    assert space.spec("training.lr").kind == "float" and space.fixed == ("model=small",)


def test_valid_proposal(space):
    assert space.validate({"training.lr": 3e-3, "training.width": 8, "training.act": "tanh"}, False) == []
    assert space.validate({"training.batch_size": 4, "training.lr": "0.001"}, False) == []
    assert space.validate({"simulation.regime": "rough"}, allow_block=True) == []


@pytest.mark.parametrize(
    ("overrides", "pieces"),
    [
        ({"training.unknown": 1}, ["training.unknown", "not an explorable key", "training.lr"]),
        ({"training.lr": 0.5}, ["training.lr", "out of range", "[1e-05, 0.1]", "log scale"]),
        ({"training.width": 2.5}, ["training.width", "not an integer"]),
        ({"training.width": 40}, ["training.width", "out of range", "int in [1, 16]"]),
        ({"training.act": "gelu"}, ["training.act", "one of relu, tanh"]),
        ({"training.lr": "0.001,0.002"}, ["training.lr", "sweep syntax"]),
        ({"training.lr": "interval(0.001,0.002)"}, ["training.lr", "sweep syntax"]),
        ({"training.lr": "abc"}, ["training.lr", "has type str"]),
        ({"training.seed": 3}, ["training.seed", "seeds are set by the sweeper"]),
        ({"simulation.seed": 3}, ["simulation.seed", "seeds"]),
        ({"paths.cache_dir": "/tmp"}, ["paths.cache_dir", "managed by the sweeper"]),
        ({"data.dataset": "x"}, ["data.dataset", "paths, folders and dataset"]),
        ({"simulation.regime": "rough"}, ["simulation.regime", "only at a block boundary", "training.lr"]),
    ],
)
def test_rejections_name_key_and_allowed(space, overrides, pieces):
    errors = space.validate(overrides, allow_block=False)
    assert len(errors) == 1
    for piece in pieces:
        assert piece in errors[0]


def test_bad_declarations_raise_before_work():
    with pytest.raises(SearchSpaceError, match="training.seed.*seeds"):
        parse_space({"training.seed": "range(1, 5)"}, {})
    with pytest.raises(SearchSpaceError, match="training.lr.*fixed value"):
        parse_space({"training.lr": "0.1"}, {})
    with pytest.raises(SearchSpaceError, match="both params and block_params"):
        parse_space({"a.b": "choice(1,2)"}, {"a.b": "choice(1,2)"})
    with pytest.raises(SearchSpaceError, match="low > 0 for log"):
        parse_space({"a.b": "tag(log, interval(0, 1))"}, {})


@pytest.mark.parametrize(
    "value",
    [0.001, 1e-05, 3, True, False, None, "relu", "two words", "a,b", "it's", [0.2, 0.8], [1, "a b", None]],
)
def test_format_value_round_trips_through_hydra_grammar(value):
    assert parse_value("k", format_value(value)) == value


def test_a_list_valued_choice_is_one_value_and_reaches_the_child_as_a_list():
    """``simulation.stimulus.luminance: choice([0.5,0.5],[0.2,0.8])``: each choice is one list."""
    key = "simulation.stimulus.luminance"
    space = parse_space({}, {key: "choice([0.5,0.5],[0.2,0.8])"}, defaults={key: [0.5, 0.5]})
    spec = space.spec(key)
    assert spec.choices == ([0.5, 0.5], [0.2, 0.8])
    for proposed in ([0.2, 0.8], "[0.2, 0.80]", "[0.2,0.8]"):  # an LLM sends the list as a string
        assert space.validate({key: proposed}, allow_block=True) == []
        assert coerce(spec, parse_value(key, proposed)) is spec.choices[1]
    (error,) = space.validate({key: "[0.3,0.8]"}, allow_block=True)
    assert error == f"{key}: [0.3, 0.8] is not allowed; allowed: one of [0.5,0.5], [0.2,0.8]"
    assert space.validate({key: [0.2, 0.8, 0.5]}, allow_block=True)  # a longer list is another value
    assert to_override_strings({key: spec.choices[1]}) == [f"{key}=[0.2,0.8]"]


def test_the_prompt_lists_each_choice_as_the_exact_value_a_proposal_must_send():
    """A choice with more digits than the prompt's display form (4 significant) is listed in full, so
    that the text an LLM copies from the prompt is accepted."""
    from hydra_llm.explore.proposers.llm_prompt import describe_spec, fmt

    key = "training.coeff_g_phi_zero"
    space = parse_space({key: "choice(0.12345, 1.0, 'two words')"}, {})
    line = describe_spec(space.spec(key))
    assert line == f"- {key}: one of 0.12345, 1.0, 'two words'"
    assert fmt(0.12345) == "0.1235" and space.validate({key: "0.1235"}, False)  # the display form is refused
    for listed in line.split("one of ", 1)[1].split(", "):
        assert space.validate({key: parse_value(key, listed)}, False) == [], listed
