"""Experiments at scale: the seed papers' experiments as presets, sweeps, plots and reports.

- :mod:`~plasticity_rl.experiments.spec`: experiment presets (``experiments/*.yaml``) expanded
  into trials at a scale (``small`` or ``paper``);
- :mod:`~plasticity_rl.experiments.runner`: planning (skip / resume / restart) and running the
  trials locally or on Ray (``scripts/sweep.py``);
- :mod:`~plasticity_rl.experiments.results`: reading runs, grouping seeds, aligning curves,
  bootstrap summaries and the markdown table;
- :mod:`~plasticity_rl.experiments.plots` and :mod:`~plasticity_rl.experiments.report`: the
  figures and the report of ``scripts/plot.py``;
- :mod:`~plasticity_rl.experiments.pruning`: accuracy after magnitude pruning of a finished run.
"""

from plasticity_rl.experiments.spec import (
    Experiment,
    Trial,
    experiment_names,
    load_experiment,
    resolve_trial,
    write_agent_preset,
)

__all__ = [
    "Experiment",
    "Trial",
    "experiment_names",
    "load_experiment",
    "resolve_trial",
    "write_agent_preset",
]
