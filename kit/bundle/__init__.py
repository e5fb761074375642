"""Offline inference bundles for Kaggle code competitions: ``kit bundle`` and ``kit bundle upload``.

``build`` writes the bundle (fold weights, kit's wheel, ``predict.py``, manifest, Kaggle metadata), ``predict``
is what the bundle's ``predict.py`` runs, ``upload`` sends it as a Kaggle dataset. ``manifest`` owns
``manifest.json``, ``metadata`` the Kaggle metadata files, ``weights`` the ``.safetensors`` fold weights.
"""
