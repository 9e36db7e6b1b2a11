"""Online RL pieces: sampling experience from the policy (`sample_experience`), reward functions
(`build_reward`) and pairwise preferences for self-play (`build_preference`, rollout/preference.py).
The training loop is `alignkit.engine.online.OnlineTrainer`."""

from alignkit.rollout.experience import Experience, sample_experience
from alignkit.rollout.preference import Preference, WinRateReward, build_preference, win_rates
from alignkit.rollout.rewards import build_reward, extract_answer, penalize_unfinished

__all__ = ["Experience", "Preference", "WinRateReward", "build_preference", "build_reward", "extract_answer",
           "penalize_unfinished", "sample_experience", "win_rates"]
