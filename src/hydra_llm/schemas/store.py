"""Registers the typed options in Hydra's ConfigStore (called on every Hydra start, see the package)."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from hydra_llm.schemas.evaluation import FlyvisEvaluation, MetabolismEvaluation, SignalEvaluation
from hydra_llm.schemas.models import FlyvisModel, MetabolismModel, SignalModel
from hydra_llm.schemas.simulation import FlyvisSimulation, MetabolismSimulation, SignalSimulation
from hydra_llm.schemas.training import (
    FlyvisTraining,
    MetabolismPhase1Training,
    MetabolismPhase2Training,
    SignalTraining,
)


def register() -> None:
    """``schema_simulation_signal|metabolism|flyvis``, ``model=signal_gnn|flyvis_gnn|metabolism_gnn``,
    ``training=default|flyvis|metabolism_phase1|metabolism_phase2`` and
    ``evaluation=signal|flyvis|metabolism`` as typed configs."""
    cs = ConfigStore.instance()
    # the schemas under the regimes' YAML (their defaults lists name them); no group, so `--help` lists
    # only the groups a user picks from
    cs.store(name="schema_simulation_signal", node=SignalSimulation)
    cs.store(name="schema_simulation_metabolism", node=MetabolismSimulation)
    cs.store(name="schema_simulation_flyvis", node=FlyvisSimulation)
    cs.store(group="model", name="signal_gnn", node=SignalModel)
    cs.store(group="model", name="flyvis_gnn", node=FlyvisModel)
    cs.store(group="model", name="metabolism_gnn", node=MetabolismModel)
    cs.store(group="training", name="default", node=SignalTraining)
    cs.store(group="training", name="flyvis", node=FlyvisTraining)
    cs.store(group="training", name="metabolism_phase1", node=MetabolismPhase1Training)
    # in a Hydra run the phase-1 cache sits with the other cached data
    phase2 = MetabolismPhase2Training(phase1_cache_dir="${paths.cache_dir}")
    cs.store(group="training", name="metabolism_phase2", node=phase2)
    cs.store(group="evaluation", name="signal", node=SignalEvaluation)
    cs.store(group="evaluation", name="flyvis", node=FlyvisEvaluation)
    cs.store(group="evaluation", name="metabolism", node=MetabolismEvaluation)
