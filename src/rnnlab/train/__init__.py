"""Training: TrainConfig, the generic Trainer with hooks, checkpoints (safetensors + JSON) and DDP helpers."""

from rnnlab.train.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from rnnlab.train.config import TrainConfig
from rnnlab.train.hooks import Checkpointing, EarlyStopping, Hook
from rnnlab.train.metrics_log import MetricsLog, TensorBoard
from rnnlab.train.progress import Progress
from rnnlab.train.trainer import Trainer, TrainingDiverged, TrainState, reduce_metrics

__all__ = ["TrainConfig", "Trainer", "TrainState", "TrainingDiverged", "Hook", "EarlyStopping", "Checkpointing",
           "Progress", "MetricsLog", "TensorBoard", "save_checkpoint", "load_checkpoint", "load_model",
           "CheckpointError", "reduce_metrics"]
