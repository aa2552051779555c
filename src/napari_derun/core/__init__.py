"""The mathematics, on torch only: operators and the exact Fourier solve (:mod:`.ops`), the unrolled
loop pad → stages → crop written once (:mod:`.unrolled`), the HIFM model
and its training-free ADMM solver (:mod:`.hifm`), DeRUN (:mod:`.model`), LGDE and the paper's loss
(:mod:`.losses`), the training objectives (:mod:`.objectives`). Imports nothing else of the package."""
