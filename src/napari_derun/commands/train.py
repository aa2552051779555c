"""``napari-derun train``: train or fine-tune DeRUN on a folder of registered pairs."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


_PARSER = None

#: TrainConfig fields offered as options: type, default, choices and help come from the config itself
CLI_FIELDS = ("epochs", "lr", "batch", "patch", "steps_per_epoch", "decay", "objective", "target", "select",
              "min_sr", "device", "seed", "grad_clip",
              "optimizer", "strategy", "degrade", "modalities", "photometric", "restore", "w_salient", "lift_gain")


def add_config_options(parser: argparse.ArgumentParser, names) -> None:
    """``--field-name`` options derived from :class:`~napari_derun.training.config.TrainConfig` (not re-typed)."""
    from ..training.config import TrainConfig
    from ._options import add_model_options

    add_model_options(parser, TrainConfig, names)


#: CLI option (dest) -> TrainConfig field, for options that override a resumed run's stored settings
_RESUME_OVERRIDES = {"epochs": "epochs", "lr": "lr", "batch": "batch", "patch": "patch",
                     "steps_per_epoch": "steps_per_epoch", "decay_start": "decay_start",
                     "decay_every": "decay_every", "decay": "decay", "device": "device", "threads": "num_threads",
                     "seed": "seed", "no_val_metrics": "val_metrics", "select": "select", "grad_clip": "grad_clip",
                     "min_sr": "min_sr", "strategy": "strategy"}


def _explicit(argv) -> set[str]:
    """Destinations of the options written on the command line (not left at their defaults)."""
    out = set()
    for tok in argv or []:
        if tok.startswith("-"):
            act = _PARSER._option_string_actions.get(tok.split("=", 1)[0]) if _PARSER is not None else None
            if act is not None:
                out.add(act.dest)
    return out


def register(sub) -> None:
    global _PARSER
    p = sub.add_parser(
        "train",
        help="train / fine-tune DeRUN on a folder of pairs (DIR/a, DIR/b) and write a .safetensors model",
        description="Train DeRUN on registered pairs: DIR/a (structural) and DIR/b (salient), same file names. "
        "Schedule defaults follow the paper (Adam, lr 1e-4, batch 4, 150 epochs, x0.9 every 10 epochs after 50); "
        "the objective defaults to the fusion objective (--objective paper for Eq. 14). "
        "On several GPUs or machines: torchrun --nproc_per_node=N -m napari_derun.cli train ... --strategy ddp.",
    )
    p.add_argument("dir", help="training folder with a/ and b/ sub-folders")
    p.add_argument("--out", "-o", required=True,
                   help="output .safetensors file (best model by validation mean rank, or loss with --select loss)")
    p.add_argument("--init", default="admm", help="admm (model-based start), a shipped model name or a checkpoint path")
    add_config_options(p, CLI_FIELDS)
    p.add_argument("--decay-start", type=int, default=None, help="epochs before the lr decay (default: epochs/3, 50 for 150)")
    p.add_argument("--decay-every", type=int, default=None, help="epochs between lr decays (default: epochs/15, 10 for 150)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--val", default=None, help="validation folder (a/, b/)")
    g.add_argument("--val-fraction", type=float, default=None,
                   help="hold back this fraction of DIR's pairs (evenly over the sorted names) for validation")
    p.add_argument("--no-val-metrics", action="store_true", help="validation loss only (skip the fusion metrics)")
    p.add_argument("--weights", nargs=4, type=float, default=None, metavar=("INT", "GRAD", "SSIM", "LGDE"),
                   help="weights of the fusion objective's terms (default 5 10 1 0.1)")
    p.add_argument("--plain", action="store_true",
                   help="a new model without the guided extension (the paper's V + f(U - V) form)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--checkpoint", default=None, help="write a resumable checkpoint here after every epoch")
    p.add_argument("--resume", default=None, help="continue from a checkpoint written with --checkpoint")
    p.add_argument("--name", default=None, help="model name stored in the file (default: the output file's stem)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    _PARSER = p


def run(args: argparse.Namespace) -> int:
    import os

    _check_args(args)
    # in a torchrun job (--strategy ddp) every process runs this; rank 0 talks and writes the model
    main_rank = args.strategy != "ddp" or int(os.environ.get("RANK", 0)) == 0
    if not main_rank:
        args.quiet = True

    from ..training.loop import PairDataset, peak_rss_mb

    data = PairDataset(args.dir)
    say = print if main_rank else (lambda *a, **k: None)
    for msg in data.problems:
        say(f"warning: {msg}")
    val = None
    if args.val:
        val = PairDataset(args.val)
    elif args.val_fraction:
        data, val = data.split_fraction(args.val_fraction)
    cfg = _config(args, say)
    say(f"training on {len(data)} pairs" + (f", validating on {len(val)}" if val is not None else "")
          + f"; init={args.init if not args.resume else 'resume ' + args.resume}")
    res = _train_until_done_or_interrupted(args, data, val, cfg)
    if not main_rank:
        return 0
    if not res.history:
        print("stopped before the first epoch finished: nothing was trained, no model written", file=sys.stderr)
        return 1
    out = Path(args.out)
    name = args.name or out.name.split(".")[0]
    check_fuses(res.best_model, args.lr)  # a diverged model is never saved as the result
    where = save_or_rescue(res, out, name)
    if where != out:
        return 1
    print(f"wrote {out} (name {name!r}, {res.info['training']['epochs_done']} epochs, "
          f"{res.info['training']['seconds']:.0f} s on {res.info['training']['device']}, "
          f"peak RSS {peak_rss_mb():.0f} MiB"
          + (f"; {res.info['ddp']['world_size']} processes, global batch {res.info['ddp']['global_batch']}"
             if "ddp" in res.info else "") + ")")
    return 0


def _check_args(args: argparse.Namespace) -> None:
    """Refuse before any work: an existing --out (without --overwrite), an unwritable place, bad numbers."""
    from .._files import check_writable

    inputs = [x for x in (args.init, args.resume) if x and Path(x).exists()]
    check_writable(args.out, overwrite=args.overwrite, inputs=inputs)
    if args.checkpoint:
        _check_checkpoint_target(args)
    for name in ("epochs", "batch", "patch"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.patch < 16:
        raise ValueError(f"--patch must be at least 16 pixels (the model's filters and SSIM window), got {args.patch}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")


def _config(args: argparse.Namespace, say):
    """The run's TrainConfig: the options, the objective of an --init model, or the settings of --resume."""
    from ..training.config import TrainConfig

    sched = {k: v for k, v in (("decay_start", args.decay_start), ("decay_every", args.decay_every)) if v is not None}
    cfg = TrainConfig.for_epochs(
        args.epochs, lr=args.lr, batch=args.batch, patch=args.patch, steps_per_epoch=args.steps_per_epoch, **sched,
        decay=args.decay, device=args.device, seed=args.seed, num_threads=args.threads,
        val_metrics=not args.no_val_metrics, objective=args.objective, target=args.target,
        guided=not args.plain, select=args.select, grad_clip=args.grad_clip, min_sr=args.min_sr,
        optimizer=args.optimizer, strategy=args.strategy, degrade=args.degrade, photometric=args.photometric,
        restore=args.restore, w_salient=args.w_salient, lift_gain=args.lift_gain,
        modalities=tuple(m.strip() for m in args.modalities.split(",")) if args.modalities else None,
        **(dict(zip(("w_intensity", "w_gradient", "w_ssim", "w_lgde"), args.weights)) if args.weights else {}),
    )
    if not args.resume and str(args.init) != "admm":
        # fine-tuning a model: continue with the objective it was trained with (as finetune() and the
        # Fine-tune widget do); only objective options written on this command line change it
        from ..training.loop import _stored_objective

        explicit = _explicit(getattr(args, "_argv", []))
        kept = {k: v for k, v in _stored_objective(args.init).items()
                if k not in explicit and not (k.startswith("w_") and "weights" in explicit)}
        if kept:
            cfg = TrainConfig.from_dict({**cfg.to_dict(), **kept})
            say(f"--init {args.init}: keeping its objective ({', '.join(f'{k}={v}' for k, v in kept.items())}); "
                "give --objective / --target / --weights to change it")
    if args.resume:
        # continue with the stored settings; only options written on this command line change them
        from ..io.checkpoint import read_checkpoint_info

        stored = (read_checkpoint_info(args.resume).get("training") or {}).get("config") or {}
        over = {}
        for dest in _explicit(getattr(args, "_argv", [])) & set(_RESUME_OVERRIDES):
            field = _RESUME_OVERRIDES[dest]
            over[field] = (not args.no_val_metrics) if dest == "no_val_metrics" else getattr(args, dest)
        cfg = TrainConfig.from_dict({**stored, **over})
        if over:
            say(f"resuming with the stored settings, changed: {', '.join(f'{k}={v}' for k, v in over.items())}")
    return cfg


class _Progress:
    """The training events as a progress bar (steps) and one line per epoch."""

    def __init__(self, quiet: bool):
        self.quiet, self.bar = quiet, None

    def __call__(self, ev) -> None:
        from tqdm import tqdm

        if ev.kind == "step":
            if self.bar is None:
                # made at the end of the first step, counting it: the rate comes from the steps after it
                # (updating a bar made a moment ago showed thousands of steps per second)
                self.bar = tqdm(total=ev.total_steps, initial=ev.step, disable=self.quiet, unit="step")
            else:
                self.bar.update(1)
            self.bar.set_postfix(epoch=ev.epoch, loss=f"{ev.loss:.4f}", lr=f"{ev.lr:.2e}")
            return
        msg = f"epoch {ev.epoch}/{ev.epochs}: train loss {ev.train_loss:.5f}"
        if ev.val_loss is not None:
            msg += f", val loss {ev.val_loss:.5f}"
        if ev.rank is not None:
            msg += f", mean rank {ev.rank:.2f}"
        if ev.metrics:
            msg += ", " + ", ".join(f"{k} {v:.3f}" for k, v in ev.metrics.items())
        msg += " (best)" if ev.best else ""
        (self.bar.write if self.bar is not None else print)(msg)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _train_until_done_or_interrupted(args: argparse.Namespace, data, val, cfg):
    """Train; Ctrl-C stops at the next step and the best model so far is kept (a second Ctrl-C aborts)."""
    import signal
    import threading

    from ..training.loop import train

    stop = threading.Event()

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\ninterrupted: stopping after this step and saving the best model so far "
              "(Ctrl-C again to abort without saving)", file=sys.stderr)

    progress = _Progress(args.quiet)
    old = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    try:
        return train(data, val, init=args.init, config=cfg, callback=progress, stop=stop,
                     checkpoint_path=args.checkpoint, resume=args.resume)
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
        progress.close()


def _check_checkpoint_target(args: argparse.Namespace) -> None:
    """--checkpoint may replace an earlier training checkpoint (or the --resume file), never the --init model,
    the --out file or any other existing file without --overwrite."""
    from .._files import check_writable, same_file

    ck = Path(args.checkpoint)
    init = args.init if args.init and Path(args.init).exists() else None
    check_writable(ck, inputs=[x for x in (init, args.out) if x])
    if not ck.exists() or args.overwrite or (args.resume and same_file(ck, args.resume)):
        return
    try:
        from ..io.checkpoint import read_checkpoint_info

        resumable = "training_state" in read_checkpoint_info(ck)
    except ValueError:
        resumable = False
    if not resumable:
        raise FileExistsError(f"--checkpoint {ck} exists and is not a napari-derun training checkpoint; it was left "
                              "as it is. Give another --checkpoint name, or add --overwrite to replace it")


def check_fuses(model, lr: float | None = None) -> None:
    """``FloatingPointError`` when ``model`` cannot fuse a small synthetic pair to finite values (weights
    a diverged training left finite but useless): such a model is not saved."""
    import numpy as np

    from ..engine.registry import fuse_planes, load_model

    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    a = (0.5 + 0.4 * np.sin(6 * xx) * np.cos(4 * yy)).astype(np.float32)
    b = np.clip(1.2 - 8 * ((xx - 0.5) ** 2 + (yy - 0.4) ** 2), 0, 1).astype(np.float32)
    hint = f"; lower the learning rate (--lr {lr:g})" if lr else ""
    try:
        out = fuse_planes(load_model(model, "cpu"), a[None], b[None])
    except FloatingPointError as e:
        raise FloatingPointError(f"training diverged: the trained model cannot fuse ({e}); it was not saved{hint}") \
            from None
    if not np.isfinite(out).all():
        raise FloatingPointError(f"training diverged: the trained model's fusion is not finite; it was not saved{hint}")


def save_or_rescue(res, out: Path, name: str) -> Path:
    """Write the trained model to ``out``; when that fails (disk full, a file-size limit, permissions), to
    the first place that works of the temporary folder, the home folder and the working folder, and say
    where. Returns the path written; ``OSError`` (naming every place tried) only when none works."""
    import tempfile
    import time

    try:
        res.save(out, best=True, name=name)
        return out
    except OSError as e:
        first = e
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tried = []
    for folder in (Path(tempfile.gettempdir()), Path.home(), Path.cwd()):
        alt = folder / f"{out.name.split('.')[0]}-rescued-{stamp}.safetensors"
        try:
            res.save(alt, best=True, name=name)
        except OSError as e:
            tried.append(f"{alt} ({e.strerror or e})")
            continue
        print(f"napari-derun train: error: could not write {out} ({first}); the trained model was saved to {alt} "
              "instead: move it where you want it", file=sys.stderr)
        return alt
    raise OSError(f"could not write the trained model to {out} ({first}) nor to {', '.join(tried)}; free some space "
                  "and train again (with --checkpoint, --resume continues from the last epoch written)")
