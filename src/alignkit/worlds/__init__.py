"""Built-in toy worlds: a procedurally generated language with a known reward, for demos and tests.

    from alignkit.worlds import reviews
    reviews.reward("Review: The plot was superb!")   # 1.0
"""

from alignkit.worlds import reviews

__all__ = ["reviews"]
