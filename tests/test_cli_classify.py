"""`fracture classify` and `fracture db` run as real commands on real images."""

from __future__ import annotations

import csv
import subprocess
import zipfile
from pathlib import Path

from installation import VENV_BIN, base_env

FRACTURE = str(VENV_BIN / "fracture")


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FRACTURE, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_db_upgrade_current_and_downgrade(tmp_path: Path) -> None:
    env = base_env(tmp_path / "home")
    assert run(["db", "current"], env, tmp_path).stdout.strip() == "(empty database)"
    up = run(["db", "upgrade"], env, tmp_path)
    assert up.returncode == 0, up.stderr
    assert (tmp_path / "home" / "fracture.sqlite").is_file()
    head = run(["db", "current"], env, tmp_path).stdout.strip()
    assert head and head != "(empty database)"
    down = run(["db", "downgrade", "base"], env, tmp_path)
    assert down.returncode == 0, down.stderr
    assert run(["db", "current"], env, tmp_path).stdout.strip() == "(empty database)"


def test_classify_a_folder_and_a_zip_with_a_non_image(
    tmp_path: Path, sample_dir: Path, tiny_checkpoint: Path
) -> None:
    folder = sample_dir / "test"
    images = sorted(p for p in folder.rglob("*") if p.is_file())
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in images[:5]:
            zf.write(p, f"xrays/{p.name}")
        zf.writestr("xrays/readme.txt", "this is not an image")
        zf.writestr("__MACOSX/xrays/._junk", "resource fork, skipped quietly")
        zf.writestr("../escape.png", b"\x89PNG")
    # A fresh installation whose release model is the tiny checkpoint: classify seeds and uses it.
    env = {**base_env(tmp_path / "home"), "FRACTURE_SEED_MODEL": str(tiny_checkpoint)}
    out = tmp_path / "out" / "results.csv"

    done = run(["classify", str(folder), str(archive), "--out", str(out)], env, tmp_path)
    assert done.returncode == 0, done.stderr
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "prediction", "probability", "in_distribution", "ood_score", "model_version",
                             "error", "study_instance_uid", "sop_instance_uid"]
    assert len(rows) == len(images) + 5 + 2  # the folder, the zip's images, its text file, its unsafe member
    # Folders are named relative to their parent, a file named on the command line as given.
    by_path = {r["path"].replace(f"{archive}/", "batch.zip/"): r for r in rows}
    assert by_path[f"test/{images[0].relative_to(folder).as_posix()}"]["error"] == ""
    assert "not an image" in by_path["batch.zip/xrays/readme.txt"]["error"]
    assert by_path["batch.zip/xrays/readme.txt"]["prediction"] == ""
    assert ".." in by_path["batch.zip/escape.png"]["error"]
    assert not any("__MACOSX" in p for p in by_path)
    good = [r for r in rows if not r["error"]]
    assert len(good) >= len(images) + 5 - 1  # the dataset has a few truncated files; at most one here
    for r in good:
        assert r["prediction"] in ("fractured", "not fractured")
        assert 0.0 <= float(r["probability"]) <= 1.0
        assert r["model_version"] == "release-1"
        assert r["in_distribution"] == r["ood_score"] == ""  # the tiny checkpoint has no detector
    assert "img" in done.stderr  # the progress bar


def test_classify_refuses_plainly_without_a_model(tmp_path: Path, sample_images: list[Path]) -> None:
    # No release checkpoint to seed from (a fresh clone ships one; this installation points elsewhere).
    env = dict(base_env(tmp_path / "h"), FRACTURE_SEED_MODEL=str(tmp_path / "absent.pt"))
    done = run(["classify", str(sample_images[0]), "--out", str(tmp_path / "r.csv")], env, tmp_path)
    assert done.returncode != 0
    assert "no trained model" in done.stderr


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_classify_dot_needs_no_installation_and_reads_only_the_images(
    tmp_path: Path, sample_images: list[Path]
) -> None:
    """`fracture classify .` inside a folder of X-rays: the release model, one CSV written, nothing else."""
    folder = tmp_path / "xrays"
    folder.mkdir()
    names = [f"{i:02d}{p.suffix}" for i, p in enumerate(sample_images[:6])]
    for name, src in zip(names, sample_images, strict=False):
        (folder / name).write_bytes(src.read_bytes())
    env = {k: v for k, v in base_env(tmp_path / "home").items() if k not in ("FRACTURE_HOME", "DATABASE_URL")}

    for attempt in (1, 2):  # the second run finds the first run's CSV in the folder and must not read it
        done = run(["classify", ".", "--out", "results.csv"], env, folder)
        assert done.returncode == 0, done.stderr
        rows = _rows(folder / "results.csv")
        assert sorted(r["path"] for r in rows) == sorted(names), attempt
        assert {r["model_version"] for r in rows} == {"release-1"}
        assert sum(r["prediction"] in ("fractured", "not fractured") for r in rows) >= len(names) - 1
    assert sorted(p.name for p in folder.iterdir()) == sorted([*names, "results.csv"])
    assert not (tmp_path / "home").exists()


def test_classify_dot_skips_an_installation_in_the_folder(tmp_path: Path, sample_images: list[Path]) -> None:
    """An installation made in the folder (`fracture db upgrade` there) serves its model, its files are not inputs."""
    folder = tmp_path / "xrays"
    folder.mkdir()
    (folder / "scan.jpg").write_bytes(sample_images[0].read_bytes())
    env = {k: v for k, v in base_env(tmp_path / "home").items() if k not in ("FRACTURE_HOME", "DATABASE_URL")}
    assert run(["db", "upgrade"], env, folder).returncode == 0
    assert (folder / "fracture-data" / "fracture.sqlite").is_file()

    done = run(["classify", ".", "--out", "out/results.csv"], env, folder)
    assert done.returncode == 0, done.stderr
    rows = _rows(folder / "out" / "results.csv")
    assert [r["path"] for r in rows] == ["scan.jpg"] and rows[0]["model_version"] == "release-1"


def test_no_csv_cell_is_a_live_formula(tmp_path: Path, sample_images: list[Path]) -> None:
    """File names that a spreadsheet would run as formulas reach the CSV neutralised with a leading quote."""
    folder = tmp_path / "in"
    folder.mkdir()
    png = next(p for p in sample_images if p.suffix.lower() == ".png" or p.read_bytes()[:4] == b"\x89PNG")
    evil = ['=HYPERLINK("https:example.invalid","click").png', "+SUM(1,2).png", "-2+3.png", "@cmd.png"]
    for name in evil:
        (folder / name).write_bytes(png.read_bytes())
    with zipfile.ZipFile(folder / "=1+1.zip", "w") as z:
        z.writestr('=HYPERLINK("http://example.invalid/x","x").png', png.read_bytes())
    env = {k: v for k, v in base_env(tmp_path / "home").items() if k not in ("FRACTURE_HOME", "DATABASE_URL")}
    done = run(["classify", ".", "--out", str(tmp_path / "out.csv")], env, folder)  # names as the cells' start
    assert done.returncode == 0, done.stderr
    paths = [r["path"] for r in _rows(tmp_path / "out.csv")]
    assert len(paths) == len(evil) + 1
    assert sorted(p for p in paths if not p.startswith("'=1+1.zip/")) == sorted("'" + n for n in evil)
    assert not any(p.startswith(("=", "+", "-", "@")) for p in paths)


def test_serving_a_release_model_imports_neither_scikit_learn_nor_torchvision(sample_images: list[Path]) -> None:
    """What `fracture classify` and the inference worker load to serve a FracNet checkpoint stays free of the two
    heavy libraries only training needs (a second each of start-up on 2 cores: bench/run.py's start-up row)."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import torch\n"
        "from fracture.ml.inference import Predictor\n"
        "from fracture.ml.preprocess import load_u8\n"
        "p = Predictor.from_file(Path('fracture/release/model.pt'), device=torch.device('cpu'))\n"
        f"probs, ood = p.scores(torch.stack([load_u8(Path({str(sample_images[0])!r}), p.spec)]))\n"
        "assert len(probs) == 1 and 0.0 <= float(probs[0]) <= 1.0\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'torchvision', 'scipy'}))\n"
    )
    out = subprocess.run([str(VENV_BIN / "python"), "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_classify_checks_the_installations_active_model_file(
    tmp_path: Path, fracture_env: dict[str, str], sample_images: list[Path]
) -> None:
    from fracture.config import get_settings
    from fracture.db import session_scope
    from fracture.models import ModelVersion
    from fracture.registry import checkpoint_path

    out = tmp_path / "r.csv"
    done = run(["classify", str(sample_images[0]), "--out", str(out)], fracture_env, tmp_path)
    assert done.returncode == 0, done.stderr
    settings = get_settings(fracture_env)
    with session_scope(settings.database_url) as session:
        version = session.get_one(ModelVersion, int(fracture_env["FRACTURE_MODEL_VERSION_ID"]))
        assert [r["model_version"] for r in _rows(out)] == [version.name]
        stored = checkpoint_path(settings, version)
    # The active version's file replaced behind the registry's back: classify refuses it, as the workers do.
    stored.write_bytes(stored.read_bytes() + b"\0")
    done = run(["classify", str(sample_images[0]), "--out", str(tmp_path / "again.csv")], fracture_env, tmp_path)
    assert done.returncode != 0
    assert "SHA-256" in done.stderr
