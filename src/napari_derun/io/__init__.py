"""Files in and out, with their metadata: nD TIFF stacks with OME/ImageJ axes and the provenance of a fusion
(:mod:`.images`), single images and folders of pairs (:mod:`.planes`), model checkpoints in safetensors
(:mod:`.checkpoint`) and reading bioimage.io packages (:mod:`.bioimage_io`)."""
