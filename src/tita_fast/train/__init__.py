"""Training TITA: FAMO task weighting, the fusion losses, paired-image data and the trainer.

``tita-fast train --config FILE`` runs :class:`Trainer`; the same from Python::

    from tita_fast.train import load_config, train
    trainer = train(load_config("run.yaml", ["iterations=500"]))
"""

from tita_fast.train.config import TaskConfig, TrainConfig, load_config
from tita_fast.train.data import PairSource, TaskBatches, TaskPairs
from tita_fast.train.famo import FAMO
from tita_fast.train.losses import LOSSES, MEFLoss, MFFLoss, VIFLoss, build_loss
from tita_fast.train.synthetic import make_pairs
from tita_fast.train.trainer import Trainer, train

__all__ = [
    "FAMO", "LOSSES", "MEFLoss", "MFFLoss", "PairSource", "TaskBatches", "TaskConfig", "TaskPairs", "TrainConfig",
    "Trainer", "VIFLoss", "build_loss", "load_config", "make_pairs", "train",
]  # fmt: skip
