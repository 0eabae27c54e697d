"""The wheel installs `backends/` as `saie_lite.backends`, never as a top-level `backends`."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_layout_and_clean_import(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next((tmp_path / "dist").glob("saie_lite-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "saie_lite/backends/torch_peft.py" in names
    assert "saie_lite/data/gsm8k_sample.jsonl" in names
    assert not any(n.startswith("backends/") for n in names)
    # every package of the source tree is in the wheel (pyproject lists them by hand)
    for init in (ROOT / "saie_lite").rglob("__init__.py"):
        assert init.relative_to(ROOT).as_posix() in names, init
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    # -S: no site-packages, so neither the source tree nor an editable install can answer.
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r}); "
        "import saie_lite.backends.scripted as s, saie_lite.registry as r; "
        "print(s.__file__); print(sorted(r.available('learners')), sorted(r.available('partners')))"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True
    ).stdout.splitlines()
    assert out[0].startswith(str(tmp_path / "site"))
    assert "scripted" in out[1] and "torch" in out[1] and "llama_cpp" in out[1]
