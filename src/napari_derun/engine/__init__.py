"""Running a model on real data: the model registry and devices (:mod:`.registry`), nD stacks, tiles and
dask (:mod:`.stacks`), shipping a model to dask workers (:mod:`.distributed`), checkpoints
(:mod:`.checkpoint`) and bioimage.io packages (:mod:`.bioimage_io`)."""
