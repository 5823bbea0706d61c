"""Contracts with Ray and Optuna (ecg_tune/search/upstream.py, issue 23).

- what upstream.py relies on beyond the public APIs (Ray's loopback switch; the layout of a
  searcher state saved before issue 23) still holds, each failure naming the version it was
  checked with;
- the Optuna searcher (search/optuna_search.py) asks Optuna what Ray's own OptunaSearch asks, so
  a seed gives the same proposals; what it tells Optuna (PRUNED, COMPLETE with the best value in
  the mode's direction, FAIL) is tests/test_optuna_pruning.py's;
- no subclass of a Ray or Optuna class reads its base class's private state (the rest of "no
  private names outside upstream.py" is tests/test_architecture.py's).
"""

from __future__ import annotations

import ast
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import ray
from test_architecture import MODULES, UPSTREAM, UPSTREAM_ADAPTER

from ecg_tune.search import upstream
from ecg_tune.search.optuna_search import LOST, SEARCH_ID, TUNE_TRIAL_ID, PruningAwareOptunaSearch, saved_state

State = optuna.trial.TrialState
CHECKED = f"checked with Ray {upstream.RAY_CHECKED} and Optuna {upstream.OPTUNA_CHECKED}"
INSTALLED = f"Ray {ray.__version__}, Optuna {optuna.__version__} installed"


# --- Ray's loopback switch (search/cluster.py's local clusters) --------------------------------

def ray_answers(code: str, env: dict[str, str]) -> str:
    """What a fresh Python prints after importing Ray with `env`, so this process stays as it is."""
    done = subprocess.run([sys.executable, "-c", "import ray\n" + code], capture_output=True, text=True, timeout=120,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


PROBE = ("from ray._private import ray_constants, services\n"
         "print(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, ray_constants.ENABLE_RAY_CLUSTER,"
         " services.resolve_ip_for_localhost('127.0.0.1'), services.get_node_ip_address())")


def test_ray_keeps_loopback_addresses_with_its_single_machine_switch() -> None:
    """Ray rewrites 127.0.0.1 to the machine's network address unless its single-machine switch is
    on, which it reads once, at import, from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER into a private
    constant; keep_ray_on_loopback sets both, for a process that imported Ray before."""
    env = {key: value for key, value in os.environ.items() if key != upstream.RAY_LOOPBACK_SWITCH}
    # The variable, for the Ray processes a local ray.init starts.
    name, enabled, resolved, node_ip = ray_answers(PROBE, {**env, upstream.RAY_LOOPBACK_SWITCH: "0"}).split()
    assert name == upstream.RAY_LOOPBACK_SWITCH, (
        f"Ray now reads its single-machine switch from {name}, not {upstream.RAY_LOOPBACK_SWITCH} ({CHECKED}; "
        f"{INSTALLED}): update search/upstream.py")
    assert (enabled, resolved, node_ip) == ("False", "127.0.0.1", "127.0.0.1"), (
        f"with {name}=0 Ray no longer keeps loopback addresses ({CHECKED}; {INSTALLED}): local clusters would "
        f"listen on the network; see search/upstream.py")
    # The private constant, for a driver that imported Ray first.
    late = ray_answers("from ecg_tune.search.upstream import keep_ray_on_loopback\nkeep_ray_on_loopback()\n"
                       + PROBE, env).split()
    assert late[1:] == ["False", "127.0.0.1", "127.0.0.1"], (
        f"keep_ray_on_loopback no longer reaches Ray's address rewrite ({CHECKED}; {INSTALLED}): "
        f"ray._private.ray_constants.ENABLE_RAY_CLUSTER / services.get_node_ip_address changed; see "
        f"search/upstream.py")


# --- the searcher asks Optuna what Ray's OptunaSearch asked ----------------------------------

def conditional_space(trial: optuna.trial.Trial) -> dict:
    model = trial.suggest_categorical("model", ["a", "b"])
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    if model == "b":
        trial.suggest_int("depth", 2, 8)
    return {"input_length": 600}


def drive(searcher, trials: int) -> list[dict]:
    """Two trials in flight, as Tune with max_concurrent_trials=2 (TPE's constant liar sees the
    running one). Each runs to its end with scores that never fall (its best is its last), or
    is stopped after 1-2 epochs, or errors: what Ray's OptunaSearch and ours tell Optuna alike
    with pruned_as_complete."""
    configs: list[dict] = []
    running: list[str] = []
    for number in range(trials + 2):
        if number < trials:
            trial_id = f"t{number}"
            configs.append(searcher.suggest(trial_id))
            running.append(trial_id)
        if len(running) == 2 or number >= trials and running:
            trial_id = running.pop(0)
            config = configs[int(trial_id[1:])]
            score = -abs(math.log10(config["lr"]) + 2.5) + 0.1 * config.get("depth", 0)
            epochs = 4 if number % 3 else 1 + number % 2
            for step in range(1, epochs):
                searcher.on_trial_result(trial_id, {"score": score + step, "training_iteration": step})
            if number % 7 == 6:
                searcher.on_trial_complete(trial_id, error=True)
            else:
                searcher.on_trial_complete(trial_id, {"score": score + epochs, "training_iteration": epochs})
    return configs


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_seed_proposes_what_rays_optuna_search_proposes(sampler: str) -> None:
    from ray.tune.search.optuna import OptunaSearch

    def make(cls, **extra):
        chosen = (optuna.samplers.TPESampler(seed=5, multivariate=True, group=True, n_startup_trials=4)
                  if sampler == "tpe" else optuna.samplers.RandomSampler(seed=5))
        return cls(space=conditional_space, metric="score", mode="max", sampler=chosen,
                   points_to_evaluate=[{"model": "b", "lr": 0.003}, {"lr": 0.02}], **extra)

    ours = drive(make(PruningAwareOptunaSearch, max_epochs=4, pruned_as_complete=True), 24)
    rays = drive(make(OptunaSearch), 24)
    assert ours[0]["model"] == "b" and ours[0]["lr"] == 0.003 and 2 <= ours[0]["depth"] <= 8
    assert ours[1]["lr"] == 0.02 and all(config["input_length"] == 600 for config in ours)
    assert ours == rays, (f"the searcher no longer asks Optuna what Ray's OptunaSearch asks for the same seed "
                          f"(identical when {CHECKED}; {INSTALLED})")


# --- a searcher state saved before issue 23 ----------------------------------------------------

def legacy_state(study: optuna.Study, storage: optuna.storages.BaseStorage | None,
                 trials: dict[str, optuna.trial.Trial], search_id: str) -> dict:
    """A state as the searcher before issue 23 saved it: Ray 2.60 OptunaSearch's __dict__ (its
    `save` pickles that), with the subclass's attributes."""
    return {"_metric": "score", "_mode": "max", "_space": conditional_space, "_points_to_evaluate": [],
            "_evaluated_rewards": None, "_study_name": study.study_name, "_sampler": study.sampler, "_seed": None,
            "_storage": storage, "_completed_trials": set(), "_ot_trials": trials, "_ot_study": study,
            "_max_epochs": 2, "_pruned_as_complete": False, "_reported": {"known": {1: 0.5}}, "_finished": {},
            "_search_id": search_id}


def test_a_search_saved_before_issue_23_resumes(tmp_path: Path) -> None:
    """tuner.pkl holds the searcher of then (its class path is today's class) and the experiment
    its state: --resume carries on with that study, and still fails the trial the driver lost."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(storage=storage, study_name="old", direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=0))
    known, lost = study.ask(), study.ask()
    for trial, tune_id in ((known, "known"), (lost, "lost")):
        trial.suggest_categorical("model", ["a", "b"])
        trial.set_user_attr(TUNE_TRIAL_ID, tune_id)
        trial.set_user_attr(SEARCH_ID, "then")
    known.report(0.5, 1)
    # Tune's last save knew "known" only; "lost" was suggested after it.
    saved = legacy_state(study, storage, {"known": known}, "then")
    state_file = tmp_path / "searcher-state-old.pkl"
    state_file.write_bytes(pickle.dumps(saved))

    resumed = PruningAwareOptunaSearch.__new__(PruningAwareOptunaSearch)
    resumed.__setstate__(pickle.loads(pickle.dumps(legacy_state(study, storage, {}, "then"))))  # tuner.pkl
    assert not set(upstream.LEGACY_ONLY) & set(vars(resumed)), "Ray's attributes of then were kept"
    assert (resumed.metric, resumed.mode, resumed.max_epochs) == ("score", "max", 2)
    resumed.restore(str(state_file))
    assert saved_state(state_file).study.study_name == "old"

    stored = {t.user_attrs[TUNE_TRIAL_ID]: t for t in optuna.load_study(study_name="old", storage=url).trials}
    assert stored["lost"].state == State.FAIL and LOST in stored["lost"].user_attrs
    resumed.on_trial_complete("known", {"score": 0.7, "training_iteration": 2})
    assert resumed.suggest("next") is not None
    stored = {t.user_attrs[TUNE_TRIAL_ID]: t for t in optuna.load_study(study_name="old", storage=url).trials}
    assert stored["known"].state == State.COMPLETE and stored["known"].value == 0.7
    assert stored["known"].intermediate_values == {1: 0.5, 2: 0.7}
    assert stored["next"].state == State.RUNNING and stored["next"].user_attrs[SEARCH_ID] == "then"


# --- no subclass leans on a Ray or Optuna base class's private state --------------------------
# tests/test_architecture.py finds private names read of other objects and modules; `self._x` it
# takes as the object's own, which in a subclass of Ray's or Optuna's classes may be the base
# class's private state (the searcher before issue 23 read OptunaSearch's `self._ot_trials`).

def inherited_private_reads(source: str, where: str = "<module>") -> list[str]:
    """`self._x` read in a subclass of a Ray or Optuna class that the class itself never sets
    or defines: the base class's private state."""
    tree = ast.parse(source, where)
    upstream_names: set[str] = set()  # names bound to Ray's or Optuna's modules and classes
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in UPSTREAM:
            upstream_names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            upstream_names.update(alias.asname or alias.name.split(".")[0] for alias in node.names
                                  if alias.name.split(".")[0] in UPSTREAM)
    found = []
    for cls in (node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)):
        if not {ast.unparse(base).split(".")[0].split("[")[0] for base in cls.bases} & upstream_names:
            continue
        # What the class itself defines: its methods, class attributes and what it assigns to self.
        own = {n.name for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        own |= {n.id for statement in cls.body if isinstance(statement, ast.Assign | ast.AnnAssign)
                for n in ast.walk(statement) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        own |= {n.attr for n in ast.walk(cls) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
                and isinstance(n.value, ast.Name) and n.value.id == "self"}
        found += [f"{where}:{n.lineno}: {cls.name} reads self.{n.attr}, its Ray/Optuna base class's"
                  for n in ast.walk(cls) if isinstance(n, ast.Attribute) and n.attr.startswith("_")
                  and not n.attr.startswith("__") and isinstance(n.value, ast.Name) and n.value.id == "self"
                  and n.attr not in own]
    return found


def test_no_subclass_reads_its_ray_or_optuna_base_class_private_state() -> None:
    found = [line for name, path in MODULES.items() if name != UPSTREAM_ADAPTER
             for line in inherited_private_reads(path.read_text(encoding="utf-8"), name)]
    assert not found, ("private state of a Ray/Optuna base class read outside search/upstream.py (use the "
                       "public interface, or put the access there with a contract test here):\n" + "\n".join(found))


def test_inherited_private_reads_are_found() -> None:
    before = """
from ray.tune.search.optuna import OptunaSearch

class PruningAwareOptunaSearch(OptunaSearch):
    def __init__(self):
        self._finished = {}
    def suggest(self, trial_id):
        self._finished[trial_id] = self._ot_trials.pop(trial_id)
        return self._twin(self._ot_study)
    def _twin(self, study):
        return study
"""
    assert sorted(line.split(": ", 1)[1] for line in inherited_private_reads(before)) == [
        "PruningAwareOptunaSearch reads self._ot_study, its Ray/Optuna base class's",
        "PruningAwareOptunaSearch reads self._ot_trials, its Ray/Optuna base class's"]
