"""Parts of the data for reward models trained on a part each: `fold` keeps or leaves out one of k folds of the
prompts (reward-model ensembles), `users` keeps the records of some users (MaxMin-RLHF's per-group models)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

from alignkit.data.schema import PreferenceRecord
from alignkit.data.transforms_common import choice, number, report, transform
from alignkit.errors import ConfigError


def fold_of(record: PreferenceRecord, k: int) -> int:
    """The fold of a record's prompt (and system prompt): a stable hash, so one prompt is in one fold."""
    key = json.dumps([record.system, record.prompt], sort_keys=True)
    return int(hashlib.sha1(key.encode()).hexdigest(), 16) % k


@transform
def fold(records: list[PreferenceRecord], *, k: int = 5, index: int = 0, keep: str = "others"
         ) -> tuple[list[PreferenceRecord], dict[str, Any]]:
    """Split by prompt into ``k`` folds; ``keep="others"`` trains on all folds but ``index`` (ensemble
    member ``index`` of a k-fold ensemble), ``keep="only"`` keeps fold ``index`` alone (e.g. to evaluate it).
    Report ``dropped``: ``other_fold`` (records of the folds left out)."""
    number("fold", "k", k, low=2, integer=True)
    number("fold", "index", index, low=0, integer=True)
    choice("fold", "keep", keep, ("others", "only"))
    if index >= k:
        raise ConfigError(f"fold: index={index} must be < k={k}")
    out = [r for r in records if (fold_of(r, k) == index) == (keep == "only")]
    return out, report("fold", len(records), out, Counter({"other_fold": len(records) - len(out)}))


@transform
def users(records: list[PreferenceRecord], *, keep: list | None = None) -> tuple[list[PreferenceRecord], dict[str, Any]]:
    """Keep the records labelled by one of the users named in ``keep`` (their ``user`` column). Report
    ``dropped``: ``other_user`` (labelled by someone else), ``no_user`` (no ``user`` column)."""
    if not isinstance(keep, list) or not keep or not all(isinstance(u, (str, int)) for u in keep):
        raise ConfigError(f"users: keep must be a non-empty list of user names, got {keep!r}")
    wanted = {str(u) for u in keep}
    out = [r for r in records if r.meta.get("user") in wanted]
    dropped = Counter({"other_user": sum(1 for r in records if r.meta.get("user") not in (None, *wanted)),
                       "no_user": sum(1 for r in records if r.meta.get("user") is None)})
    return out, report("users", len(records), out, +dropped)
