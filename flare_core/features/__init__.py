"""Hidden-layer features for any model format (eager, TorchScript, torch.export).

- :func:`list_layers`: the layers FLARE reads (BatchNorm inputs, else conv/norm block outputs).
- :class:`ActivationRecorder`, :func:`extract_activations`: names in, activations out.
- :func:`abnormality`, :class:`ChannelMoments`: FLARE's per-layer statistic.
- :func:`extract_abnormality_features`, :func:`extract_pooled_features`, :func:`extract_latent_features`
  (pooled penultimate features and logits of one pass): batched over a dataset.

Model-level evidence (plain forward passes on transformed images, in their own modules): the shortcut probe
(:mod:`.shortcuts`: does the model obey smoothing or sharpening as a trigger?) and the trigger test
(:mod:`.mode_trigger`: does a group's mean image difference, put on other classes' images, act as one?).
"""
from flare_core.features.abnormal import ChannelMoments, abnormality
from flare_core.features.extract import (FeatureMatrix, LatentFeatures, extract_abnormality_features,
                                        extract_latent_features, extract_pooled_features)
from flare_core.features.hooks import ActivationRecorder, extract_activations
from flare_core.features.layers import LayerInfo, list_layers

__all__ = [
    "ActivationRecorder",
    "ChannelMoments",
    "FeatureMatrix",
    "LatentFeatures",
    "LayerInfo",
    "abnormality",
    "extract_abnormality_features",
    "extract_activations",
    "extract_latent_features",
    "extract_pooled_features",
    "list_layers",
]
