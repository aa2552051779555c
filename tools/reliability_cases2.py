"""Round 2 of the reliability audit (issue 22): cases for tools/reliability_report.py.

Each case is ``(area, case, function, hostile)``; ``function()`` returns what a user sees (or raises it).
Hostile files are crafted by tests/hostile.py (declared sizes, never real large data).
"""
from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import hostile as H  # noqa: E402

FAST = ("--model", "admm", "--device", "cpu", "-q")


def _tcp_service(answer):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            if answer:
                c.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    return srv, f"tcp://127.0.0.1:{srv.getsockname()[1]}"


def cases(d: Path, cli):
    """The round-2 cases in ``d`` (a scratch folder); ``cli(*argv)`` runs the CLI in-process. The last item
    of a case: True for a hostile file, "service" for a hostile network peer, False otherwise."""
    import tifffile

    import napari_derun as nd

    r = d / "r2"
    r.mkdir()
    a, b = (tifffile.imread(d / n) for n in ("A.tif", "B.tif"))
    A, B = d / "A.tif", d / "B.tif"
    ck = H.real_checkpoint_bytes()
    out = r / "o.tif"

    def export_into_project():
        proj = r / "proj"
        (proj / "data").mkdir(parents=True)
        (proj / "data" / "precious.txt").write_text("x")
        res = cli("export", "gfp_pc", "-o", proj, "--overwrite")
        return f"{res}; proj/data/precious.txt {'kept' if (proj / 'data' / 'precious.txt').exists() else 'DELETED'}"

    def export_into_cwd():
        work = r / "cwd"
        work.mkdir()
        for n in ("notes.txt", "data.csv"):
            (work / n).write_text("mine")
        here = os.getcwd()
        os.chdir(work)
        try:
            res = cli("export", "gfp_pc", "-o", ".", "--overwrite")
        finally:
            os.chdir(here)
        kept = all((work / n).read_text() == "mine" for n in ("notes.txt", "data.csv"))
        return f"{res}; the folder's own files {'kept' if kept else 'LOST'}"

    def export_disk_full():
        from napari_derun.engine.bmz_export import install_package

        pkg = r / "old.zip"
        pkg.write_bytes(b"old package")

        def full(target):
            target.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")

        try:
            install_package(pkg, full, overwrite=True)
        except OSError as e:
            left = sorted(p.name for p in r.iterdir() if p.name.startswith(".napari-derun-export"))
            return (f"OSError: {str(e)[:90]}…; old package {'kept' if pkg.read_bytes() == b'old package' else 'LOST'}, "
                    f"temporary files left: {len(left)}")
        return "written (!)"

    def fuse_onto_links():
        os.symlink(A, r / "link.tif")
        os.link(A, r / "hard.tif")
        before = A.read_bytes()
        rcs = [cli("fuse", A, B, "-o", o, "--overwrite", *FAST).split(":")[0] for o in (r / "link.tif", r / "hard.tif")]
        return f"{', '.join(rcs)}; A.tif {'unchanged' if A.read_bytes() == before else 'OVERWRITTEN'}"

    def folder_into_a():
        dd = r / "D"
        for sub in ("a", "b"):
            (dd / sub).mkdir(parents=True)
        tifffile.imwrite(dd / "a" / "p.tif", a)
        tifffile.imwrite(dd / "b" / "p.tif", b)
        return cli("fuse", dd, "-o", dd / "a", "--overwrite", *FAST)

    def concurrent():
        target = r / "same.tif"
        cmd = [sys.executable, "-m", "napari_derun.cli", "fuse", str(A), str(B), "-o", str(target), *FAST]
        env = {**os.environ, "NAPARI_DERUN_THREADS": "1"}
        procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
                 for _ in range(2)]
        res = [(p.wait(timeout=300), p.stderr.read().strip().splitlines()) for p in procs]
        codes = sorted(rc for rc, _ in res)
        why = next((lines[-1].split("error: ")[-1][:80] for rc, lines in res if rc and lines), "")
        return f"exit codes {codes}; the second: {why}…"

    def existing_output():
        old = r / "old.tif"
        old.write_bytes(b"old")
        res = cli("fuse", A, B, "-o", old, *FAST)
        return f"{res}; file {'kept' if old.read_bytes() == b'old' else 'REPLACED'}"

    def disk_full_message():
        from napari_derun._files import atomic_writer

        try:
            with atomic_writer(r / "x.bin") as fh:
                fh.write(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            return f"OSError: {e}"

    def dask_relative_paths():
        import dask.distributed

        import napari_derun.engine.distributed as ndist

        dd = r / "Drel"
        for sub in ("a", "b"):
            (dd / sub).mkdir(parents=True)
        tifffile.imwrite(dd / "a" / "p.tif", a)
        tifffile.imwrite(dd / "b" / "p.tif", b)
        elsewhere = r / "worker_cwd"
        elsewhere.mkdir()
        seen = []

        class Done:
            def __init__(self, v):
                self.v = v

            def result(self):
                if isinstance(self.v, Exception):
                    raise self.v
                return self.v

        class Worker:  # runs each task in another working folder, as a worker started elsewhere would
            def scatter(self, x, broadcast=False):
                return x

            def submit(self, fn, *args, pure=True):
                seen.extend(x for x in args if isinstance(x, str))
                here = os.getcwd()
                os.chdir(elsewhere)
                try:
                    return Done(fn(*args))
                except Exception as e:  # noqa: BLE001
                    return Done(e)
                finally:
                    os.chdir(here)

            def close(self):
                pass

        old = ndist.connect, dask.distributed.as_completed
        ndist.connect, dask.distributed.as_completed = (lambda address, timeout=None: Worker()), list
        here = os.getcwd()
        os.chdir(r)
        try:
            res = cli("fuse", "Drel", "-o", "outrel", "--scheduler", "tcp://x:1", *FAST)
        finally:
            os.chdir(here)
            ndist.connect, dask.distributed.as_completed = old
        return (f"{res}; paths sent {'all absolute' if all(Path(s).is_absolute() for s in seen) else 'RELATIVE'}; "
                f"result in the client's folder: {(r / 'outrel' / 'p.tif').is_file()}")

    def scheduler(answer):
        def run():
            srv, addr = _tcp_service(answer)
            try:
                return cli("fuse", A, B, "-o", out, "--scheduler", addr, *FAST)
            finally:
                srv.close()
        return run

    def no_workers():
        import distributed

        with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None,
                                      scheduler_kwargs={"protocol": "tcp", "host": "127.0.0.1"}) as cluster:
            return cli("fuse", A, B, "-o", out, "--scheduler", cluster.scheduler_address, *FAST)

    def prefs(kind):
        def run():
            from napari_derun._widgets._prefs import default_model, load_prefs, prefs_path

            os.environ["NAPARI_DERUN_CONFIG_DIR"] = str(r / f"cfg_{kind}")
            p = prefs_path()
            p.parent.mkdir(parents=True)
            if kind == "fifo":
                os.mkfifo(p)
            elif kind == "dev_zero":
                os.symlink("/dev/zero", p)
            else:
                p.write_text("[" * 30_000 + "]" * 30_000)
            box = {}
            th = threading.Thread(target=lambda: box.update(p=load_prefs(), m=default_model(["GFP"], ["admm"])),
                                  daemon=True)
            th.start()
            th.join(10)
            del os.environ["NAPARI_DERUN_CONFIG_DIR"]
            return "BLOCKED" if th.is_alive() else f"preferences ignored ({box['p']}), widget's model {box['m']!r}"
        return run

    def package_case(make):
        def run():
            pkg = make(r / f"pkg{len(os.listdir(r))}.zip")
            return cli("fuse", A, B, "-o", out, "--model", pkg, "-q")
        return run

    def checkpoint_case(meta):
        return lambda: cli("fuse", A, B, "-o", out, "-q", "--model",
                           H.fake_checkpoint(r / f"m{len(os.listdir(r))}.safetensors", meta))

    def big_name():
        from napari_derun.io.checkpoint import save_checkpoint
        from napari_derun.io.images import read_provenance
        from napari_derun.core.model import DeRUN

        p = save_checkpoint(r / "named.safetensors", DeRUN.from_hifm(), {"name": "n" * 10_000_000})
        o = r / "named.tif"
        res = cli("fuse", A, B, "-o", o, "--model", p, "--device", "cpu", "-q")
        return f"{res}; name in the output: {len(read_provenance(o)['model'])} characters, file {o.stat().st_size:,} bytes"

    def dtype_input(dt):
        def run():
            scale = np.iinfo(dt).max
            pa, pb = r / f"a_{dt.__name__}.tif", r / f"b_{dt.__name__}.tif"
            tifffile.imwrite(pa, (a / 255.0 * scale).astype(dt))
            tifffile.imwrite(pb, (b / 255.0 * scale).astype(dt))
            o = r / f"f_{dt.__name__}.tif"
            res = cli("fuse", pa, pb, "-o", o, "--dtype", "input", *FAST)
            f = tifffile.imread(o)
            return f"{res}; {f.dtype} from {f.min()} to {f.max()} (max {np.iinfo(dt).max})"
        return run

    def lr_1e9():
        data = d / "data"
        o = r / "lr.safetensors"
        res = cli("train", data, "--out", o, "--lr", "1e9", "--epochs", "1", "--steps-per-epoch", "1", "--patch",
                  "32", "--batch", "1", "--device", "cpu", "--no-val-metrics", "-q")
        return f"{res}; model written: {o.exists()}"

    def checkpoint_onto(kind):
        def run():
            data = d / "data"
            if kind == "tif":
                return cli("train", data, "--out", r / "t1.safetensors", "--checkpoint", A)
            init = r / "init.safetensors"
            init.write_bytes((REPO / "src/napari_derun/weights/gfp_pc.safetensors").read_bytes())
            return cli("train", data, "--out", r / "t2.safetensors", "--init", init, "--checkpoint", init,
                       "--overwrite")
        return run

    def rescue():
        import tempfile

        from napari_derun.commands.train import save_or_rescue

        class Result:
            def save(self, path, best=True, name=None):
                if Path(path).parent == r / "full":
                    raise OSError(errno.EFBIG, "File too large")
                Path(path).write_bytes(b"model")

        old = tempfile.tempdir
        tempfile.tempdir = str(r)
        try:
            where = save_or_rescue(Result(), r / "full" / "m.safetensors", "m")
        finally:
            tempfile.tempdir = old
        return f"saved to {where.name} in the temporary folder instead (and said so)"

    def oom():
        import napari_derun.file_fusion as cf

        old = cf.fuse_files

        def raise_memory(*args, **kwargs):
            np.empty((1 << 62,), np.uint8)  # numpy's "Unable to allocate 4 EiB"

        cf.fuse_files = raise_memory
        try:
            return cli("fuse", A, B, "-o", out, *FAST)
        finally:
            cf.fuse_files = old

    def tiles_memory(shape):
        def run():
            import tracemalloc

            import torch

            from napari_derun.engine.registry import Fuser

            class Average(torch.nn.Module):
                n_stages = 1

                def forward(self, x, y, return_stages=False, callback=None):
                    return (x + y) / 2

            fz = Fuser("average", "derun", Average(), "cpu", source="in-memory")
            rng = np.random.default_rng(0)
            x = (rng.random(shape) * 250).astype(np.uint8)
            y = (rng.random(shape[:2]) * 60000).astype(np.uint16)
            tracemalloc.start()
            try:
                f = nd.fuse(x, y, model=fz, device="cpu", tile=512, overlap=64)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            px = shape[0] * shape[1]
            luma = 4 * px if len(shape) == 3 else 0
            rest = peak - f.nbytes - luma
            return (f"engine memory {peak / 2**20:.0f} MiB = the float32 result ({f.nbytes / 2**20:.0f} MiB)"
                    + (f" + a float32 luminance plane ({luma / 2**20:.0f} MiB)" if luma else "")
                    + f" + {rest / 2**20:.0f} MiB of tiles and blocks")
        return run

    def read_only(path):
        def run():
            from napari_derun.io.images import read_input

            x, _, _ = read_input(path, max_mb=0)
            return f"decoded {x.shape} {x.dtype} (fusing it on this 2-core machine would take hours)"
        return run

    def folder_sha():
        from napari_derun.io.checkpoint import file_sha256

        folder = r / "pkgdir"
        folder.mkdir()
        (folder / "rdf.yaml").write_text(H.GOOD_RDF)
        (folder / "napari_derun.safetensors").write_bytes(ck)
        got = nd.load_model(str(folder), "cpu").provenance()["weights_sha256"]
        return f"weights_sha256 {got[:16]}… ({'the checkpoint' if got == file_sha256(folder / 'napari_derun.safetensors') else 'WRONG'})"

    def malformed_ome():
        bad = ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/'
               '2016-06"><Image ID="Image:0"><Pixels DimensionOrder="XYCZT" Type="uint8" SizeX="44" SizeY="48" '
               'SizeC="1" SizeZ="1" SizeT="1"></Image></OME>')
        tifffile.imwrite(r / "ome.tif", a, description=bad, metadata=None)
        return cli("fuse", r / "ome.tif", B, "-o", r / "ome_out.tif", *FAST) + " (read as a plain TIFF)"

    def nan_file():
        x = a.astype(np.float32) / 255
        x[3, 4] = np.nan
        tifffile.imwrite(r / "nan.tif", x)
        return cli("fuse", r / "nan.tif", B, "-o", out, *FAST)

    big30 = H.tiled_zlib_tiff(r / "t30k.tif")
    png12 = r / "p12k.png"
    from PIL import Image

    Image.new("L", (12000, 12000)).save(png12, optimize=False)
    tifffile.imwrite(r / "c64.tif", np.zeros((48, 44), np.complex64))
    size = lambda p: f"{p.stat().st_size / 1024:.0f} KB"  # noqa: E731

    packages = [
        ("zip bomb: 3 GiB checkpoint member in a tiny zip", H.zip_bomb),
        ("rdf.yaml of 50 MB comments (170 KB zip)", lambda p: H.rdf_bomb(p, 50)),
        ("YAML alias bomb (9 levels × 9 aliases)", lambda p: H.package(p, H.yaml_alias_bomb(), ck)),
        ("recursive YAML alias", lambda p: H.package(p, "a: &a [*a]\nname: x\n", ck)),
        ("rdf.yaml with a `!!python` tag", lambda p: H.package(p, "name: !!python/object/apply:os.system ['echo x']\n", ck)),
        ("rdf.yaml syntax error", lambda p: H.package(p, "name: [unclosed\n", ck)),
        ("rdf.yaml bad UTF-8", lambda p: H.package(p, b"name: \xff\xfe\n", ck)),
        ("rdf.yaml is a list", lambda p: H.package(p, "- a\n- b\n", ck)),
        ("rdf.yaml is a scalar", lambda p: H.package(p, "just text\n", ck)),
        ("symlink entry (rdf.yaml → /etc/passwd)", H.symlink_member),
        ("symlink entry (checkpoint)", lambda p: H.symlink_member(p, "napari_derun.safetensors")),
        ("bad CRC", H.bad_crc),
        ("encrypted member", H.encrypted),
        ("unknown compression (method 99)", H.unknown_compression),
    ]
    out_cases = [
        ("files", "`export gfp_pc -o proj --overwrite` with proj/data/precious.txt", export_into_project, False),
        ("files", "`export gfp_pc -o . --overwrite` in a folder with other files", export_into_cwd, False),
        ("files", "export --overwrite: the disk fills up while writing", export_disk_full, False),
        ("files", "`fuse a.tif b.tif -o a.tif --overwrite`",
         lambda: cli("fuse", A, B, "-o", A, "--overwrite", *FAST), False),
        ("files", "`fuse … -o` a symlink / a hard link to a.tif, `--overwrite`", fuse_onto_links, False),
        ("files", "`fuse D -o D/a --overwrite`", folder_into_a, False),
        ("files", "`fuse -o` an existing file, no `--overwrite`", existing_output, False),
        ("files", "two `fuse -o same.tif` at once (two processes)", concurrent, False),
        ("files", "disk full while writing", disk_full_message, False),
        ("files", "`fuse DIR --scheduler` with relative paths (worker in another folder)", dask_relative_paths, False),
    ]
    out_cases += [("package", name, package_case(make), True) for name, make in packages]
    out_cases += [
        ("package", "`export alias-bomb.zip -o x.zip`",
         lambda: cli("export", H.package(r / "ab.zip", H.yaml_alias_bomb(), ck), "-o", r / "x.zip"), True),
        ("package", "folder package: weights_sha256", folder_sha, False),
        ("checkpoint", "metadata is a JSON list", checkpoint_case(json.dumps([1, 2])), True),
        ("checkpoint", "metadata is a JSON string", checkpoint_case(json.dumps("napari-derun")), True),
        ("checkpoint", "metadata nested 100,000 deep", checkpoint_case("[" * 100_000 + "]" * 100_000), True),
        ("checkpoint", "uint8 weights, right names and shapes",
         lambda: cli("fuse", A, B, "-o", out, "-q", "--model", H.uint8_checkpoint(r / "u8.safetensors")), True),
        ("checkpoint", "a 10 MB model name", big_name, True),
        ("image", "TIFF header declaring 100000² (200 bytes)",
         lambda: cli("fuse", H.tiff_header(r / "h.tif"), B, "-o", out, *FAST), True),
        ("image", f"tiled-zlib 30000² uint8 TIFF ({size(big30)})", lambda: cli("fuse", big30, B, "-o", out, *FAST),
         True),
        ("image", "the same 30000² TIFF, `--max-image-mb 2048`",
         lambda: cli("fuse", big30, B, "-o", out, "--max-image-mb", "2048", *FAST), True),
        ("image", f"12000² PNG ({size(png12)})", lambda: cli("fuse", png12, B, "-o", out, *FAST), True),
        ("image", "the same 12000² PNG, `--max-image-mb 500`",
         lambda: cli("fuse", png12, B, "-o", out, "--max-image-mb", "500", *FAST), True),
        ("image", "PNG header declaring 14000² (Pillow's decompression bomb)",
         lambda: cli("fuse", H.png_header(r / "p14k.png"), B, "-o", out, *FAST), True),
        ("image", "complex64 TIFF", lambda: cli("fuse", r / "c64.tif", B, "-o", out, *FAST), True),
        ("image", "OME-XML with one mismatched tag", malformed_ome, True),
        ("image", "NaN pixels in a TIFF", nan_file, False),
        ("image", "the 30000² TIFF read as a real image (`--max-image-mb 0`; reading only)", read_only(big30), False),
        ("image", "4000 × 3000 grey plane: engine memory (tile 512)", tiles_memory((3000, 4000)), False),
        ("image", "4000 × 3000 RGB plane: engine memory (tile 512)", tiles_memory((3000, 4000, 3)), False),
        ("fusion", "`--dtype input` with int64 input", dtype_input(np.int64), False),
        ("fusion", "`--dtype input` with uint64 input", dtype_input(np.uint64), False),
        ("fusion", "out of memory in fuse", oom, False),
        ("fusion", "`--batch-size 0 --scheduler …`",
         lambda: cli("fuse", A, B, "-o", out, "--batch-size", "0", "--scheduler", "tcp://127.0.0.1:9", *FAST), False),
        ("fusion", "`--batch-size -3`", lambda: cli("fuse", A, B, "-o", out, "--batch-size", "-3", *FAST), False),
        ("training", "`train --lr 1e9 --steps-per-epoch 1`", lr_1e9, False),
        ("training", "`--checkpoint` an existing TIFF", checkpoint_onto("tif"), False),
        ("training", "`--checkpoint` the `--init` model, `--overwrite`", checkpoint_onto("init"), False),
        ("training", "final write fails (file too large)", rescue, False),
        ("hangs", "`--scheduler` at a silent TCP service", scheduler(None), "service"),
        ("hangs", "`--scheduler` at an HTTP server", scheduler(b"HTTP/1.1 200 OK\r\n\r\n"), "service"),
        ("hangs", "`--scheduler` at a peer whose first bytes read as 3.07 EiB", scheduler(b"\xff" * 8), "service"),
        ("hangs", "`--scheduler` with no workers", no_workers, False),
        ("hangs", "widgets.json is a FIFO", prefs("fifo"), True),
        ("hangs", "widgets.json → /dev/zero", prefs("dev_zero"), True),
        ("hangs", "widgets.json nested 30,000 deep", prefs("nested"), True),
    ]
    return out_cases
