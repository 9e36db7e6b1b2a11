"""Online preference learning: any offline objective on fresh samples.

    alignkit train objective=dpo num_samples=2 model=PATH prompts=P.jsonl reward=rm:RM     # online DPO
    alignkit train objective=sft model=PATH prompts=P.jsonl reward=rule:exact_answer       # RAFT
    alignkit train objective=copg model=PATH prompts=P.jsonl reward=rule:length:100        # CoPG

The K samples of each prompt carry their rewards as ``scores`` (`rollout.sample_experience`), so every
objective that reads scored responses trains on them unchanged: ``dpo`` on K = 2 is online DPO (ties
masked), ``sft`` is RAFT (best-of-K SFT: SFT trains on the highest-scored sample; ``raft`` is the same as a
rollout objective), ``plackett_luce`` ranks all K, ``copg`` is contrastive policy gradient
(`objectives.rl.copg`: its gradient on on-policy samples is RLOO's), ``fdpg`` is f-DPG (`objectives.fdpg`:
a policy gradient toward p ∝ π_ref·exp(r/β) with an f-divergence). The recipe adds nothing to a step:
no behaviour log-probs, no targets, no model beside the policy — the objective reads ``stats.rewards``
(and the reference's log-probs when it needs them).
"""

from __future__ import annotations

from alignkit.algorithms.recipe import Recipe, register_recipe


class FreshSamples(Recipe):
    family = "online_preference"


FRESH_SAMPLES = FreshSamples()  # the recipe of every log-prob objective without one of its own
register_recipe("raft", FRESH_SAMPLES)
