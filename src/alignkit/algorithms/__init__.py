"""Online training as recipes: one file per family on one loop (docs/architecture.md, "Online recipes").

* `online` — `OnlineTrainer`, the loop: rollout → reward → targets → policy loss → update;
* `recipe` — what a family adds to a step (`Recipe`), what it is given (`RunContext`, `Rollout`), the registry;
* `policy_gradient` — grpo, dr_grpo, rloo, remax, reinforce_pp (an advantage estimator each);
* `ppo` (+ `value`) — PPO, the recipe owning its value model;
* `preference` — any offline objective on fresh samples (online DPO, RAFT, CoPG ...);
* `selfplay` — sppo, nash_md;
* `nash` — online_ipo, ipo_md (samples a policy/reference mixture), egpo (extragradient);
* `iterative` — rounds of sample → label → train offline.

`alignkit.training.train` picks the kind of run; the engine below knows none of these names.
"""

from alignkit.algorithms import nash, policy_gradient, ppo, preference, selfplay  # noqa: F401, E402  (register the recipes)
