"""The skeleton encoder (ST-GCN family): input streams, the graph network, and its predictions."""
from eai.encoder.model import (
    EncoderConfig,
    SkeletonEncoder,
    encoder_features,
    predict_proba,
)

__all__ = ["EncoderConfig", "SkeletonEncoder", "encoder_features", "predict_proba"]
