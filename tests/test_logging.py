"""What the console shows of a run."""


def test_progress_bar_shows_only_metrics_the_record_has():
    from alignkit.engine.logging import progress_fields

    assert progress_fields({"loss": 0.693147, "rewards/accuracy": 0.625, "lr": 1e-3}) == {"loss": "0.6931", "acc": "0.62"}
    assert progress_fields({"loss": -0.0071, "reward/mean": 0.3359}) == {"loss": "-0.0071", "reward": "0.34"}
    assert progress_fields({"loss": 1.0}) == {"loss": "1.0000"}
