"""Online RL pieces: sampling experience from the policy (`sample_experience`) and reward functions
(`build_reward`). The training loop is `alignkit.engine.online.OnlineTrainer`."""

from alignkit.rollout.experience import Experience, sample_experience
from alignkit.rollout.rewards import build_reward, extract_answer, penalize_unfinished

__all__ = ["Experience", "build_reward", "extract_answer", "penalize_unfinished", "sample_experience"]
