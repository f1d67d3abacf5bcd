"""Integer-only inference: the whole network from the first conv's ``x_int`` to the classifier.

:func:`chain.vgg_chains` reads what lies between two quantized convs off the model,
:func:`run.infer_network` runs the convs exactly and the SFU as thresholds (:mod:`qexport.ir.sfu`)
and compares every layer with the float model.
"""

from __future__ import annotations

from qexport.infer.chain import Chain, vgg_chains
from qexport.infer.run import InferReport, LayerAgreement, infer_network

__all__ = ["Chain", "InferReport", "LayerAgreement", "infer_network", "vgg_chains"]
