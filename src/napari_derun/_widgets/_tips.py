"""Tooltips of the Fuse widget, one per control."""

#: tooltips, one per control
FUSE_TIPS = {
    "a": "The image that carries the structure: phase contrast, MRI, visible light. "
         "Grey or RGB, 2D or nD (z, t); the same shape as the salient layer.",
    "b": "The image whose bright signal must survive: GFP or another fluorescence channel, PET, SPECT, infrared.",
    "model": "auto (default): the shipped model of the task the two images look like (fluorescence over phase "
             "contrast, a medical slice, a visible scene with infrared); the line below says which and why. "
             "gfp_pc: fluorescence on phase contrast; medical: PET/SPECT/CT with MRI; ivf: infrared with visible; "
             "admm: the training-free solver. Models registered from the console or the Fine-tune widget appear "
             "here. See 'Which model, which metric' in the docs.",
    "auto": "What 'auto' will run on the two layers above, and why (decided from the images' content; the layer "
            "names only when the content is unclear).",
    "swap": "Exchange the structural and the salient layer.",
    "restore": "Restore this input before fusing, when it is degraded: noise (low photon counts, a noisy camera: "
               "non-local means), haze, low light, blur, stripes, low contrast, an out-of-focus background, rain. "
               "auto: destripe planes with column stripes, denoise planes that look noisy, leave the rest as they "
               "are. "
               "Classical and training-free; on degraded inputs restoring first beat every model alone in most "
               "cases measured (docs/robustness.md). The choice is recorded in the result's metadata.",
    "luminance": "Give a plain grey result (the fused brightness) instead of the colour result. The colour result "
                 "shows the structure in grey and the salient signal in the salient layer's colour or colour "
                 "map, as napari's additive overlay of the two layers does.",
    "checkpoint": "A .safetensors model written by napari-derun (train, Fine-tune → Save), or a bioimage.io "
                  "package it exported (.zip or rdf.yaml). Loaded without unpickling code.",
    "device": "auto: a CUDA or Apple GPU when there is one, else the CPU.",
    "in_use": "The device the next run will use.",
    "stages": "Also add one layer per unfolding stage (the fused image after each of the 9 stages), to see "
              "how the network gets there.",
    "eh": "Also add the extracted feature maps E and H of every stage and filter (large: stages × filters planes).",
    "align": "Estimate a translation of the salient image onto the structural one (phase correlation) and "
             "apply it before fusing. For pairs that are nearly, but not exactly, registered.",
    "run": "Fuse in the background; the result is a new layer '<salient>_<structural>_derun', updated in "
           "place when you run again.",
    "cancel": "Stop after the current plane or tile; nothing is added.",
    "metrics": "Of the middle plane. EN: information (entropy); AG: sharpness (average gradient); SSIM: "
               "structure kept from both inputs; PSNR: closeness to both; "
               "SR: share of the salient image's contrast kept (1 = all). A copy of one input scores well on "
               "several metrics, so read them together (docs: 'Which model, which metric').",
    "all_metrics": "Compute all eight fusion metrics of the paper (EN, SSIM, PSNR, AG, FMI, VIF, UIQI, Qp) "
                   "for the last result, in the background.",
}
