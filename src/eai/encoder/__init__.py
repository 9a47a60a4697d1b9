"""The skeleton encoder (ST-GCN family) and its training as an emotion classifier."""
from eai.encoder.model import EncoderConfig, SkeletonEncoder
from eai.encoder.train import SCHEDULES, TrainConfig, predict_proba, train_encoder, window_set

__all__ = ["EncoderConfig", "SkeletonEncoder", "TrainConfig", "SCHEDULES", "train_encoder", "predict_proba",
           "window_set"]
