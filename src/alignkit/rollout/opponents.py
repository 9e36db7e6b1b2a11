"""Nash-MD's opponent: the reward ``mixture:PREF_SPEC`` compares each sample y ~ πθ with one opponent
y' drawn from the token-level geometric mixture of the policy and the reference,

    π_mix(y_t | x, y_<t) ∝ πθ(y_t | x, y_<t)^{1−α} · π_ref(y_t | x, y_<t)^{α}      (α = ``mixture_alpha``)

(`alignkit.inference.decoding.sample_product` with exponents ``(1 − α, α)``, at the run's temperature and
top-p; its text cut before the first of the run's ``stop`` strings, as the policy's samples are), and
returns ``P(y ≻ y' | x)`` from the preference (rollout/preference.py, skew-symmetrised).
α = 0 is the policy itself (self-play), α = 1 the reference. This is the token-level
approximation of Munos et al. (https://arxiv.org/abs/2312.00886) used by TRL's NashMDTrainer; the
paper's mixture is over whole sequences.

The reward needs the live policy and the reference model: the online trainer calls ``bind(policy,
reference, tokenizer, config)`` before each rollout (its ``needs_models`` hook). The reference must be a
separate model (ref_strategy copy or path; with LoRA's ``disable_adapters`` there is no second model to
decode with). Opponents are seeded by a hash of the prompts and completions, so a resumed run draws the
same ones. ``last_metrics`` holds the mean preference and the opponents' mean length of the latest call.
Not available with ``rollout_workers`` > 0 (the workers hold no reference).
"""

from __future__ import annotations

import hashlib

from alignkit.errors import ConfigError
from alignkit.rollout.preference import Preference


def mixture_exponents(alpha: float) -> list[float]:
    """``[1 − α, α]``: the exponents of (policy, reference) in the geometric mixture; α in [0, 1]."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"mixture_alpha must be in [0, 1] (0: the policy, 1: the reference), got {alpha}")
    return [1.0 - alpha, alpha]


def stable_seed(*parts) -> int:
    """A 63-bit seed from the text of ``parts`` (the same in every process and run)."""
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def reference_model(reference):
    """The frozen model behind an `engine.reference.Reference` (copy or path strategies)."""
    scorer = getattr(reference, "scorer", None)
    if reference is None or scorer is None or getattr(reference, "strategy", "") == "disable_adapters":
        raise ConfigError("reward=mixture:... (Nash-MD) decodes with the reference as a separate model: use "
                         "ref_strategy=copy or ref_model=PATH (not LoRA's disable_adapters, not none)")
    return scorer.model


class MixtureOpponentReward:
    """Reward ``P(y ≻ y')`` with y' from the policy/reference geometric mixture (module docstring)."""

    needs_models = True

    def __init__(self, preference: Preference):
        self.preference = preference
        self.models = None
        self.last_metrics: dict[str, float] = {}

    def bind(self, policy, reference, tokenizer, config) -> None:
        """Called by the online trainer before a rollout: the models to decode the mixture with."""
        self.exponents = mixture_exponents(config.mixture_alpha)
        ref = reference_model(reference) if self.exponents[1] > 0 else policy  # α = 0: the policy alone
        self.models, self.tokenizer, self.config = [policy, ref], tokenizer, config

    def opponents(self, prompts: list, seed: int) -> list[str]:
        """One mixture sample per entry of ``prompts``."""
        from alignkit.generation import first_stop
        from alignkit.inference.decoding import sample_product

        c = self.config
        gen = sample_product(self.models, self.exponents, self.tokenizer, list(prompts), k=1,
                             max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p, seed=seed,
                             chat_template=c.chat_template, chat_template_kwargs=c.chat_template_kwargs)
        stop = list(getattr(c, "stop", None) or [])  # the policy's samples end at a stop string: so do opponents
        return [row[0][:first_stop(row[0], stop)[0]] for row in gen.texts]

    def __call__(self, prompts, completions, rows) -> list[float]:
        if self.models is None:
            raise RuntimeError("reward mixture:... has no models bound: it is for online training (objective=nash_md)")
        opp = self.opponents(prompts, stable_seed(list(prompts), list(completions)) % (2**31))
        p = self.preference.pair(prompts, completions, opp, rows)
        self.last_metrics = {"preference/mean": sum(p) / max(len(p), 1),
                             "opponent/length_chars": sum(len(o) for o in opp) / max(len(opp), 1)}
        return p
