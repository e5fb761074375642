"""k-fold training shared by every model family."""

from kit.train.run import fold_train

__all__ = ["fold_train"]
