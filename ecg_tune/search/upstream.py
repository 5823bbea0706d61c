"""The one module where ecg-tune reaches past Ray's and Optuna's public APIs (issue 23).

Everything else in the package uses only their public names; what is here has no public
equivalent. Each use says why, and tests/test_upstream.py checks the contract it relies on,
failing with the versions it was checked against (`RAY_CHECKED`, `OPTUNA_CHECKED`) so that an
upgrade that breaks it fails a test, not a search. That test also checks that no other module of
the package imports a private name of Ray or Optuna or reads a private attribute of anything but
its own object.

What is here:
- `keep_ray_on_loopback`: Ray reads its single-machine switch once, at import, into a private
  constant (search/cluster.py explains why a local cluster needs it);
- `legacy_searcher_state`: reading a searcher state saved before issue 23, when the Optuna
  searcher was a subclass of Ray's OptunaSearch and its state was that class's private
  attributes (search/optuna_search.py), so that a search started then can still be resumed.
"""

from __future__ import annotations

import os
from typing import Any

# The versions the contracts below were checked against (tests/test_upstream.py names them when
# one breaks).
RAY_CHECKED = "2.60.0"
OPTUNA_CHECKED = "5.1.0"

# Ray's switch for its single-machine mode: with it off ("0"), Ray keeps loopback addresses as
# given instead of replacing them with the machine's network address. An environment variable,
# read by every Ray process a local ray.init starts (raylet, GCS, workers).
RAY_LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def keep_ray_on_loopback() -> None:
    """Turn Ray's single-machine mode on for this process and the Ray processes it starts.

    Why private: the driver imported Ray before the variable could be set, and Ray reads it once,
    at import, into `ray._private.ray_constants.ENABLE_RAY_CLUSTER` (read by
    `ray._private.services.get_node_ip_address`). No public API sets the node address of a local
    cluster (`ray.init(_node_ip_address=...)` is private too, and does not reach the address
    rewrite in services.py).
    """
    os.environ[RAY_LOOPBACK_SWITCH] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


# A state saved before issue 23 is the __dict__ of a subclass of Ray's OptunaSearch (its `save`
# pickles it): Ray's private attributes, then the subclass's own. Key in that dict -> the name of
# the value in today's state (search/optuna_search.SearcherState).
_LEGACY_KEYS = {
    "_ot_study": "study",  # Ray: the optuna.Study
    "_ot_trials": "trials",  # Ray: Tune trial id -> optuna.trial.Trial
    "_completed_trials": "completed",  # Ray: Tune trial ids already told to Optuna
    "_storage": "storage",  # Ray: the optuna storage given (None: in memory)
    "_reported": "reported",  # ours
    "_finished": "finished",  # ours
    "_search_id": "search_id",  # ours; absent from states saved before it existed
}
# Ray's other attributes in such a state: what the searcher was built with, which today's searcher
# does not keep apart from its study. (`_space`, `_max_epochs`, `_pruned_as_complete` and Searcher's
# own `_metric` and `_mode` have the same names and meaning in today's searcher, and are kept.)
_LEGACY_CONFIG = ("_points_to_evaluate", "_evaluated_rewards", "_study_name", "_sampler", "_seed")

# Every attribute of a pre-issue-23 searcher that today's searcher does not have.
LEGACY_ONLY = (*_LEGACY_KEYS, *_LEGACY_CONFIG)


def legacy_searcher_state(saved: dict[str, Any]) -> dict[str, Any] | None:
    """The values of a pre-issue-23 searcher state (a pickled `__dict__`), under today's names;
    None when `saved` is not one. Used both for Tune's searcher-state file and for the searcher
    object pickled in tuner.pkl."""
    if "_ot_study" not in saved:
        return None
    return {new: saved[old] for old, new in _LEGACY_KEYS.items() if old in saved}
