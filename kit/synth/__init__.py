"""Synthetic demo competition: rendered faces with a dense, mirror-symmetric 3D landmark template."""

from kit.synth.competition import SynthSummary, generate_competition
from kit.synth.face import FaceTemplate, make_template

__all__ = ["FaceTemplate", "SynthSummary", "generate_competition", "make_template"]
