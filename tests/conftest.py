"""Shared test settings: W&B disabled and the data cache in a per-session temp folder."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_environment(tmp_path_factory):
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ["WANDB_SILENT"] = "true"
    os.environ["HYDRA_LLM_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
