"""Pinned recipe runs (torchtune style): the logged metrics of the first steps of tiny seeded online runs
of every online family — grpo (two updates per rollout: the clipped ratio acts), rloo, remax (greedy
baseline), reinforce_pp, ppo (value model, KL in the reward, GAE), online dpo (K = 2), raft (best-of-K
SFT), sppo (win-rate reward) and nash_md (mixture opponents).

The figures in ``tests/data/recipe_pins.json`` were measured before online training was reorganised into
recipes (src/alignkit/algorithms/) and are unchanged since: a refactor that moves code must reproduce
them; a change to a recipe's arithmetic shows here. Timing fields are not pinned. Measured on CPU, one
torch thread, float32, torch 2.13; regenerate (only for an intended change of behaviour, saying why) with
``PYTHONPATH=src python tests/test_recipes_pinned.py``.
"""

import json
import math
from pathlib import Path

import pytest

PINS = Path(__file__).parent / "data" / "recipe_pins.json"
TIMING = {"seconds_per_step", "generation_seconds", "tokens_per_second", "peak_memory_mb"}
COMMON = dict(max_steps=3, batch_size=4, num_samples=4, max_new_tokens=4, lr=1e-3, seed=0, progress=False,
              reward="rule:length:8")
RUNS = {
    "grpo": dict(objective="grpo", updates_per_batch=2, hparams={"beta": 0.05}),
    "rloo": dict(objective="rloo"),
    "remax": dict(objective="remax"),
    "reinforce_pp": dict(objective="reinforce_pp"),
    "ppo": dict(objective="ppo", num_samples=2, updates_per_batch=2, kl_coef=0.1),
    "online_dpo": dict(objective="dpo", num_samples=2),
    "raft": dict(objective="sft"),
    "sppo": dict(objective="sppo", reward="winrate:bt:rule:length:8"),
    "nash_md": dict(objective="nash_md", num_samples=2, reward="mixture:bt:rule:length:8"),
}


def prompts_file(folder: Path) -> str:
    path = folder / "prompts.jsonl"
    subjects = ["The movie was", "The film was", "The plot was", "The cast was"]
    path.write_text("".join(json.dumps({"prompt": f"{subjects[i % 4]} number {i}"}) + "\n" for i in range(16)))
    return str(path)


def pinned_history(name: str, model: str, folder: Path) -> list[dict]:
    """The per-step records of run ``name`` (no timings), through the public ``train`` entry point."""
    import torch

    import alignkit

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = alignkit.train({**COMMON, **RUNS[name], "model": model, "prompts": prompts_file(folder),
                        "output_dir": str(folder / name)})
    finally:
        torch.set_num_threads(threads)
    return [{k: v for k, v in h.items() if k not in TIMING} for h in result.history if "loss" in h]


def close(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == pytest.approx(b, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_recipe_reproduces_its_pinned_first_steps(name, tiny_path, tmp_path):
    want = json.loads(PINS.read_text())[name]
    got = pinned_history(name, tiny_path, tmp_path)
    assert len(got) == len(want) == COMMON["max_steps"]
    for step, (g, w) in enumerate(zip(got, want), start=1):
        assert sorted(g) == sorted(w), f"step {step}: metric names changed: {sorted(set(g) ^ set(w))}"
        bad = {k: (g[k], w[k]) for k in w if not close(g[k], w[k])}
        assert not bad, f"{name} step {step}: (got, pinned) {bad}"


if __name__ == "__main__":  # regenerate the pins (see the module docstring)
    import tempfile

    from alignkit.models.tiny import build_tiny

    with tempfile.TemporaryDirectory() as tmp:
        model = str(build_tiny(Path(tmp) / "tiny", seed=0))
        pins = {name: pinned_history(name, model, Path(tmp)) for name in sorted(RUNS)}
    PINS.write_text(json.dumps(pins, indent=1, sort_keys=True) + "\n")
    print(f"wrote {PINS}")
