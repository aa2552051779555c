"""Scale-out: fusion on a dask.distributed LocalCluster, DDP training under torchrun (gloo, CPU)."""
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
from napari_derun import distributed as ndist


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _perturbed_derun(seed=0):
    from napari_derun.model import DeRUN

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
        rc = main(["fuse", str(tmp_path / "pairs"), "-o", str(tmp_path / "out"), "-q",
                   "--scheduler", cluster.scheduler_address])
        assert rc == 0, capsys.readouterr().err
        for i in range(3):
            a = tifffile.imread(tmp_path / "pairs" / "a" / f"p{i}.tif")
            b = tifffile.imread(tmp_path / "pairs" / "b" / f"p{i}.tif")
            np.testing.assert_allclose(tifffile.imread(tmp_path / "out" / f"p{i}.tif"), nd.fuse(a, b), atol=1e-6)


def _write_pairs(root: Path, n=3, size=40):
    import tifffile

    for d in ("a", "b"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a, b = smooth_pair(size, size, seed=10 + i)
        tifffile.imwrite(root / "a" / f"p{i}.tif", (a * 255).astype(np.uint8))
        tifffile.imwrite(root / "b" / f"p{i}.tif", (b * 255).astype(np.uint8))


def _reference_training(data, steps, batch, patch, seed, world, lr=0.01, adjoint_weight=0.01):
    """Single-process training on the union of the ranks' shards (what DDP must reproduce)."""
    # one thread, like the ranks (--threads 1): with several threads, float summation order moves
    # values across the piecewise-linear knots of S and the comparison below would blur
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _reference_training_1t(data, steps, batch, patch, seed, world, lr, adjoint_weight)
    finally:
        torch.set_num_threads(n_threads)


def _reference_training_1t(data, steps, batch, patch, seed, world, lr, adjoint_weight):
    from torch.utils.data import DistributedSampler

    from napari_derun.model import DeRUN, adjoint_loss
    from napari_derun.training import PairDataset, TrainConfig

    cfg = TrainConfig(objective="fusion", target="max")  # what ddp_train uses by default
    torch.manual_seed(seed)
    net = DeRUN.from_hifm(guided=True).train()
    ds = ndist.PatchDataset(PairDataset(str(data)), n=steps * batch * world, patch=patch, seed=seed)
    shards = []
    for r in range(world):
        s = DistributedSampler(ds, num_replicas=world, rank=r, shuffle=True, seed=seed, drop_last=True)
        s.set_epoch(0)
        shards.append(list(s))
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = [i for r in range(world) for i in shards[r][step * batch : (step + 1) * batch]]
        items = [ds[i] for i in idx]
        ta = torch.from_numpy(np.stack([x[0] for x in items]))
        tb = torch.from_numpy(np.stack([x[1] for x in items]))
        opt.zero_grad()
        loss, _ = cfg.loss(net(ta, tb), ta, tb)
        loss = loss + adjoint_weight * adjoint_loss(net, generator=gen)
        loss.backward()
        opt.step()
    return net


@pytest.mark.slow  # ~30 s: two torchrun processes
def test_ddp_torchrun_two_cpu_ranks(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    data = tmp_path / "data"
    _write_pairs(data)
    out = tmp_path / "ddp.safetensors"
    steps, batch, patch, seed = 2, 2, 32, 0
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1")
    cmd = [torchrun, "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "napari_derun.distributed", "train", "--data", str(data),
           "--out", str(out), "--steps", str(steps), "--batch", str(batch), "--patch", str(patch),
           "--lr", "0.01", "--optimizer", "sgd", "--seed", str(seed), "--backend", "gloo", "--device", "cpu", "--threads", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    from napari_derun.checkpoint import load_checkpoint

    model, info, _ = load_checkpoint(out)
    hashes = info["ddp"]["rank_state_sha256"]
    assert info["ddp"]["world_size"] == 2 and len(hashes) == 2
    assert hashes[0] == hashes[1] == ndist.state_sha256(model.state_dict())  # identical weights on both ranks
    assert info["training"]["objective"] == "fusion" and model.config.guided  # the same objective as train()
    assert res.stdout.count("state sha256 " + hashes[0]) == 2
    # the DDP run equals one process training on the union of both shards (gradient averaging)
    ref = _reference_training(data, steps, batch, patch, seed, world=2)
    init = _reference_training(data, 0, batch, patch, seed, world=2)
    # (plain SGD, so that the comparison is not blurred by Adam's normalisation of tiny gradients)
    moved, worst = 0.0, 0.0
    for k, v in model.state_dict().items():
        worst = max(worst, float((v - ref.state_dict()[k].detach()).abs().max()))
        moved = max(moved, float((v - init.state_dict()[k]).abs().max()))
    assert moved > 1e-4  # training did change the weights
    # float32 summation order differs (DDP all-reduce vs one batch): about 1e-3 relative after a step
    assert worst < 5e-3 * moved
    json.dumps(info)  # provenance is JSON
