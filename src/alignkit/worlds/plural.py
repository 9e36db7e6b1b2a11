"""The review world with two user groups of opposite taste: a known answer for personalised reward models.

Each record pairs a clearly positive review with a clearly negative one (gold reward `reviews.reward` above
``+margin`` and below ``−margin``) and names the user who labelled it (a ``user`` column). Users ``A0``,
``A1``, … prefer the positive review, users ``B0``, ``B1``, … the negative one, so the population as a
whole is indifferent: a single Bradley–Terry reward can serve one group only (or neither), while a
reward that knows the user can serve both. Deterministic in ``seed``; another seed gives held-out pairs of
the same users.
"""

from __future__ import annotations

import random

from alignkit.worlds import reviews

GROUPS = ("A", "B")  # A prefers positive reviews, B negative ones


def _reviews(rng: random.Random, positive: bool, margin: float) -> str:
    while True:
        text = reviews.review(rng, coherence=0.9)
        r = reviews.reward(text)
        if (r > margin) if positive else (r < -margin):
            return text[len(reviews.PREFIX):]


def group_of(user: str) -> str:
    """The group (``A`` or ``B``) of a user name made by :func:`user_pairs`."""
    return user[0]


def user_pairs(n_pairs: int, users_per_group: int = 4, seed: int = 0, margin: float = 0.3) -> list[dict]:
    """``n_pairs`` paired records ``{prompt, chosen, rejected, user}``, users drawn uniformly from both groups."""
    rng = random.Random(seed)
    names = [f"{g}{i}" for g in GROUPS for i in range(users_per_group)]
    rows = []
    for _ in range(n_pairs):
        user = rng.choice(names)
        pos, neg = _reviews(rng, True, margin), _reviews(rng, False, margin)
        chosen, rejected = (pos, neg) if group_of(user) == "A" else (neg, pos)
        rows.append({"prompt": reviews.PREFIX, "chosen": chosen, "rejected": rejected, "user": user})
    return rows
