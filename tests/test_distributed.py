"""Scale-out: fusion on a dask.distributed LocalCluster; the ddp training strategy under torchrun (gloo, CPU)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_derun as nd
from helpers import smooth_pair
from napari_derun.engine import distributed as ndist


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _perturbed_derun(seed=0):
    from napari_derun.core.model import DeRUN

    torch.manual_seed(seed)
    net = DeRUN.from_hifm()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return net.eval()


def test_model_spec_round_trip_in_process():
    net = _perturbed_derun()
    f = nd.load_model(net, "cpu")
    spec = ndist.model_spec(f)
    assert spec.kind == "state"
    g = spec.load()
    a, b = smooth_pair(24, 20)
    np.testing.assert_allclose(nd.fuse(a, b, model=g, device="cpu"), nd.fuse(a, b, model=f, device="cpu"), atol=1e-6)
    assert ndist.model_spec(nd.load_model("admm", "cpu")).kind == "admm"
    assert ndist.resolve_fuser(spec) is ndist.resolve_fuser(spec)  # cached: loaded once per process


@pytest.mark.slow  # ~20-25 s: starting two worker processes
def test_fuse_on_local_cluster_equals_single_process(tmp_path, capsys):
    import distributed
    import dask.array as da
    planes = [smooth_pair(32, 28, seed=s) for s in range(4)]
    a = (np.stack([p[0] for p in planes]) * 30000 + 200).astype(np.uint16)
    b = (np.stack([p[1] for p in planes]) * 9000 + 50).astype(np.uint16)
    net = _perturbed_derun(1)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        client.run(torch.set_num_threads, 1)
        for model in ("admm", net):
            local = nd.fuse(a, b, model=model, device="cpu", batch_size=1)
            remote = nd.fuse(a, b, model=model, device="cpu", batch_size=1, client=client)
            assert isinstance(remote, np.ndarray) and remote.shape == a.shape
            np.testing.assert_allclose(remote, local, atol=1e-6)
        # a dask input with a client stays lazy and computes on the cluster
        lazy = nd.fuse(da.from_array(a, chunks=(1, 32, 28)), b, model=net, device="cpu", client=client)
        np.testing.assert_allclose(lazy.compute(), nd.fuse(a, b, model=net, device="cpu"), atol=1e-6)
        counts = client.run(ndist._loaded_count)
        assert len(counts) == 2 and all(1 <= c <= 2 for c in counts.values())  # once per model per worker
        # the CLI folder batch with --scheduler: one task per pair on the workers
        import tifffile

        from napari_derun.cli import main

        _write_pairs(tmp_path / "pairs", n=3, size=30)
        rc = main(["fuse", str(tmp_path / "pairs"), "-o", str(tmp_path / "out"), "-q", "--model", "admm",
                   "--scheduler", cluster.scheduler_address])  # the model is not what this test is about
        assert rc == 0, capsys.readouterr().err
        for i in range(3):
            a = tifffile.imread(tmp_path / "pairs" / "a" / f"p{i}.tif")
            b = tifffile.imread(tmp_path / "pairs" / "b" / f"p{i}.tif")
            np.testing.assert_allclose(tifffile.imread(tmp_path / "out" / f"p{i}.tif"), nd.fuse(a, b, model="admm"), atol=1e-6)


def _write_pairs(root: Path, n=3, size=40):
    import tifffile

    for d in ("a", "b"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a, b = smooth_pair(size, size, seed=10 + i)
        tifffile.imwrite(root / "a" / f"p{i}.tif", (a * 255).astype(np.uint8))
        tifffile.imwrite(root / "b" / f"p{i}.tif", (b * 255).astype(np.uint8))


def _train_args(data, out, batch, *extra):
    return ["train", str(data), "-o", str(out), "--epochs", "1", "--steps-per-epoch", "2", "--batch", str(batch),
            "--patch", "32", "--lr", "0.01", "--optimizer", "sgd", "--seed", "0", "--device", "cpu",
            "--threads", "1", "--val", str(data), "--no-val-metrics", "-q", *extra]


def test_ddp_strategy_without_torchrun_is_the_single_process_run(tmp_path):
    """Outside a torchrun job the ddp strategy is a world of one: the same draws, the same weights."""
    from napari_derun.io.checkpoint import state_sha256
    from napari_derun.training.config import TrainConfig
    from napari_derun.training.loop import train

    data = tmp_path / "data"
    _write_pairs(data, n=2, size=36)
    cfg = dict(epochs=1, steps_per_epoch=2, batch=2, patch=32, lr=0.01, optimizer="sgd", device="cpu", num_threads=1,
               val_metrics=False, val_initial=False, checkpointing=False)
    one = train(str(data), config=TrainConfig(**cfg))
    dd = train(str(data), config=TrainConfig(strategy="ddp", **cfg))
    assert state_sha256(one.model.state_dict()) == state_sha256(dd.model.state_dict())
    assert dd.info["ddp"]["world_size"] == 1 and "ddp" not in one.info
    assert dd.info["ddp"]["rank_state_sha256"] == [state_sha256(dd.model.state_dict())]


@pytest.mark.slow  # ~30 s: two torchrun processes
def test_ddp_strategy_under_torchrun_equals_one_process_with_the_global_batch(tmp_path):
    """``napari-derun train --strategy ddp`` on two CPU ranks (gloo) x batch 2 = one process x batch 4."""
    from napari_derun.io.checkpoint import load_checkpoint, state_sha256
    from napari_derun.cli import main
    from napari_derun.core.model import DeRUN

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun is not None, "torchrun ships with torch: it must be next to the interpreter"
    data = tmp_path / "data"
    _write_pairs(data)
    out, ck = tmp_path / "ddp.safetensors", tmp_path / "ddp.ckpt.safetensors"
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1")
    cmd = [torchrun, "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
           "-m", "napari_derun.cli", *_train_args(data, out, 2, "--strategy", "ddp", "--checkpoint", str(ck))]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("wrote ") == 1  # rank 0 talks and writes; rank 1 only trains
    _, info, _ = load_checkpoint(out)
    ddp = info["ddp"]
    assert ddp["world_size"] == 2 and ddp["backend"] == "gloo" and ddp["global_batch"] == 4
    assert ddp["rank_state_sha256"][0] == ddp["rank_state_sha256"][1]  # both ranks end with the same weights
    assert info["training"]["config"]["strategy"] == "ddp" and info["training"]["objective"] == "fusion"
    # rank 0 validated (the other rank waited at the barrier)
    assert [h["steps"] for h in info["history"]] == [2] and info["history"][0]["val_loss"] is not None
    last, _, _ = load_checkpoint(ck)  # the resumable checkpoint holds the latest weights
    assert state_sha256(last.state_dict()) == ddp["rank_state_sha256"][0]
    # the same command in one process with the global batch: the DDP run must equal it
    ref_ck = tmp_path / "one.ckpt.safetensors"
    assert main(_train_args(data, tmp_path / "one.safetensors", 4, "--checkpoint", str(ref_ck))) == 0
    ref, _, _ = load_checkpoint(ref_ck)
    torch.manual_seed(0)
    start = DeRUN.from_hifm(guided=True).state_dict()
    moved, worst = 0.0, 0.0
    for k, v in last.state_dict().items():
        worst = max(worst, float((v - ref.state_dict()[k]).abs().max()))
        moved = max(moved, float((v - start[k]).abs().max()))
    assert moved > 1e-4  # training did change the weights
    # float32 summation order differs (all-reduce of two halves vs one batch); plain SGD, since Adam's
    # normalisation would blow these differences up for tiny gradients
    assert worst < 5e-3 * moved
    json.dumps(info)  # provenance is JSON
