"""kit: a Kaggle competition kit for dense facial landmarks."""

import os

# albumentations checks PyPI for updates on import unless told not to: never touch the network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
