"""Training strategies a sweep may rewrite: each module holds ``# region: <name>`` ... ``# endregion``
blocks that ``hydra.sweeper.code_edits`` lets the LLM replace (see :mod:`hydra_llm.code_edits`).

Models never import these modules directly: they call :func:`hydra_llm.code_edits.loader.strategy`,
which returns the installed module, or the edited copy of the code version the run was given.
"""
