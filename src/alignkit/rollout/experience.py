"""Sampling experience: prompts in; K completions per prompt out, as the exact token ids sampled, with
their rewards — ready for the same executor and objectives as offline data.

The completion tokens are *not* re-tokenized from text: each sample becomes a `TokenizedRecord` whose
prompt ids are those generation started from and whose completion is the sampled ids (plus EOS when
the sample stopped there), so the log-probs the trainer computes are those of what was sampled. A
sample that ended at a stop string (``stop``) is trained on its ids up to and including the token that
completed the stop string (no EOS appended), while the reward sees its text without the stop string. The
reward follows the group protocol (`alignkit.rewards.protocol`): each prompt's K completions as one group;
its metrics come back in ``Experience.reward_metrics``. The records carry the rewards as ``scores``, so any
offline objective (dpo on K = 2, sft = RAFT, listwise objectives) can train on fresh samples too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from alignkit.data.dataset import TokenizedDataset
from alignkit.data.schema import PreferenceRecord
from alignkit.data.tokenize import TokenizedRecord
from alignkit.generation import generate, prompt_ids
from alignkit.rewards.build import build_group_reward
from alignkit.rewards.functions import penalize_unfinished
from alignkit.rewards.protocol import LiveModels


@dataclass
class Experience:
    """B prompts x K samples. ``rewards`` [B, K] (after the unfinished penalty)."""

    prompts: list
    rows: list[dict]
    texts: list[list[str]]
    finished: list[list[bool]]
    rewards: Tensor
    data: TokenizedDataset
    extra: dict[str, Tensor] = field(default_factory=dict)
    reward_metrics: dict[str, float] = field(default_factory=dict)  # what the reward returned beside the rewards

    @property
    def num_tokens(self) -> int:
        return sum(len(tr.segments[k]) for tr in self.data.items for k in range(tr.k))

    def metrics(self) -> dict[str, float]:
        r = self.rewards
        lengths = torch.tensor([len(s) for tr in self.data.items for s in tr.segments], dtype=torch.float32)
        return {"reward/mean": float(r.mean()), "reward/std": float(r.std()) if r.numel() > 1 else 0.0,
                "response_length": float(lengths.mean()),
                "unfinished": float(1 - torch.tensor(self.finished, dtype=torch.float32).mean())}


def chunk_seed(seed: int, index: int) -> int:
    """The sampling seed of chunk ``index`` of a rollout seeded ``seed`` (distinct for distinct pairs)."""
    return (seed * 1_000_033 + index) % 2**63


@torch.no_grad()
def sample_experience(model, tokenizer, prompts: list, rows: list[dict], reward, k: int, seed: int,
                      max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0,
                      unfinished_penalty: float | None = None, chat_template: str = "auto",
                      stop: list[str] | tuple[str, ...] = (), chat_template_kwargs: dict | None = None,
                      models: LiveModels | None = None) -> Experience:
    """Sample ``k`` completions per prompt from ``model`` (seeded; ending at a stop token — EOS or the chat
    template's end of turn —, a ``stop`` string or ``max_new_tokens``), score them with ``reward`` (a reward of
    the protocol, or a spec or pointwise function for `build_group_reward`; ``models`` for one that decodes).
    ``chat_template_kwargs``: passed to every render of a chat prompt, as in training."""
    gen = generate(model, tokenizer, prompts, k=k, max_new_tokens=max_new_tokens, temperature=temperature,
                   top_p=top_p, seed=seed, chat_template=chat_template, stop=stop,
                   chat_template_kwargs=chat_template_kwargs)
    return experience_from(gen, tokenizer, rows, reward, k, unfinished_penalty, chat_template, chat_template_kwargs,
                           models)


def experience_from(gen, tokenizer, rows: list[dict], reward, k: int, unfinished_penalty: float | None = None,
                    chat_template: str = "auto", chat_template_kwargs: dict | None = None,
                    models: LiveModels | None = None) -> Experience:
    """The `Experience` of a `Generation` of ``k`` samples per prompt (from `generate`, or an engine such as
    vLLM returning the same fields): rewards scored, samples as the exact token ids sampled."""
    prompts = gen.prompts
    scored = build_group_reward(reward)(list(prompts), gen.texts, list(rows), models)
    rewards = [penalize_unfinished(r, done, unfinished_penalty) for r, done in zip(scored.rewards, gen.finished)]
    eos = tokenizer.eos_token_id
    items, records = [], []
    for b, prompt in enumerate(prompts):
        ids = prompt_ids(tokenizer, prompt, chat_template, chat_template_kwargs)
        # the EOS actually sampled (e.g. <|im_end|> or <|endoftext|>), not necessarily tokenizer.eos; none
        # after a stop string: its ids already end with the token that completed it
        segments = [list(s) + ([stop] if stop is not None else []) for s, stop in zip(gen.token_ids[b], gen.stop_ids[b])]
        segments = [s if s else [eos] for s in segments]  # an empty, unfinished sample cannot occur; be safe
        items.append(TokenizedRecord(prompt_ids=ids, segments=segments, score_start=[0] * k, index=b))
        records.append(PreferenceRecord(prompt=prompt, responses=list(gen.texts[b]),
                                        scores=[float(x) for x in rewards[b]], sampled=True))
    return Experience(prompts=list(prompts), rows=list(rows), texts=gen.texts, finished=gen.finished,
                      rewards=torch.tensor(rewards, dtype=torch.float32).view(len(prompts), k),
                      data=TokenizedDataset(records, items), reward_metrics=dict(scored.metrics))
