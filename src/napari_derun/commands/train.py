"""``napari-derun train``: train or fine-tune DeRUN on a folder of registered pairs, or on the task folders
of a data root; every setting can also come from a TOML run file (``--config``, docs/training.md)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: TrainConfig fields offered as options: type, choices and help come from the config itself
CLI_FIELDS = ("epochs", "lr", "batch", "patch", "steps_per_epoch", "decay", "objective", "target", "select",
              "min_sr", "device", "seed", "grad_clip", "optimizer", "strategy", "degrade", "modalities", "photometric",
              "restore", "train_only", "w_salient", "lift_gain")
#: the four weights of --weights
WEIGHT_FIELDS = ("w_intensity", "w_gradient", "w_ssim", "w_lgde")
#: [data] settings of a run file that are options too
DATA_OPTIONS = ("tasks", "splits", "val_crop", "val_degraded", "only")


def add_config_options(parser: argparse.ArgumentParser, names) -> None:
    """``--field-name`` options derived from :class:`~napari_derun.training.config.TrainConfig` (not re-typed);
    each defaults to None, so the options given are the ones that are not None."""
    from ..training.config import TrainConfig
    from ._options import add_model_options

    add_model_options(parser, TrainConfig, names, defaults=False)


HELP = "train / fine-tune DeRUN on a folder of pairs (DIR/a, DIR/b) and write a .safetensors model"
DESCRIPTION = ("Train DeRUN on registered pairs: DIR/a (structural) and DIR/b (salient), same file names, "
               "or the task folders DIR/<task> (--tasks, with split files: --splits). "
               "Schedule defaults follow the paper (Adam, lr 1e-4, batch 4, 150 epochs, x0.9 every 10 epochs after 50); "
               "the objective defaults to the fusion objective (--objective paper for Eq. 14). "
               "--config FILE reads the settings from a TOML run file; the options given here override it. "
               "On several GPUs or machines: torchrun --nproc_per_node=N -m napari_derun.cli train ... --strategy ddp.")


def options(p) -> None:
    """The command's arguments (cli.py makes the parser with HELP and DESCRIPTION)."""
    p.add_argument("dir", nargs="?", default=None,
                   help="training folder with a/ and b/ sub-folders; with --tasks, the data root holding the task "
                   "folders (default: root of the --config file's [data])")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="TOML run file: TrainConfig fields, init, out, checkpoint, name and a [data] table "
                   "(root, tasks, splits, val_crop, val_degraded, only, licence); its relative paths are relative to "
                   "the file's folder; options given on the command line override it")
    p.add_argument("--out", "-o", default=None,
                   help="output .safetensors file (best model by validation mean rank, or loss with --select loss)")
    p.add_argument("--init", default=None,
                   help="admm (model-based start), a shipped model name or a checkpoint path (default: admm)")
    add_config_options(p, CLI_FIELDS)
    p.add_argument("--decay-start", type=int, default=None, help="epochs before the lr decay (default: epochs/3, 50 for 150)")
    p.add_argument("--decay-every", type=int, default=None, help="epochs between lr decays (default: epochs/15, 10 for 150)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--val", default=None, help="validation folder (a/, b/)")
    g.add_argument("--val-fraction", type=float, default=None,
                   help="hold back this fraction of DIR's pairs (evenly over the sorted names) for validation")
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                   help="train on the task folders DIR/TASK together (names prefixed TASK/, modalities from the "
                   "task names); validation: --splits, else every 5th pair of each task sorted by name")
    p.add_argument("--splits", default=None, metavar="FOLDER",
                   help="split files FOLDER/<task>.json (tools/splits): train on train, validate on val, "
                   "never read test")
    p.add_argument("--val-crop", type=int, default=None, metavar="SIDE",
                   help="crop the validation pairs to their central SIDE x SIDE square (cheaper validation)")
    p.add_argument("--val-degraded", action=argparse.BooleanOptionalAction, default=None,
                   help="validate on a copy of each validation pair with a degraded and one with b degraded too "
                   "(levels 2 and 4 in turn), against the clean pair")
    p.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                   help="train only on the training pairs whose name contains one of these (validation: all of it)")
    p.add_argument("--no-val-metrics", dest="val_metrics", action="store_const", const=False, default=None,
                   help="validation loss only (skip the fusion metrics)")
    p.add_argument("--weights", nargs=4, type=float, default=None, metavar=("INT", "GRAD", "SSIM", "LGDE"),
                   help="weights of the fusion objective's terms (default 5 10 1 0.1)")
    p.add_argument("--plain", dest="guided", action="store_const", const=False, default=None,
                   help="a new model without the guided extension (the paper's V + f(U - V) form)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--checkpoint", default=None, help="write a resumable checkpoint here after every epoch")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue from a checkpoint written with --checkpoint; without a path, from --checkpoint "
                   "when that exists (else start afresh)")
    p.add_argument("--name", default=None, help="model name stored in the file (default: the output file's stem)")
    p.add_argument("--log", choices=("text", "json"), default="text",
                   help="one line per epoch: text, or json ({epoch, train_loss, val_loss, rank, SR, SCD, lr, best, "
                   "time}, for log files)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import os

    fields, origin, data, run_file = _settings(args)
    _check_files(args)
    # in a torchrun job (--strategy ddp) every process runs this; rank 0 talks and writes the model
    rank0 = int(os.environ.get("RANK", 0)) == 0
    say = print if rank0 else (lambda *a, **k: None)
    cfg = _config(args, fields, origin, say)
    main_rank = cfg.strategy != "ddp" or rank0
    if not main_rank:
        args.quiet = True

    from ..training.loop import peak_rss_mb

    data_tr, val = _pairs(args, data, cfg, say)
    say(f"training on {len(data_tr)} pairs" + (f", validating on {len(val)}" if val is not None else "")
        + f"; init={args.init if not args.resume else 'resume ' + args.resume}", flush=True)
    res = _train_until_done_or_interrupted(args, data_tr, val, cfg)
    if not main_rank:
        return 0
    if not res.history:
        print("stopped before the first epoch finished: nothing was trained, no model written", file=sys.stderr)
        return 1
    out = Path(args.out)
    name = args.name or out.name.split(".")[0]
    check_fuses(res.best_model, cfg.lr)  # a diverged model is never saved as the result
    _record(res, args, data, run_file)
    where = save_or_rescue(res, out, name)
    if where != out:
        return 1
    print(f"wrote {out} (name {name!r}, {res.info['training']['epochs_done']} epochs, "
          f"{res.info['training']['seconds']:.0f} s on {res.info['training']['device']}, "
          f"peak RSS {peak_rss_mb():.0f} MiB"
          + (f"; {res.info['ddp']['world_size']} processes, global batch {res.info['ddp']['global_batch']}"
             if "ddp" in res.info else "") + ")", flush=True)
    return 0


def _option(field: str) -> str:
    """The option that sets a TrainConfig field."""
    special = {"num_threads": "--threads", "val_metrics": "--no-val-metrics", "guided": "--plain"}
    return "--weights" if field in WEIGHT_FIELDS else special.get(field, "--" + field.replace("_", "-"))


def _settings(args: argparse.Namespace):
    """``(TrainConfig fields, where each came from, [data] settings, run file)``: the --config file's
    settings, overridden by the options given on the command line (those not None). The run settings
    (init, out, checkpoint, name) are set on ``args``."""
    from ..training.run_file import RUN_KEYS, read_run_file

    rf = read_run_file(args.config) if args.config else None
    fields = dict(rf.config) if rf else {}
    origin = {k: f"{k} in {args.config}" for k in fields}
    names = (*CLI_FIELDS, "decay_start", "decay_every", "val_metrics", "guided")
    given = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if args.threads is not None:
        given["num_threads"] = args.threads
    if args.weights:
        given.update(zip(WEIGHT_FIELDS, args.weights))
    if given.get("modalities") is not None:
        given["modalities"] = tuple(m.strip() for m in given["modalities"].split(","))
    fields.update(given)
    origin.update({k: _option(k) for k in given})
    for key in RUN_KEYS:
        if getattr(args, key) is None and rf and key in rf.run:
            setattr(args, key, rf.run[key])
    args.init = args.init or "admm"
    data = dict(rf.data) if rf else {}
    data.update({k: getattr(args, k) for k in DATA_OPTIONS if getattr(args, k) is not None})
    if args.dir is not None:
        data["root"] = args.dir
    if not args.out:
        raise ValueError("no output file: give --out (or out in the --config file)")
    if not data.get("root"):
        raise ValueError("no training data: give DIR (or root in the [data] table of the --config file)")
    if data.get("tasks") and (args.val or args.val_fraction):
        raise ValueError("--val / --val-fraction do not go with tasks: their validation pairs come from the split "
                         "files (--splits) or every 5th pair of each task")
    if args.resume is True:  # --resume without a path: the --checkpoint, when it exists
        if not args.checkpoint:
            raise ValueError("--resume without a checkpoint path needs --checkpoint (or checkpoint in the run file)")
        args.resume = args.checkpoint if Path(args.checkpoint).exists() else None
        if args.resume is None:
            print(f"no checkpoint {args.checkpoint} yet: starting the run", flush=True)
    return fields, origin, data, rf


def _config(args: argparse.Namespace, fields: dict, origin: dict, say):
    """The run's TrainConfig (validated by TrainConfig, errors naming the option or file key): the settings
    given, the objective of an --init model for the objective settings not given, or the stored settings of
    --resume with the settings given changing them."""
    from pydantic import ValidationError

    from ..training.config import TrainConfig
    from ..training.run_file import settings_error

    fields = dict(fields)
    try:
        if args.resume:
            # continue with the stored settings; only settings given (options, run file) change them
            from ..io.checkpoint import read_checkpoint_info

            stored = TrainConfig.from_dict((read_checkpoint_info(args.resume).get("training") or {}).get("config")
                                           or {}).to_dict()
            cfg = TrainConfig.from_dict({**stored, **fields})
            changed = {k: v for k, v in cfg.to_dict().items() if v != stored.get(k)}
            if changed:
                say(f"resuming with the stored settings, changed: {', '.join(f'{k}={v}' for k, v in changed.items())}")
            return cfg
        if args.init and str(args.init) != "admm":
            # fine-tuning a model: continue with the objective it was trained with (as finetune() and the
            # Fine-tune widget do); only objective settings given change it
            from ..training.loop import _stored_objective

            kept = {k: v for k, v in _stored_objective(args.init).items() if k not in fields}
            if kept:
                fields.update(kept)
                say(f"--init {args.init}: keeping its objective ({', '.join(f'{k}={v}' for k, v in kept.items())}); "
                    "give --objective / --target / --weights to change it")
        epochs = fields.pop("epochs", TrainConfig.model_fields["epochs"].default)
        return TrainConfig.for_epochs(epochs, **fields)
    except ValidationError as e:
        raise settings_error(e, origin) from None


def _pairs(args: argparse.Namespace, data: dict, cfg, say):
    """``(train, val)`` of the data settings: DIR (with --val / --val-fraction) or the task folders of a root."""
    from ..training.datasets import PairDataset, task_pairs

    if data.get("tasks"):
        tr, val = task_pairs(data["root"], data["tasks"], data.get("splits"))
    else:
        tr, val = PairDataset(data["root"]), None
        if args.val:
            val = PairDataset(args.val)
        elif args.val_fraction:
            tr, val = tr.split_fraction(args.val_fraction)
    for msg in tr.problems:
        say(f"warning: {msg}")
    if val is None and (data.get("val_crop") or data.get("val_degraded")):
        raise ValueError("val_crop / val_degraded need validation pairs: give --val, --val-fraction or tasks")
    if val is not None and data.get("val_crop"):
        val = val.center_crop(data["val_crop"])
    if val is not None and data.get("val_degraded"):
        val = val.with_degraded(modalities=cfg.modalities)
    if data.get("only"):
        tr = tr.containing(data["only"])
    return tr, val


def _record(res, args: argparse.Namespace, data: dict, run_file) -> None:
    """What the output file says about its data and how it was made (besides the run's own provenance)."""
    import shlex

    info = res.info.setdefault("data", {})
    info["settings"] = {k: v for k, v in data.items() if k != "licence"}
    if data.get("tasks"):
        info["tasks"] = list(data["tasks"])
        info["split"] = (f"split files {data['splits']} (train / val; the test pairs never read)" if data.get("splits")
                         else "per task, pairs sorted by name, every 5th (index % 5 == 4) held back for validation")
    if data.get("licence"):
        info["licence"] = data["licence"]
    res.info["command"] = "napari-derun " + shlex.join(getattr(args, "_argv", None) or ["train"])
    if run_file is not None:
        res.info["run_file"] = {"path": str(run_file.path), "text": run_file.text}


class _Progress:
    """The training events as a progress bar (steps) and one line per epoch (text, or JSON for log files)."""

    def __init__(self, quiet: bool, log: str = "text"):
        self.quiet, self.bar, self.log = quiet, None, log

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
        if self.log == "json":
            self._write(epoch_json(ev))
            return
        msg = f"epoch {ev.epoch}/{ev.epochs}: train loss {ev.train_loss:.5f}"
        if ev.val_loss is not None:
            msg += f", val loss {ev.val_loss:.5f}"
        if ev.rank is not None:
            msg += f", mean rank {ev.rank:.2f}"
        if ev.metrics:
            msg += ", " + ", ".join(f"{k} {v:.3f}" for k, v in ev.metrics.items())
        msg += " (best)" if ev.best else ""
        self._write(msg)

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def epoch_json(ev) -> str:
    """One epoch as the JSON line of the training logs (tools/runs/*.log)."""
    import json
    import time

    m = ev.metrics or {}
    return json.dumps({"epoch": ev.epoch, "train_loss": round(ev.train_loss, 5), "val_loss": ev.val_loss,
                       "rank": ev.rank, "SR": m.get("SR"), "SCD": m.get("SCD"), "lr": ev.lr, "best": ev.best,
                       "time": time.strftime("%H:%M:%S")})


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

    progress = _Progress(args.quiet, args.log)
    old = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    try:
        return train(data, val, init=args.init, config=cfg, callback=progress, stop=stop,
                     checkpoint_path=args.checkpoint, resume=args.resume)
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
        progress.close()


def _check_files(args: argparse.Namespace) -> None:
    """Refuse before any work: an existing --out (without --overwrite), an unwritable place, a --checkpoint
    that would replace a file that is not a training checkpoint."""
    from .._files import check_writable

    inputs = [x for x in (args.init, args.resume) if x and Path(x).exists()]
    check_writable(args.out, overwrite=args.overwrite, inputs=inputs)
    if args.checkpoint:
        _check_checkpoint_target(args)


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
