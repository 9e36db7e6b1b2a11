"""alignkit: align language models with preference feedback.

    import alignkit
    result = alignkit.train({"objective": "dpo", "model": "path/to/model", "data": "pairs.jsonl"})
"""

__version__ = "0.1.0"


def train(config):
    """Train with a `TrainConfig` or a dict of its fields (see `alignkit.training.train`)."""
    from alignkit.training import train as _train

    return _train(config)


def __getattr__(name):
    if name == "TrainConfig":
        from alignkit.config import TrainConfig

        return TrainConfig
    if name == "Trainer":
        from alignkit.engine.trainer import Trainer

        return Trainer
    raise AttributeError(name)


__all__ = ["TrainConfig", "Trainer", "train", "__version__"]
