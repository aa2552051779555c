"""bioimage.io model packages: a trained DeRUN that runs outside napari, and back.

:func:`export_bioimageio` writes a model package of the current bioimage.io spec (model 0.5, with
``bioimageio.spec``; ``pip install "napari-derun[bioimageio]"``):

* two inputs, ``structural`` and ``salient`` (batch, channel, y, x; the same size), each scaled by its
  0.1-99.9 percentiles and clipped to [0, 1] (bioimage.io preprocessing); one output, ``fused``,
  clipped to [0, 1];
* the weights as ``pytorch_state_dict`` with the architecture
  :class:`~napari_derun.core.model.DeRUNPair` and its configuration, and as TorchScript (traced, kept
  when it equals the eager model on other sizes), plus the napari-derun checkpoint (``.safetensors``,
  with the training provenance) as an attachment;
* test tensors and a cover made by fusing a built-in sample pair with the model, a documentation page,
  the DeRUN paper's citation, and the training provenance under ``config.napari_derun``.

:func:`load_bioimageio` reads such a package (a ``.zip``, a folder, or its ``rdf.yaml``) without
``bioimageio.spec`` and without unpickling: from the attached ``.safetensors`` checkpoint.
``napari_derun.fuse(model=PACKAGE)``, the CLI and the widgets accept a package wherever they accept a
checkpoint.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..data.preprocess import DEFAULT_PERCENTILES
from ..io.bioimage_io import CHECKPOINT_NAME, is_bioimageio_package, load_bioimageio

__all__ = ["export_bioimageio", "load_bioimageio", "is_bioimageio_package", "CHECKPOINT_NAME"]

CITATION = ("He, C., Li, K., Xu, G., Zhang, Y., Hu, R., Guo, Z., Li, X. Degradation-Resistant Unfolding Network "
            "for Heterogeneous Image Fusion. ICCV 2023, pp. 12611-12621.")
CITATION_URL = ("https://openaccess.thecvf.com/content/ICCV2023/html/He_Degradation-Resistant_Unfolding_Network_"
                "for_Heterogeneous_Image_Fusion_ICCV_2023_paper.html")


# ----------------------------------------------------------------------------------------- export
def _sample_for(info: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, str]:
    """A built-in sample pair that fits the model's task: from the tasks of its training data, else its
    name, else the model it was fine-tuned from (a GFP model named 'finetuned-1' still gets the GFP sample)."""
    from ..data import sample_data

    training = info.get("training") or {}
    words = [*((info.get("data") or {}).get("tasks") or []), info.get("name", ""), training.get("init", ""),
             (training.get("config") or {}).get("modalities") or ""]
    text = " ".join(map(str, words)).lower()
    for key, task, what in (("gfp", "gfp_pc", "GFP / phase-contrast"), ("spect", "spect_mri", "SPECT / MRI"),
                            ("ct_mri", "ct_mri", "CT / MRI"), ("ivf", "ivf", "infrared / visible"),
                            ("infrared", "ivf", "infrared / visible"), ("pet", "pet_mri", "PET / MRI"),
                            ("medical", "pet_mri", "PET / MRI")):
        if key in text:
            a, b = sample_data.SAMPLES[task]()
            return a, b, f"the built-in {what} sample"
    a, b = sample_data.pet_mri()
    return a, b, "the built-in PET / MRI sample"


def _test_inputs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Luminance planes as float32 0-255 values saturated at both ends (1 % of the pixels each), so that
    their 0.1 and 99.9 percentiles are exactly 0 and 255 however a tool interpolates percentiles."""
    from ..data.preprocess import prepare_pair

    pp = prepare_pair(a, b)
    out = []
    for x in (pp.a, pp.b):
        lo, hi = np.percentile(x, (1.0, 99.0))
        y = np.clip((x - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
        out.append(np.round(y * 255.0).astype(np.float32)[None, None])
    return out[0], out[1]


def _cover(a: np.ndarray, b: np.ndarray, f: np.ndarray, path: Path) -> None:
    """A 2:1 cover: the inputs overlaid (structural grey, salient green) | the fused image coloured the same way
    (:func:`napari_derun.data.colour.compose`), clipped to [0, 1] (never wrapped around to white)."""
    from PIL import Image

    from ..data.colour import compose

    a, b = np.clip(a, 0, 1), np.clip(b, 0, 1)
    over = np.stack([a, np.clip(a + b, 0, 1), a], -1)
    fused = compose(np.clip(f, 0, 1), a, b, False, False, "overlay", "green")
    img = (np.clip(np.concatenate([over, fused], 1), 0, 1) * 255).round().astype(np.uint8)
    Image.fromarray(img).save(path)


def _documentation(name: str, net: Any, info: dict[str, Any], sample: str) -> str:
    best = (info.get("metrics") or {}).get("best") or {}
    metrics = best.get("metrics") or {}
    lines = [
        f"# {name}: DeRUN image fusion (napari-derun)",
        "",
        "Fuses two registered images from different sensors: `structural` (phase contrast, MRI, visible light) "
        "and `salient` (GFP or another fluorescence channel, PET, SPECT, CT, infrared), into one image that "
        "keeps the structure of the first and the bright signal of the second.",
        "",
        "## Model",
        f"DeRUN, the Degradation-Resistant Unfolding Network (ICCV 2023): {net.config.n_stages} unfolded ADMM "
        f"stages, {net.num_parameters():,} parameters, implemented by napari-derun "
        "(`napari_derun.core.model.DeRUNPair`).",
        "",
        "## Inputs and output",
        "* `structural`, `salient`: (batch, 1, y, x) float32, the same size, any intensity range: each is "
        "scaled by its own 0.1-99.9 percentiles and clipped to [0, 1] (the package's preprocessing). Colour "
        "images: pass their luminance.",
        "* `fused`: (batch, 1, y, x) in [0, 1].",
        "",
        "## Training",
        f"* Objective: {((info.get('training') or {}).get('objective')) or 'see config'}; data: "
        f"{', '.join(map(str, (info.get('data') or {}).get('tasks') or [])) or 'see config'}.",
    ]
    if metrics:
        lines.append("* Validation (held-back pairs): "
                     + ", ".join(f"{k} {v:.3g}" for k, v in metrics.items() if isinstance(v, (int, float))))
    lines += [
        "* The full provenance (settings, data, history) is in `config.napari_derun` of rdf.yaml and in the "
        f"attached `{CHECKPOINT_NAME}`.",
        "",
        f"Test tensors and cover: {sample}, fused by this model.",
        "",
        "## Use",
        "* In napari or Python: `pip install napari-derun`, then `napari_derun.fuse(a, b, model=\"package.zip\")` "
        "or pick the package as the checkpoint in the Fuse widget.",
        "* With bioimage.io tools: `bioimageio predict` / `bioimageio.core` (the environment needs napari-derun).",
        "",
        "## Cite",
        CITATION,
        "",
    ]
    return "\n".join(lines)


def export_bioimageio(model: Any = "gfp_pc", out: str | os.PathLike = "derun.zip", *,
                      name: str | None = None, sample: tuple[np.ndarray, np.ndarray] | None = None,
                      authors: list[str] | None = None, overwrite: bool = False) -> Path:
    """Write a bioimage.io model package of a DeRUN model.

    Args:
        model: a shipped model name, a session model, a checkpoint path or a DeRUN (not ``admm``:
            the training-free solver has no weights).
        out: a ``.zip`` file (the usual package) or a folder.
        name: the package's name (default: the model's name).
        sample: ``(structural, salient)`` images for the test tensors and the cover (default: a built-in
            sample pair that fits the model's task).
        authors: names for the package's authors (default: ``["napari-derun"]``).
        overwrite: replace an existing package: a ``.zip`` atomically (a new file renamed over it: on any
            error the old one stays), a folder file by file (only the files of the package; the folder's
            other files are never touched).

    Returns:
        The path written. The package is validated by ``bioimageio.spec`` while it is built.
    """
    try:
        from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder
        from bioimageio.spec.model import v0_5 as bmz
    except ImportError as e:  # pragma: no cover - depends on the optional extra
        raise ImportError("exporting bioimage.io packages needs bioimageio.spec: "
                          "pip install 'napari-derun[bioimageio]'") from e
    import torch

    from ..io.checkpoint import save_checkpoint
    from ..core.model import DeRUNPair
    from .registry import load_model

    out = check_package_target(out, overwrite, model)
    fuser = load_model(model, "cpu")
    if fuser.kind != "derun":
        raise ValueError("the training-free solver 'admm' has no weights to export; export a trained model "
                         "(gfp_pc, medical, ivf, a fine-tuned one or a checkpoint)")
    net = fuser.module.eval().float().cpu()
    info = dict(fuser.info or {})
    name = name or fuser.name or "derun"
    cfg = net.config.to_dict()
    pair = DeRUNPair(**cfg).eval()
    pair.load_state_dict(net.state_dict())
    if sample is None:
        a_img, b_img, sample_text = _sample_for({**info, "name": name})
    else:
        (a_img, b_img), sample_text = sample, "the sample pair given at export"
    ta, tb = _test_inputs(a_img, b_img)
    with torch.inference_mode():
        fused = pair(torch.from_numpy(ta / np.float32(255.0)), torch.from_numpy(tb / np.float32(255.0))).numpy()

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        np.save(d / "structural.npy", ta)
        np.save(d / "salient.npy", tb)
        np.save(d / "fused.npy", fused.astype(np.float32))
        torch.save(pair.state_dict(), d / "weights.pt")
        traced = _torchscript(pair, d / "weights_torchscript.pt")
        save_checkpoint(d / CHECKPOINT_NAME, net, {k: v for k, v in info.items()
                                                    if k not in ("format", "format_version", "config")})
        _cover(ta[0, 0] / 255.0, tb[0, 0] / 255.0, fused[0, 0], d / "cover.png")
        (d / "README.md").write_text(_documentation(name, net, info, sample_text), encoding="utf-8")
        (d / "environment.yaml").write_text(
            "name: napari-derun\nchannels: [conda-forge]\ndependencies:\n  - python>=3.10\n  - pip\n"
            f"  - pip:\n    - napari-derun>={_version()}\n    - torch>={torch.__version__.split('+')[0]}\n",
            encoding="utf-8")

        def space_axes(ref: bool, output: bool):
            if output:
                return [bmz.SpaceOutputAxis(id=bmz.AxisId(ax), size=bmz.SizeReference(
                    tensor_id=bmz.TensorId("structural"), axis_id=bmz.AxisId(ax))) for ax in ("y", "x")]
            if ref:
                return [bmz.SpaceInputAxis(id=bmz.AxisId(ax), size=bmz.SizeReference(
                    tensor_id=bmz.TensorId("structural"), axis_id=bmz.AxisId(ax))) for ax in ("y", "x")]
            return [bmz.SpaceInputAxis(id=bmz.AxisId(ax), size=bmz.ParameterizedSize(min=32, step=8))
                    for ax in ("y", "x")]

        prep = [bmz.ScaleRangeDescr(kwargs=bmz.ScaleRangeKwargs(
                    axes=(bmz.AxisId("y"), bmz.AxisId("x")), min_percentile=DEFAULT_PERCENTILES[0],
                    max_percentile=DEFAULT_PERCENTILES[1])),
                bmz.ClipDescr(kwargs=bmz.ClipKwargs(min=0.0, max=1.0))]

        def input_descr(tid: str, what: str, ref: bool):
            return bmz.InputTensorDescr(
                id=bmz.TensorId(tid), description=what,
                axes=[bmz.BatchAxis(), bmz.ChannelAxis(channel_names=[bmz.Identifier(tid)]), *space_axes(ref, False)],
                test_tensor=bmz.FileDescr(source=d / f"{tid}.npy"), preprocessing=prep,
                data=bmz.IntervalOrRatioDataDescr(type="float32"))

        inputs = [input_descr("structural", "structural image: phase contrast, MRI, visible light", False),
                  input_descr("salient", "salient image: GFP / fluorescence, PET, SPECT, CT, infrared", True)]
        outputs = [bmz.OutputTensorDescr(
            id=bmz.TensorId("fused"), description="fused image in [0, 1]",
            axes=[bmz.BatchAxis(), bmz.ChannelAxis(channel_names=[bmz.Identifier("fused")]), *space_axes(True, True)],
            test_tensor=bmz.FileDescr(source=d / "fused.npy"),
            data=bmz.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))]
        weights = bmz.WeightsDescr(pytorch_state_dict=bmz.PytorchStateDictWeightsDescr(
            source=d / "weights.pt",
            architecture=bmz.ArchitectureFromLibraryDescr(callable=bmz.Identifier("DeRUNPair"),
                                                          import_from="napari_derun.core.model", kwargs=cfg),
            pytorch_version=bmz.Version(torch.__version__.split("+")[0]),
            dependencies=bmz.FileDescr(source=d / "environment.yaml")),
            torchscript=bmz.TorchscriptWeightsDescr(
                source=d / "weights_torchscript.pt", parent="pytorch_state_dict",
                pytorch_version=bmz.Version(torch.__version__.split("+")[0])) if traced else None)
        provenance = json.loads(json.dumps({k: v for k, v in info.items() if k not in ("history",)}, default=str))
        descr = bmz.ModelDescr(
            name=_bmz_name(name),
            description=("DeRUN (Degradation-Resistant Unfolding Network) fusion of a structural and a salient image "
                         "from different sensors, exported by napari-derun"),
            authors=[bmz.Author(name=n) for n in (authors or ["napari-derun"])],
            cite=[bmz.CiteEntry(text=CITATION, url=bmz.HttpUrl(CITATION_URL))],
            license=bmz.LicenseId("BSD-3-Clause"),
            documentation=bmz.FileDescr(source=d / "README.md"),
            covers=[bmz.FileDescr(source=d / "cover.png")],
            attachments=[bmz.FileDescr(source=d / CHECKPOINT_NAME)],
            tags=["image-fusion", "multimodal", "deep-unfolding", "napari", "derun", "pytorch"],
            inputs=inputs, outputs=outputs, weights=weights,
            version=bmz.Version(_version()),
            config=bmz.Config(**{"napari_derun": provenance}),
        )
        if out.suffix.lower() == ".zip":
            install_package(out, lambda target: save_bioimageio_package(descr, output_path=target), overwrite)
        else:
            install_package(out, lambda target: save_bioimageio_package_as_folder(descr, output_path=target),
                            overwrite)
    return out


def check_package_target(out: str | os.PathLike, overwrite: bool, model: Any = None) -> Path:
    """``out`` as a Path when a package may be written there, else an error saying why (before any work):
    a ``.zip`` that is a folder, a folder package over a file, an existing package without ``overwrite``,
    or the model's own file."""
    from .._files import check_not_input

    out = Path(out)
    from .registry import list_models

    if isinstance(model, (str, os.PathLike)) and str(model) not in list_models() and Path(model).exists():
        src = Path(model)
        check_not_input(out, [src])
        if out.is_dir() and src.resolve().parent == out.resolve():
            raise ValueError(f"-o {out} holds the model being exported ({src}); napari-derun never writes onto its "
                             "inputs: export to another folder or a .zip")
    if out.suffix.lower() == ".zip":
        if out.is_dir():
            raise IsADirectoryError(f"{out} is a folder; give the package another name (a .zip file) or a folder "
                                    "name without .zip")
    elif out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; a folder package needs a folder (or give a .zip file name)")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists and was left as it is; give another name, or pass --overwrite "
                              "(Python: overwrite=True) to replace the package's own files there")
    return out


def install_package(out: Path, write, overwrite: bool) -> None:
    """Write a package with ``write(target)`` into a fresh temporary place next to ``out``, then put it at
    ``out``: a ``.zip`` by one rename (no-clobber without ``overwrite``), a folder file by file with
    ``rdf.yaml`` last. Only the package's own files are replaced; nothing else in a folder is deleted.
    On any error ``out`` is as it was (the temporary place is removed)."""
    import shutil

    from .._files import rename_no_clobber, space_message

    out = Path(out)
    into_existing = out.suffix.lower() != ".zip" and out.is_dir()
    base = out if into_existing else out.parent
    base.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".napari-derun-export.", suffix=".tmp", dir=base))
    try:
        try:
            target = stage / ("package.zip" if out.suffix.lower() == ".zip" else "package")
            write(target)
        except OSError as e:
            raise space_message(e, out) from None
        if out.suffix.lower() == ".zip":
            if overwrite:
                os.replace(target, out)
            else:
                rename_no_clobber(target, out)
            return
        files = sorted((f for f in target.rglob("*") if f.is_file()), key=lambda f: f.name in ("rdf.yaml",
                                                                                              "bioimageio.yaml"))
        for f in files:
            dest = out / f.relative_to(target)
            if dest.is_dir() and not dest.is_symlink():
                raise IsADirectoryError(f"cannot write {dest}: a folder of that name is in the way; nothing was "
                                        "replaced for it")
        out.mkdir(parents=True, exist_ok=True)
        for f in files:
            dest = out / f.relative_to(target)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _torchscript(pair: Any, path: Path) -> bool:
    """Trace ``pair`` to TorchScript and keep it only if the traced module equals the eager one on
    sizes other than the traced size (odd sizes included); ``False`` when it does not."""
    import warnings

    import torch

    g = torch.Generator().manual_seed(0)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python values: checked below instead
        try:
            ex = (torch.rand(1, 1, 64, 64, generator=g), torch.rand(1, 1, 64, 64, generator=g))
            traced = torch.jit.trace(pair, ex, check_trace=False)
            for shape in ((2, 1, 96, 80), (1, 1, 45, 71)):
                a, b = torch.rand(*shape, generator=g), torch.rand(*shape, generator=g)
                if not torch.allclose(traced(a, b), pair(a, b), atol=1e-5):
                    return False
        except Exception:  # not traceable: the package keeps the state-dict weights only
            return False
    traced.save(str(path))
    return True


def _bmz_name(name: str) -> str:
    """A package name of the characters bioimage.io allows (letters, digits, space, _ - ( ))."""
    import re

    clean = re.sub(r"[^A-Za-z0-9 _\-()]", "-", f"DeRUN {name}").strip()
    return clean[:128] or "DeRUN"


def _version() -> str:
    from .. import __version__

    return str(__version__)

