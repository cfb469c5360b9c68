"""Hydra imports every module under ``hydra_plugins`` when it starts (plugin discovery); this one uses
that moment to register hydra-llm's typed option schemas, so they exist for ``python train.py``, sweep
children and the compose API alike."""

from hydra_llm.schemas.store import register

register()
