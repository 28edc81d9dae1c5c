"""runtime.outputs: an existing output is refused unless forced, and files appear in one step."""
from __future__ import annotations

import os
import stat

import pytest

from runtime.outputs import OutputExistsError, refuse_existing, replaced_atomically, write_text_atomic


def test_refuse_existing_names_the_option_and_the_fix(tmp_path):
    refuse_existing(tmp_path / "new.json", force=False)          # nothing there: free
    taken = tmp_path / "taken.json"
    taken.write_text("{}")
    with pytest.raises(OutputExistsError, match=r"taken.json' already exists; choose another --json or pass --force"):
        refuse_existing(taken, force=False, option="--json")
    refuse_existing(taken, force=True)
    folder = tmp_path / "report"
    folder.mkdir()
    refuse_existing(folder, force=False, empty_ok=True)          # an empty folder made beforehand is free
    with pytest.raises(OutputExistsError):
        refuse_existing(folder, force=False)
    (folder / "report.md").write_text("earlier")
    with pytest.raises(OutputExistsError, match="--out"):
        refuse_existing(folder, force=False, empty_ok=True)


def test_replaced_atomically_keeps_the_old_file_on_error_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with replaced_atomically(path) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".json" and tmp != path
            tmp.write_text("half a n")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]
    write_text_atomic(path, "new ✓")
    assert path.read_text(encoding="utf-8") == "new ✓" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_replaced_files_get_the_umask_mode_not_the_temporary_files_private_one(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.md", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.md").stat().st_mode) == 0o644


def test_a_json_side_output_is_refused_before_the_measurement(tiny_artifact, tmp_path, capsys):
    from quant.fidelity import main

    taken = tmp_path / "fidelity.json"
    taken.write_text("an earlier measurement")
    with pytest.raises(SystemExit) as exc:
        main(["--fp32", str(tiny_artifact), str(tiny_artifact), "--json", str(taken)])
    assert exc.value.code == 2
    err = capsys.readouterr()
    assert "already exists; choose another --json or pass --force" in err.err and "texts; cosine" not in err.out
    assert taken.read_text() == "an earlier measurement"
