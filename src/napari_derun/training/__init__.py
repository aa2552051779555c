"""Training and fine-tuning: the loop (:mod:`.loop`: :func:`~.loop.train`, :func:`~.loop.finetune`), its
settings (:mod:`.config`: :class:`~.config.TrainConfig`), typed events (:mod:`.events`), validation by mean
rank (:mod:`.validation`) and the DistributedDataParallel strategy (:mod:`.ddp`).

Import names from the module that defines them (``from napari_derun.training.loop import train``); the
package itself imports nothing, so importing it imports no torch.
"""
