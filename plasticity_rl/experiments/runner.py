"""Run an experiment's trials: plan (skip, resume, restart), execute locally or on Ray, report.

Each trial is an ordinary run of ``scripts/train_rl.py`` or ``scripts/train_supervised.py``:
the worker calls the script's ``main(argv)`` with the fixed run name
``<experiment>/<setting>__s<seed>`` under ``<logdir>/<scale>/``, so a sweep's runs have the same
directory layout and TensorBoard logs as single runs. The script's output (stdout, stderr and
any traceback) goes to ``<run_dir>/trial.log``.

Restarting a sweep:

- a finished run (``status.json`` says ``complete``, or ``results.json`` exists) is skipped;
  missing post-training evaluations (``evaluate:`` of the experiment) are run on it;
- an unfinished run with a checkpoint is continued with ``--resume``;
- an unfinished run without a checkpoint is deleted and started again;
- a run directory whose ``config.yaml`` differs from the trial's config is reported as a
  failure and left alone (another scale or an edited preset: use another ``--logdir``).

Executors: :func:`run_local` runs the trials one after another in this process;
:func:`run_ray` runs them as Ray tasks (one CPU and one torch thread each), on a local Ray
started for the sweep or on an existing cluster (``address``). Ray core tasks rather than Ray
Tune: the grid is fixed and each trial already writes its own run directory, logs and
checkpoints, which Tune would duplicate with its own trial directories and restore logic.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shlex
import shutil
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from plasticity_rl.config import REPO_ROOT
from plasticity_rl.experiments.results import flatten
from plasticity_rl.experiments.spec import Experiment, Trial, resolve_trial, script
from plasticity_rl.registry import ConfigError

TRIAL_LOG = "trial.log"
CHECKPOINT = Path("checkpoints") / "latest.pt"
IGNORED_CONFIG_KEYS = ("agent_preset", "data_dir", "env_preset")
"""Config fields that may differ between a trial and its existing run (paths)."""
LOG_TAIL_LINES = 25
RAY_MISSING = (
    "local (runs the trials one after another); Ray is not installed: for ray install the "
    'sweep extra, pip install -e ".[sweep]" (or pip install "ray[tune]")'
)


@dataclass
class TrialJob:
    """What a worker needs to run one trial (plain, picklable data)."""

    name: str
    script: str
    run_dir: Path
    action: str
    """``run`` (fresh), ``restart`` (delete the partial run first), ``resume`` or ``evaluate``
    (the run is finished; only post-training evaluations are missing)."""
    argv: list[str]
    """The script's arguments for a fresh run."""
    data_dir: str | None = None
    evaluate: dict[str, Any] = field(default_factory=dict)

    def script_argv(self) -> list[str]:
        """The script's arguments for this job's action (``--resume`` for ``resume``)."""
        if self.action != "resume":
            return self.argv
        data = ["--data-dir", self.data_dir] if self.data_dir is not None else []
        return ["--resume", str(self.run_dir), "--no-progress", *data]

    def command_line(self) -> str:
        """The equivalent shell command (``evaluate`` jobs run no script)."""
        path = script(self.script).path.relative_to(REPO_ROOT)
        return f"python {path} {shlex.join(self.script_argv())}"


@dataclass
class TrialOutcome:
    name: str
    status: str
    """``done``, ``skipped`` or ``failed``."""
    run_dir: Path
    seconds: float = 0.0
    message: str = ""
    """Why it failed, with the tail of its log; or what was skipped."""


def run_is_complete(run_dir: Path) -> bool:
    """A finished run: ``status.json`` says complete (RL) or ``results.json`` exists."""
    if (run_dir / "results.json").is_file():
        return True
    status = run_dir / "status.json"
    return status.is_file() and '"complete"' in status.read_text()


def evaluations_missing(run_dir: Path, evaluate: Mapping[str, Any]) -> bool:
    """Whether any of the experiment's post-training evaluations has no output file yet."""
    from plasticity_rl.experiments.pruning import PRUNING_RESULTS

    outputs = {"magnitude_pruning": PRUNING_RESULTS}
    return any(not (run_dir / outputs[name]).is_file() for name in evaluate)


def data_dir_for(dataset: str | None, data_dirs: Mapping[str | None, str]) -> str | None:
    """The data directory for ``dataset``: its own entry, else the default (key None)."""
    if dataset is None:
        return None
    return data_dirs.get(dataset, data_dirs.get(None))


def parse_data_dirs(items: Sequence[str]) -> dict[str | None, str]:
    """``["DIR"]`` or ``["fashion_mnist=DIR", ...]`` -> ``{None: DIR, "fashion_mnist": DIR}``.

    Paths are made absolute (Ray workers may start in another directory).
    """
    dirs: dict[str | None, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        key = name if sep else None
        dirs[key] = str(Path(path if sep else name).expanduser().resolve())
    return dirs


def plan(
    experiment: Experiment,
    logdir: Path,
    extra: Sequence[str] = (),
    data_dirs: Mapping[str | None, str] | None = None,
    trials: Iterable[Trial] | None = None,
) -> tuple[list[TrialJob], list[TrialOutcome]]:
    """The jobs to run and the trials settled without running (skipped or conflicting).

    ``logdir`` is the scale's directory (``<--logdir>/<scale>``); trial configs are resolved
    (raising :class:`ConfigError` on a bad preset) but nothing is written.
    """
    logdir = logdir.resolve()
    preset_dir = logdir / experiment.name / "presets"
    jobs: list[TrialJob] = []
    settled: list[TrialOutcome] = []
    for trial in experiment.trials if trials is None else trials:
        run_dir = logdir / trial.run_name
        cfg = resolve_trial(trial, preset_dir, extra)
        data_dir = None
        if trial.script == "supervised":
            data_dir = data_dir_for(cfg.stream.dataset, data_dirs or {})
        argv = trial.argv(preset_dir, logdir, extra)
        if data_dir is not None:
            argv += ["--data-dir", data_dir]
        job = TrialJob(
            trial.run_name, trial.script, run_dir, "run", argv, data_dir, dict(experiment.evaluate)
        )
        if run_dir.exists():
            difference = config_difference(run_dir, cfg)
            if difference:
                message = (
                    f"{run_dir} exists with a different config ({difference}); "
                    "use another --logdir or remove it"
                )
                settled.append(TrialOutcome(trial.run_name, "failed", run_dir, message=message))
                continue
            if run_is_complete(run_dir):
                if not evaluations_missing(run_dir, experiment.evaluate):
                    settled.append(TrialOutcome(trial.run_name, "skipped", run_dir))
                    continue
                job.action = "evaluate"
            else:
                resumable = (run_dir / CHECKPOINT).is_file()
                job.action = "resume" if resumable else "restart"
        jobs.append(job)
    return jobs, settled


def config_difference(run_dir: Path, cfg: Any) -> str:
    """The dotted keys at which ``run_dir/config.yaml`` differs from ``cfg`` ("" if none, or if
    the run has no config yet); paths (:data:`IGNORED_CONFIG_KEYS`) are not compared."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return ""
    saved = flatten(yaml.safe_load(saved_path.read_text()) or {})
    wanted = flatten(OmegaConf.to_container(OmegaConf.structured(cfg)))
    keys = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
    keys = [k for k in keys if k.split(".")[0] not in IGNORED_CONFIG_KEYS]
    return ", ".join(f"{k}: {saved.get(k)!r} != {wanted.get(k)!r}" for k in keys[:5])


def load_script_main(name: str) -> Any:
    """The ``main(argv)`` of ``scripts/train_rl.py`` (``rl``) or ``train_supervised.py``."""
    path = script(name).path
    spec = importlib.util.spec_from_file_location(f"plasticity_rl_script_{name}", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.main


def run_trial(job: TrialJob) -> TrialOutcome:
    """Run one trial in this process; its output is appended to ``<run_dir>/trial.log``.

    The log is written next to the run directory while the script runs (the script creates the
    directory itself) and moved into it at the end. Never raises: a failure is an outcome.
    """
    import torch

    torch.set_num_threads(1)
    start = time.time()
    live_log = job.run_dir.with_name(job.run_dir.name + "." + TRIAL_LOG)
    live_log.parent.mkdir(parents=True, exist_ok=True)
    ok = False
    with (
        live_log.open("a") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        print(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} {job.action} {job.name}", flush=True)
        try:
            ok = _run_job(job)
        except Exception:
            traceback.print_exc()
    log_path = job.run_dir / TRIAL_LOG
    job.run_dir.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as out:
        out.write(live_log.read_text())
    live_log.unlink()
    seconds = time.time() - start
    if ok:
        return TrialOutcome(job.name, "done", job.run_dir, seconds)
    return TrialOutcome(job.name, "failed", job.run_dir, seconds, log_tail(log_path))


def _run_job(job: TrialJob) -> bool:
    """The script run (and post-training evaluations) of one job; True on success."""
    if job.action == "restart":
        shutil.rmtree(job.run_dir)
    if job.action != "evaluate":
        code = load_script_main(job.script)(job.script_argv())
        if code != 0:
            print(f"{job.name}: the script exited with status {code}")
            return False
        if not run_is_complete(job.run_dir):
            print(f"{job.name}: the script returned but the run is not complete")
            return False
    if "magnitude_pruning" in job.evaluate:
        from plasticity_rl.experiments.pruning import write_pruning_results

        fractions = job.evaluate["magnitude_pruning"]["fractions"]
        write_pruning_results(job.run_dir, fractions, job.data_dir)
    return True


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file."""
    if not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_local(jobs: Sequence[TrialJob]) -> Iterator[TrialOutcome]:
    """Run the jobs one after another in this process."""
    for job in jobs:
        yield run_trial(job)


def run_ray(
    jobs: Sequence[TrialJob], address: str | None = None, max_concurrent: int | None = None
) -> Iterator[TrialOutcome]:
    """Run the jobs as Ray tasks of one CPU each, at most ``max_concurrent`` at a time.

    Without ``address`` a local Ray using every core is started (and shut down at the end);
    with one (``auto``, ``host:port`` or ``ray://host:10001``) the cluster's nodes must have this
    package installed and see ``logdir`` and the data directories at the same paths.
    """
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor", "ray", RAY_MISSING) from None
    if address is None:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    remote = ray.remote(num_cpus=1, max_retries=0)(run_trial)
    limit = max_concurrent or len(jobs) or 1
    pending: dict[Any, TrialJob] = {}
    queue = list(jobs)
    try:
        while queue or pending:
            while queue and len(pending) < limit:
                job = queue.pop(0)
                pending[remote.remote(job)] = job
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                yield ray.get(ready[0])
            except ray.exceptions.RayError as err:
                message = f"Ray task failed: {err}\n{log_tail(job.run_dir / TRIAL_LOG)}"
                yield TrialOutcome(job.name, "failed", job.run_dir, message=message)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        ray.shutdown()


def summary(outcomes: Sequence[TrialOutcome]) -> str:
    """Counts of done / skipped / failed trials, then each failure with its log tail."""
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    lines = ["sweep summary: " + ", ".join(f"{n} {s}" for s, n in counts.items())]
    for status in ("done", "skipped", "failed"):
        names = [o.name for o in outcomes if o.status == status]
        if names:
            lines.append(f"  {status}: {', '.join(names)}")
    for o in outcomes:
        if o.status == "failed":
            lines += [f"--- {o.name} failed ({o.run_dir}):", *o.message.splitlines()]
    return "\n".join(lines)
