"""The shipped study configs build a valid engine configuration (slot params, objective classes)."""

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from hydra_llm.explore.engine_config import EngineConfig
from hydra_llm.explore.space import parse_space
from hydra_llm.preflight import metric_names
from hydra_llm.schemas.evaluation import is_metric

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def sweeper_settings(experiment: str, *overrides: str) -> tuple[dict, object]:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=[f"experiment={experiment}", *overrides], return_hydra_config=True
        )
    settings = OmegaConf.to_container(cfg.hydra.sweeper, resolve=False)
    settings.pop("proposer", None)
    return settings, cfg


def test_homeostasis_study_fixes_the_rollout_length_per_slot_with_the_protocol_classes():
    settings, cfg = sweeper_settings("homeostasis_phase2")
    config = EngineConfig.from_settings(settings)
    assert dict(config.slot_params) == {"training.homeostasis_time_step": [4, 16, 32, 64]}
    assert [config.slot_values(s) for s in range(4)] == [
        {"training.homeostasis_time_step": h} for h in (4, 16, 32, 64)
    ]
    space = parse_space(settings["params"], settings["block_params"])
    assert space.spec("training.homeostasis_time_step") is None  # fixed per slot, never explored
    assert OmegaConf.select(cfg, "training.homeostasis_time_step") is not None  # the key exists
    # instructions/homeostasis_phase2.md: converged 0.8 .. 1.2, partial 0.3 .. 0.8 or 1.2 .. 3.0
    objective = config.objective
    classes = [objective.classify(v) for v in (0.1, 0.3, 0.5, 0.8, 1.0, 1.2, 2.0, 3.0, 3.5)]
    assert classes == ["failed"] + ["partial"] * 2 + ["converged"] * 3 + ["partial"] * 2 + ["failed"]


def test_every_study_builds_an_engine_config():
    for path in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        settings, _ = sweeper_settings(path.stem)
        if not str(settings.get("_target_", "")).endswith("LLMUCBSweeper"):
            continue  # a study without an exploration sweep
        config = EngineConfig.from_settings(settings)
        assert config.n_parallel >= 1 and config.objective.metric, path.stem
        for values in config.slot_params.values():
            assert len(values) == config.n_parallel, path.stem


def test_every_study_and_regime_objective_is_a_metric_of_its_runs():
    """The objective a sweep ranks by (the study's, else the regime's exploration node) is one of the
    metrics its runs return, as the llm_ucb sweeper checks before its first batch."""
    studies = [f"experiment={path.stem}" for path in sorted((CONF_DIR / "experiment").glob("*.yaml"))]
    regimes = [f"simulation={path.stem}" for path in sorted((CONF_DIR / "simulation").glob("*.yaml"))]
    for choice in [*studies, *regimes]:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[choice], return_hydra_config=True)
        metric = OmegaConf.select(cfg, "hydra.sweeper.objective.metric") or cfg.exploration.objective.metric
        assert is_metric(metric, metric_names(cfg)), (choice, metric)


def test_a_study_overrides_the_primary_config_defaults():
    """Experiments come after the primary config: their sweep folder and resource hints win."""
    _, quick = sweeper_settings("quick_sweep")
    assert "/quick_sweep/" in str(quick.hydra.sweep.dir)
    _, flyvis = sweeper_settings("flyvis_landscape")
    assert flyvis.resources.mem_gb == 16 and flyvis.resources.timeout_min == 240


def test_the_landscape_studies_explore_their_regime_space_and_the_flyvis_study_extends_it():
    """A study's space is the regime's `exploration` node (interpolated, so a command-line sweep still
    joins it); the flyvis study adds its alternation keys and the regime (natural or synthetic) there."""
    for study, regime_key, study_key in (
        ("signal_landscape", "training.coeff_edge_diff", None),
        ("flyvis_landscape", "training.coeff_f_theta_additivity", "training.n_alternations"),
    ):
        _, cfg = sweeper_settings(study)
        settings = OmegaConf.to_object(cfg.hydra.sweeper)  # as the sweeper reads it
        regime = OmegaConf.to_container(cfg.exploration, resolve=True)
        assert settings.params == regime["params"] and settings.block_params == regime["block_params"]
        assert regime_key in settings.params and (study_key is None or study_key in settings.params)
        assert settings.protocol is None and regime["protocol"] == f"instructions/{study}.md"
    assert {"simulation", "simulation.n_frames"} <= set(settings.block_params)
    space = parse_space(settings.params, settings.block_params)
    assert space.spec("simulation").choices == ("flyvis_natural", "flyvis_synthetic")
    assert space.spec("simulation.stimulus.luminance").choices == ([0.5, 0.5], [0.2, 0.8])


def test_the_flyvis_landscape_can_reach_the_two_stage_schedule_of_flyvis_recovery():
    """Every alternation key where experiment=flyvis_recovery differs from the landscape study's base
    is in the study's space with the recovery study's value among its choices."""
    _, landscape = sweeper_settings("flyvis_landscape")
    _, recovery = sweeper_settings("flyvis_recovery")
    settings = OmegaConf.to_object(landscape.hydra.sweeper)
    space = parse_space(settings.params, settings.block_params)
    keys = [k for k in recovery.training if k.startswith("alternate_") or k == "n_alternations"]
    differing = {k: recovery.training[k] for k in keys if recovery.training[k] != landscape.training[k]}
    assert {"n_alternations", "alternate_vrest_ratio", "alternate_lr_ratio"} <= set(differing)
    for key, value in differing.items():
        spec = space.spec(f"training.{key}")
        assert spec is not None and value in spec.choices, (key, value)
