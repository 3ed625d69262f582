"""Run an experiment's trials: plan (skip, resume, restart), execute locally or on Ray, report.

Each run (a setting and a seed) is an ordinary run of ``scripts/train_rl.py`` or
``scripts/train_supervised.py`` in ``<logdir>/<scale>/<experiment>/<setting>__s<seed>``, so a
sweep's runs have the same directory layout and TensorBoard logs as single runs. A trial is one
call of the script's ``main(argv)``: one run (``--seed s --name <setting>__s<s>``), or, when a
setting's seeds can be batched, all of them at once (``--seeds 0,1,2 --name <setting>``, which
trains the seeds as one batched network and writes the same run directories, see
``scripts/train_supervised.py``). The script's output (stdout, stderr and any traceback) goes
to ``trial.log`` in each of the trial's run directories.

Batching (:func:`plan`): the runs of a setting that need the script form one batched trial when
the script is ``supervised``, there are at least two of them and :func:`batching_refusal`
finds that the trainer builds the batched runs; otherwise (and with ``batch=False``) each run
is its own trial.

Restarting a sweep:

- a finished run (``status.json`` says ``complete`` or ``diverged``, or ``results.json``
  exists) is skipped;
  missing post-training evaluations (``evaluate:`` of the experiment) are run on it;
- an unfinished run with a checkpoint is continued with ``--resume``;
- an unfinished run without a checkpoint is deleted and started again;
- the unfinished runs of a batched trial (the setting's seeds that are missing or unfinished)
  run as one batched trial: resumed together (``train_supervised.py --resume DIR DIR ...``)
  when every one of them has a checkpoint, else deleted and started again together;
  ``batch=False`` (``--no-batch``) resumes or restarts them one by one instead;
- a run directory whose ``config.yaml`` differs from the trial's config is reported as a
  failure and left alone (another scale or an edited preset: use another ``--logdir``);
- a run that another live process trains (its ``run.pid`` lock) is skipped with a note.

A trial's runs are looked at again right before it starts (:func:`state_change`): if any of
them changed since the plan (another sweep of the same experiment finished, started or
checkpointed it, or runs it now: a trial holds ``<run>.trial.pid`` beside its run directories
from that check to its end), the trial is skipped with a note and nothing is deleted; the next
sweep plans it afresh. Two sweeps of one experiment may therefore run side by side.

Executors: :func:`run_local` runs the trials one after another in this process;
:func:`run_ray` runs them as Ray tasks (one CPU and one torch thread each), on a local Ray
started for the sweep or on an existing cluster (``address``). Ray core tasks rather than Ray
Tune: the grid is fixed and each trial already writes its own run directory, logs and
checkpoints, which Tune would duplicate with its own trial directories and restore logic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
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

from plasticity_rl.config import REPO_ROOT, fill_defaults
from plasticity_rl.experiments.results import flatten
from plasticity_rl.experiments.spec import Experiment, Trial, resolve_trial, script
from plasticity_rl.registry import ConfigError
from plasticity_rl.rundir import (
    CHECKPOINT,
    FINISHED_STATES,
    RunLock,
    lock_holder,
    read_status,
)

TRIAL_LOG = "trial.log"
TRIAL_LOCK = "trial.pid"
SIGNAL_EXITS = (129, 130, 143)
"""Exit statuses of a script stopped by SIGHUP, SIGINT or SIGTERM (after checkpointing)."""
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
    """``<experiment>/<setting>__s<seed>``, or ``...__s0,1,2`` for a batched trial."""
    script: str
    run_dirs: list[Path]
    """The trial's run directories: one, or one per seed of a batched trial."""
    action: str
    """``run`` (fresh), ``restart`` (delete the partial runs first), ``resume`` or ``evaluate``
    (the run is finished; only post-training evaluations are missing)."""
    argv: list[str]
    """The script's arguments for a fresh run."""
    data_dir: str | None = None
    evaluate: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    """Why the setting's seeds are not batched, when batching them was tried and refused."""
    planned: list[str] = field(default_factory=list)
    """Each run's :func:`run_state` when the job was planned (checked again before it runs)."""

    @property
    def batched(self) -> bool:
        return len(self.run_dirs) > 1

    @property
    def live_log(self) -> Path:
        """Where the script's output goes while it runs: next to the run directories (the
        script creates those itself), ``<setting>__s<seed>[,<seed>...].<pid>.trial.log``: the
        process id keeps two sweeps that reach the same trial from sharing (and moving) one
        file; the second finds the runs locked or settled and says so in its own log."""
        name = self.name.rpartition("/")[2]
        return self.run_dirs[0].parent / f"{name}.{os.getpid()}.{TRIAL_LOG}"

    def script_argv(self) -> list[str]:
        """The script's arguments for this job's action (``--resume`` for ``resume``)."""
        if self.action != "resume":
            return self.argv
        data = ["--data-dir", self.data_dir] if self.data_dir is not None else []
        return ["--resume", *map(str, self.run_dirs), "--no-progress", *data]

    def command_line(self) -> str:
        """The equivalent shell command (``evaluate`` jobs run no script)."""
        path = script(self.script).path.relative_to(REPO_ROOT)
        return f"python {path} {shlex.join(self.script_argv())}"


@dataclass
class TrialOutcome:
    """How a trial ended, or why a run was settled without running."""

    name: str
    status: str
    """``done``, ``skipped`` or ``failed``."""
    run_dirs: list[Path]
    seconds: float = 0.0
    message: str = ""
    """Why it failed, with the tail of its log; or what was skipped."""


def run_is_complete(run_dir: Path) -> bool:
    """A finished run: ``status.json`` says complete or diverged (a rerun would diverge
    again), or ``results.json`` exists."""
    if (run_dir / "results.json").is_file():
        return True
    return read_status(run_dir).get("state") in FINISHED_STATES


def run_state(run_dir: Path, evaluate: Mapping[str, Any]) -> str:
    """What a sweep would do with ``run_dir`` now: ``run`` (no directory yet), ``held`` (another
    live process trains it), ``skip`` (finished, its evaluations made), ``evaluate``
    (finished, evaluations missing), ``resume`` (a checkpoint) or ``restart`` (none)."""
    if not run_dir.exists():
        return "run"
    if lock_holder(run_dir) is not None:
        return "held"
    if run_is_complete(run_dir):
        return "evaluate" if evaluations_missing(run_dir, evaluate) else "skip"
    return "resume" if (run_dir / CHECKPOINT).is_file() else "restart"


def state_change(job: TrialJob) -> str:
    """Which of the job's runs changed since it was planned ("" if none), as a note."""
    changes = []
    for run_dir, before in zip(job.run_dirs, job.planned, strict=True):
        now = run_state(run_dir, job.evaluate)
        if now != before:
            holder = lock_holder(run_dir)
            why = f" (process {holder} trains it)" if holder is not None else ""
            changes.append(f"{run_dir.name}: {before} -> {now}{why}")
    if not changes:
        return ""
    return (
        "its runs changed since the sweep planned it, another sweep at work? ("
        + "; ".join(changes)
        + "); left alone, the next sweep plans it again"
    )


def evaluations_missing(run_dir: Path, evaluate: Mapping[str, Any]) -> bool:
    """Whether any of the experiment's post-training evaluations has no output yet, or one
    made with other options."""
    from plasticity_rl.experiments.pruning import pruning_results_match

    done = {"magnitude_pruning": pruning_results_match}
    return any(not done[name](run_dir, options) for name, options in evaluate.items())


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
    batch: bool = True,
) -> tuple[list[TrialJob], list[TrialOutcome]]:
    """The jobs to run and the runs settled without running (skipped or conflicting).

    ``logdir`` is the scale's directory (``<--logdir>/<scale>``); trial configs are resolved
    (raising :class:`ConfigError` on a bad preset) but nothing is written. With ``batch``, the
    runs of a setting that need the script become one batched trial where
    :func:`batching_refusal` allows it (see the module docstring).
    """
    logdir = logdir.resolve()
    preset_dir = logdir / experiment.name / "presets"
    jobs: list[TrialJob] = []
    settled: list[TrialOutcome] = []
    settings: dict[str, list[Trial]] = {}
    for trial in experiment.trials if trials is None else trials:
        settings.setdefault(trial.setting, []).append(trial)
    for setting_trials in settings.values():
        to_run: list[tuple[Trial, Any, TrialJob]] = []
        for trial in setting_trials:
            try:
                cfg, job = _plan_run(trial, experiment, logdir, preset_dir, extra,
                                     data_dirs or {})  # fmt: skip
            except ConfigError as err:  # a bad value fails its own trial, not the sweep
                run_dir = logdir / trial.run_name
                settled.append(TrialOutcome(trial.run_name, "failed", [run_dir],
                                            message=f"error: {err}"))  # fmt: skip
                continue
            if isinstance(job, TrialOutcome):
                settled.append(job)
            elif job.action == "evaluate":
                jobs.append(job)
            else:
                to_run.append((trial, cfg, job))
        jobs += _batch(to_run, preset_dir, logdir, extra) if batch else [j for *_, j in to_run]
    return jobs, settled


def _plan_run(
    trial: Trial,
    experiment: Experiment,
    logdir: Path,
    preset_dir: Path,
    extra: Sequence[str],
    data_dirs: Mapping[str | None, str],
) -> tuple[Any, TrialJob | TrialOutcome]:
    """The trial's resolved config, and its job on its own (or how it is settled)."""
    run_dir = logdir / trial.run_name
    cfg = resolve_trial(trial, preset_dir, extra)
    data_dir = None
    if trial.script == "supervised":
        data_dir = data_dir_for(cfg.stream.dataset, data_dirs)
    argv = trial.argv(preset_dir, logdir, extra)
    if data_dir is not None:
        argv += ["--data-dir", data_dir]
    job = TrialJob(
        trial.run_name, trial.script, [run_dir], "run", argv, data_dir, dict(experiment.evaluate)
    )
    if run_dir.exists():
        difference = config_difference(run_dir, cfg)
        if difference:
            message = (
                f"{run_dir} exists with a different config ({difference}); "
                "use another --logdir or remove it"
            )
            return cfg, TrialOutcome(trial.run_name, "failed", [run_dir], message=message)
    state = run_state(run_dir, experiment.evaluate)
    if state == "skip":
        return cfg, TrialOutcome(trial.run_name, "skipped", [run_dir])
    if state == "held":
        message = f"process {lock_holder(run_dir)} trains it"
        return cfg, TrialOutcome(trial.run_name, "skipped", [run_dir], message=message)
    job.action = state
    job.planned = [state]
    return cfg, job


def _batch(
    to_run: Sequence[tuple[Trial, Any, TrialJob]],
    preset_dir: Path,
    logdir: Path,
    extra: Sequence[str],
) -> list[TrialJob]:
    """A setting's runs that need the script (trial, resolved config, own job): one batched
    trial when they can be batched (``resume`` if all of them have a checkpoint, else
    ``restart`` if any of them has started), else their own jobs (with a note if batching was
    refused)."""
    runs = [job for *_, job in to_run]
    if len(runs) < 2 or runs[0].script != "supervised":
        return runs
    (first, cfg, _), data_dir = to_run[0], runs[0].data_dir
    seeds = [trial.seed for trial, *_ in to_run]
    check_cfg = cfg if data_dir is None else dataclasses.replace(cfg, data_dir=data_dir)
    refusal = batching_refusal(check_cfg, seeds)
    if refusal is not None:
        for job in runs:
            job.note = f"{first.setting_name}: seeds not batched: {refusal}"
        return runs
    argv = first.argv(preset_dir, logdir, extra, seeds)
    if data_dir is not None:
        argv += ["--data-dir", data_dir]
    return [
        TrialJob(
            f"{first.setting_name}__s{','.join(str(s) for s in seeds)}",
            first.script,
            [job.run_dirs[0] for job in runs],
            _batched_action([job.action for job in runs]),
            argv,
            data_dir,
            runs[0].evaluate,
            planned=[job.action for job in runs],
        )
    ]


def _batched_action(actions: Sequence[str]) -> str:
    if all(action == "resume" for action in actions):
        return "resume"
    return "restart" if any(action != "run" for action in actions) else "run"


def batching_refusal(cfg: Any, seeds: Sequence[int]) -> str | None:
    """Why the runs of ``cfg`` (a supervised run config) with ``seeds`` cannot train as one
    batched trial; None if they can.

    The trainer has no side-effect-free check, so this one builds the batched runs with
    :func:`~plasticity_rl.supervised.learner.build_batched_learner` on the meta device: its own
    refusals (a CNN, SDM layers, Top-K's GABA switch, per-run lists
    for methods without them, ...) are the answer, and no network is allocated. Building the
    streams reads the dataset (``cfg.data_dir``); it is never downloaded here: a dataset that is
    not on disk is a refusal (the runs then go one by one and the first downloads it). So is an
    operation the meta device does not implement: not batching is always safe.
    """
    import dataclasses

    import torch

    from plasticity_rl.supervised.datasets import DatasetFormatError, DatasetNotFound
    from plasticity_rl.supervised.learner import build_batched_learner

    if cfg.stream.dataset is not None:
        missing = _dataset_missing(cfg.stream.dataset, cfg.data_dir)
        if missing is not None:
            return missing
    try:
        with torch.device("meta"):  # the network stays there: no move to the run's device
            build_batched_learner(dataclasses.replace(cfg, device="cpu"), seeds)
    except (ConfigError, DatasetNotFound, DatasetFormatError) as err:
        return str(err)
    except Exception as err:  # an operation the meta device lacks, a bad value: run alone
        return f"the check on the meta device failed ({type(err).__name__}: {err})"
    return None


@functools.cache
def _dataset_missing(name: str, data_dir: str | None) -> str | None:
    """Why dataset ``name`` cannot be read from ``data_dir`` without downloading (None: it can)."""
    from plasticity_rl.supervised.datasets import DatasetFormatError, DatasetNotFound, load_dataset

    try:
        load_dataset(name, data_dir, download=False)
    except (DatasetNotFound, DatasetFormatError) as err:
        return str(err)
    return None


def config_difference(run_dir: Path, cfg: Any) -> str:
    """The dotted keys at which ``run_dir/config.yaml`` differs from ``cfg`` ("" if none, or if
    the run has no config yet); paths (:data:`IGNORED_CONFIG_KEYS`) are not compared, nor a
    key the saved config lacks where ``cfg`` holds the schema's default (a field added after
    the run was made; its resume fills in that default)."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return ""
    saved = flatten(fill_defaults(yaml.safe_load(saved_path.read_text()) or {}, type(cfg)))
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
    """Run one trial in this process; its output is appended to ``trial.log`` in each of its
    run directories. A trial whose runs changed since the plan (:func:`state_change`) is
    skipped without touching them. The trial holds ``<setting>__s<seed>.trial.pid`` beside
    each of its run directories from that check to its end, so that two sweeps that reach the
    same trial cannot both pass the check (one would delete the run the other just started);
    the second is skipped with a note.

    The log is written to :attr:`TrialJob.live_log` while the script runs (the script creates
    the run directories itself) and moved into them at the end. A failure is an outcome; a
    script stopped by a signal (it checkpointed) raises ``KeyboardInterrupt`` after the log is
    moved, so that the sweep stops too.
    """
    with contextlib.ExitStack() as locks:
        for run_dir in job.run_dirs:
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            lock = RunLock(run_dir.parent, f"{run_dir.name}.{TRIAL_LOCK}")
            try:
                locks.enter_context(lock)
            except ConfigError:
                message = (f"another sweep runs {run_dir.name} (process {lock.holder} holds "
                           f"{lock.path})")  # fmt: skip
                return TrialOutcome(job.name, "skipped", job.run_dirs, message=message)
        changed = state_change(job)
        if changed:
            return TrialOutcome(job.name, "skipped", job.run_dirs, message=changed)
        return _run_locked_trial(job)


def _run_locked_trial(job: TrialJob) -> TrialOutcome:
    import torch

    torch.set_num_threads(1)
    start = time.time()
    live_log = job.live_log
    live_log.parent.mkdir(parents=True, exist_ok=True)
    ok = interrupted = False
    with (
        live_log.open("a") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        print(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} {job.action} {job.name}", flush=True)
        try:
            ok = _run_job(job)
        except KeyboardInterrupt:
            interrupted = True
        except Exception:
            traceback.print_exc()
    text = live_log.read_text()
    for run_dir in job.run_dirs:
        run_dir.mkdir(parents=True, exist_ok=True)
        with (run_dir / TRIAL_LOG).open("a") as out:
            out.write(text)
    live_log.unlink()
    if interrupted:
        raise KeyboardInterrupt(job.name)
    seconds = time.time() - start
    if ok:
        return TrialOutcome(job.name, "done", job.run_dirs, seconds)
    return TrialOutcome(
        job.name, "failed", job.run_dirs, seconds, log_tail(job.run_dirs[0] / TRIAL_LOG)
    )


def _run_job(job: TrialJob) -> bool:
    """The script run (and post-training evaluations) of one job; True on success."""
    if job.action == "restart":
        for run_dir in job.run_dirs:
            if run_dir.exists():  # a batched trial's runs may be partly missing
                shutil.rmtree(run_dir)
    if job.action != "evaluate":
        code = load_script_main(job.script)(job.script_argv())
        if code in SIGNAL_EXITS:
            raise KeyboardInterrupt(job.name)  # checkpointed: the sweep stops, a rerun resumes
        if code != 0:
            print(f"{job.name}: the script exited with status {code}")
            return False
        incomplete = [str(d) for d in job.run_dirs if not run_is_complete(d)]
        if incomplete:
            print(f"{job.name}: the script returned but runs are not complete: {incomplete}")
            return False
    if "magnitude_pruning" in job.evaluate:
        from plasticity_rl.experiments.pruning import write_pruning_results

        for run_dir in job.run_dirs:
            write_pruning_results(run_dir, job.evaluate["magnitude_pruning"], job.data_dir)
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
                message = f"Ray task failed: {err}\n{log_tail(job.run_dirs[0] / TRIAL_LOG)}"
                yield TrialOutcome(job.name, "failed", job.run_dirs, message=message)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        ray.shutdown()


def summary(outcomes: Sequence[TrialOutcome]) -> str:
    """Counts of done / skipped / failed trials (and their runs: a batched trial has several),
    then each failure with its log tail."""
    counts = []
    for status in ("done", "skipped", "failed"):
        ended = [o for o in outcomes if o.status == status]
        runs = sum(len(o.run_dirs) for o in ended)
        counts.append(f"{len(ended)} {status} ({runs} run{'' if runs == 1 else 's'})")
    lines = ["sweep summary (trials): " + ", ".join(counts)]
    for status in ("done", "skipped", "failed"):
        names = [o.name for o in outcomes if o.status == status]
        if names:
            lines.append(f"  {status}: {', '.join(names)}")
    for o in outcomes:
        if o.status == "skipped" and o.message:
            lines.append(f"  {o.name} skipped: {o.message}")
    for o in outcomes:
        if o.status == "failed":
            where = o.run_dirs[0] if len(o.run_dirs) == 1 else o.run_dirs[0].parent
            lines += [f"--- {o.name} failed ({where}):", *o.message.splitlines()]
    return "\n".join(lines)
