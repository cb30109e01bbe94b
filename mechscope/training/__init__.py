"""Training transcoders: the run's configuration (`config.TrainConfig`), the trainable per-layer and cross-layer
dictionaries (`trainer`, `clt_trainer`), the training loop over streamed activations (`train`) and its checkpoints
and saved sets (`checkpoints`).

>>> from mechscope.training.config import TrainConfig
>>> TrainConfig(tokens=1000, features=64, k=8).k
8
"""
