"""Reward functions named in test configs (``reward=winrate:bt:reward_fns:length``): the standard library is not
allowed there (``builtins:len`` is refused), so tests name their own module, as a user would."""


def length(completion: str) -> float:
    """The number of characters: a reward that tells most samples apart."""
    return float(len(completion))
