"""Code strategies: the LLM rewrites marked regions of training code between blocks.

``regions`` finds and splices ``# region: <name>`` / ``# endregion`` blocks, ``static`` checks an edit
before it runs, ``versions`` keeps every edited version in the sweep folder (and its git history),
``review`` asks the LLM for edits, verdicts and repairs, ``check_run`` is the smoke and blindness run
of a version (in a child process), and ``loader`` makes a run train with the version it was given.
"""
