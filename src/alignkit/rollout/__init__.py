"""Sampling experience from the policy (`sample_experience`: K samples per prompt, the exact token ids,
scored by a reward of the protocol in `alignkit.rewards`), in-process or on Ray actors (`ray_backend`).
The training loop is `alignkit.algorithms.online.OnlineTrainer`; rewards live in `alignkit.rewards`
(re-exported here: `build_reward`, `build_preference` ...)."""

from alignkit.rewards.functions import build_reward, extract_answer, penalize_unfinished
from alignkit.rewards.preference import Preference, WinRateReward, build_preference, win_rates
from alignkit.rollout.experience import Experience, sample_experience

__all__ = ["Experience", "Preference", "WinRateReward", "build_preference", "build_reward", "extract_answer",
           "penalize_unfinished", "sample_experience", "win_rates"]
