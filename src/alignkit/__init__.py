"""alignkit: align language models with preference feedback.

    import alignkit
    result = alignkit.train({"objective": "dpo", "model": "path/to/model", "data": "pairs.jsonl"})
"""

__version__ = "0.1.0"


def train(config):
    """Train with a `TrainConfig` or a dict of its fields (see `alignkit.training.train`), with evaluation
    during training (``eval_prompts`` / ``eval_judge``) wired to `alignkit.eval.training_metrics.TrainingEvaluator`."""
    # imported here: `import alignkit` (and `alignkit --help`) must not load torch and transformers
    from alignkit.eval.training_metrics import TrainingEvaluator
    from alignkit.training import train as train_with

    return train_with(config, sampled_eval=TrainingEvaluator)


def __getattr__(name):  # the same: TrainConfig and Trainer load on first use
    if name == "TrainConfig":
        from alignkit.config import TrainConfig

        return TrainConfig
    if name == "Trainer":
        from alignkit.engine.trainer import Trainer

        return Trainer
    raise AttributeError(name)


__all__ = ["TrainConfig", "Trainer", "train", "__version__"]
