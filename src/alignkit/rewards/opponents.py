"""Nash-MD's opponent: the reward ``mixture:PREF_SPEC`` compares each sample y ~ πθ with one opponent
y' drawn from the token-level geometric mixture of the policy and the reference,

    π_mix(y_t | x, y_<t) ∝ πθ(y_t | x, y_<t)^{1−α} · π_ref(y_t | x, y_<t)^{α}      (α = ``mixture_alpha``)

(`alignkit.generation.decoding.sample_product` with exponents ``(1 − α, α)``, at the run's temperature and
top-p; its text cut before the first of the run's ``stop`` strings, as the policy's samples are), and
returns ``P(y ≻ y' | x)`` from the preference (rewards/preference.py, skew-symmetrised).
α = 0 is the policy itself (self-play), α = 1 the reference. This is the token-level
approximation of Munos et al. (https://arxiv.org/abs/2312.00886) used by TRL's NashMDTrainer; the
paper's mixture is over whole sequences.

The reward needs the live policy and the reference model (``needs_models``): the online trainer passes them
with every call (`alignkit.rewards.protocol.LiveModels`). The reference must be a separate model
(ref_strategy copy or path; with LoRA's ``disable_adapters`` there is no second model to decode with).
Opponents are seeded by a hash of the prompts and completions, so a resumed run draws the same ones.
Metrics returned: ``preference/mean`` and ``opponent/length_chars`` (the opponents' mean length).
Not available with ``rollout_workers`` > 0 (the workers hold no reference).
"""

from __future__ import annotations

import hashlib

from alignkit.errors import ConfigError
from alignkit.generation import first_stop
from alignkit.generation.decoding import sample_product
from alignkit.rewards.preference import Preference
from alignkit.rewards.protocol import GroupReward, LiveModels, RewardOutput, flatten, regroup


def mixture_exponents(alpha: float) -> list[float]:
    """``[1 − α, α]``: the exponents of (policy, reference) in the geometric mixture; α in [0, 1]."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"mixture_alpha must be in [0, 1] (0: the policy, 1: the reference), got {alpha}")
    return [1.0 - alpha, alpha]


def stable_seed(*parts) -> int:
    """A 63-bit seed from the text of ``parts`` (the same in every process and run)."""
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def reference_model(reference, what: str = "reward=mixture:... (Nash-MD)"):
    """The frozen model behind an `engine.reference.Reference` (copy or path strategies); ``what`` needs it."""
    scorer = getattr(reference, "scorer", None)
    if reference is None or scorer is None or getattr(reference, "strategy", "") == "disable_adapters":
        raise ConfigError(f"{what} decodes with the reference as a separate model: use ref_strategy=copy or "
                          "ref_model=PATH (not LoRA's disable_adapters, not none)")
    return scorer.model


class MixtureOpponentReward(GroupReward):
    """Reward ``P(y ≻ y')`` with y' from the policy/reference geometric mixture (module docstring)."""

    needs_models = True

    def __init__(self, preference: Preference):
        self.preference = preference

    def opponents(self, models: LiveModels, prompts: list, seed: int) -> list[str]:
        """One mixture sample per entry of ``prompts``."""
        c = models.config
        exponents = mixture_exponents(c.mixture_alpha)
        ref = reference_model(models.reference) if exponents[1] > 0 else models.policy  # α = 0: the policy alone
        gen = sample_product([models.policy, ref], exponents, models.tokenizer, list(prompts), k=1,
                             max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p, seed=seed,
                             chat_template=c.chat_template, chat_template_kwargs=c.chat_template_kwargs)
        stop = list(getattr(c, "stop", None) or [])  # the policy's samples end at a stop string: so do opponents
        return [row[0][:first_stop(row[0], stop)[0]] for row in gen.texts]

    def __call__(self, prompts, groups, rows, models: LiveModels | None = None) -> RewardOutput:
        if models is None:
            raise ConfigError("reward mixture:... decodes with the run's policy and reference: it is for online "
                             "training (objective=nash_md)")
        flat_p, flat_c, flat_r = flatten(prompts, groups, rows)
        opp = self.opponents(models, flat_p, stable_seed(flat_p, flat_c) % (2**31))
        p = self.preference.pair(flat_p, flat_c, opp, flat_r)
        metrics = {"preference/mean": sum(p) / max(len(p), 1),
                   "opponent/length_chars": sum(len(o) for o in opp) / max(len(opp), 1)}
        return RewardOutput(regroup(p, groups), metrics)
