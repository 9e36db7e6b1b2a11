"""The log-prob executor: sequence statistics of completions (logits only where needed, in vocabulary chunks,
one prompt shared by its responses behind a block mask) and reward-model scores read from the same layout.

Everything that scores sequences — the trainer, the reference cache, rollouts, reward functions, judges —
goes through here, so the numbers a loss sees are the numbers a reward or a report sees."""
