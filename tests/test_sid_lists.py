"""SID names, splits, list files and the two pair sources (placeholder files: only names matter)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from datamodules.sid_lists import (
    SIDLayoutError,
    load_pairs,
    pairs_from_authors,
    pairs_from_lists,
    parse_list_file,
    parse_sid_name,
    split_of_scene,
)

SHORTS = [
    "00001_00_0.1s.ARW", "00001_01_0.04s.ARW", "00001_02_0.1s.ARW",
    "00002_00_0.033s.ARW", "00002_00_0.1s.ARW",
    "20001_00_0.1s.ARW", "20001_01_0.04s.ARW",
    "10003_00_0.1s.ARW", "10003_01_0.04s.ARW",
    "00004_00_0.04s.ARW",  # no 0.1 s first shot: not in the authors' subset
]
LONGS = ["00001_00_10s.ARW", "00002_00_30s.ARW", "20001_00_10s.ARW", "10003_00_10s.ARW",
         "00004_00_10s.ARW"]


def make_tree(root: Path, lists: dict[str, list[str]] | None = None) -> Path:
    for folder, names in (("short", SHORTS), ("long", LONGS)):
        (root / "Sony" / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / "Sony" / folder / name).write_bytes(b"")
    (root / "Sony" / "short" / ".DS_Store").write_bytes(b"")
    lists = lists or {
        "train": ["./Sony/short/00001_01_0.04s.ARW ./Sony/long/00001_00_10s.ARW ISO200 F8",
                  "./Sony/short/00002_00_0.1s.ARW ./Sony/long/00002_00_30s.ARW ISO200 F8"],
        "val": ["./Sony/short/20001_01_0.04s.ARW ./Sony/long/20001_00_10s.ARW ISO200 F8"],
        "test": ["", "./Sony/short/10003_00_0.1s.ARW ./Sony/long/10003_00_10s.ARW ISO200 F8"],
    }
    for split, lines in lists.items():
        (root / f"Sony_{split}_list.txt").write_text("\n".join(lines) + "\n")
    return root


def test_parse_names() -> None:
    name = parse_sid_name("./Sony/short/00001_00_0.04s.ARW")
    assert (name.scene, name.shot, name.exposure, name.split) == ("00001", 0, 0.04, "train")
    assert parse_sid_name("10034_03_0.033s.dng").exposure == pytest.approx(0.033)
    assert parse_sid_name("/x/20011_00_10s.ARW").exposure == 10.0
    assert parse_sid_name("20011_00_10s.tiff").split == "val"
    for bad in ("00001_00_0.04.ARW", "1_00_0.1s.ARW", "00001_00_0.1s", "00001_00_0s.ARW"):
        with pytest.raises(SIDLayoutError, match="00001|1_00"):
            parse_sid_name(bad)


def test_splits_by_scene_id() -> None:
    assert [split_of_scene(s) for s in ("00001", "20001", "10001")] == ["train", "val", "test"]
    with pytest.raises(SIDLayoutError, match="'30001'"):
        split_of_scene("30001")


def test_list_files(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    pairs = pairs_from_lists(root)
    assert [len(pairs[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    first = pairs["train"][0]
    assert first.short == root.absolute() / "Sony/short/00001_01_0.04s.ARW"
    assert first.long_relpath == "Sony/long/00001_00_10s.ARW"
    assert (first.scene, first.shot, first.short_exposure, first.long_exposure) == (
        "00001", 1, 0.04, 10.0)
    assert first.name == "00001_01_0.04s"
    assert pairs["train"][1].long_exposure == 30.0
    assert load_pairs(root, "lists") == pairs


def test_authors_subset_pairs_by_scene(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_tree(tmp_path)
    with caplog.at_level(logging.WARNING, logger="datamodules.sid_lists"):
        pairs = pairs_from_authors(root)
    # Scene 00004 has a ground truth but no 0.1 s first shot: left out, and said so.
    (record,) = caplog.records
    assert "1 scene(s) with a ground truth have no first shot at 0.1s (e.g. 00004" in record.message
    names = {split: [p.name for p in pairs[split]] for split in pairs}
    assert names == {
        "train": ["00001_00_0.1s", "00002_00_0.1s", "20001_00_0.1s"],  # train + val scenes
        "val": ["20001_00_0.1s"],
        "test": ["10003_00_0.1s"],
    }
    for split_pairs in pairs.values():
        for pair in split_pairs:
            assert parse_sid_name(pair.long).scene == pair.scene == parse_sid_name(pair.short).scene
            assert pair.short_exposure == 0.1


def test_missing_folders_are_named(tmp_path: Path) -> None:
    with pytest.raises(SIDLayoutError, match=r"does not exist.*Sony/short.*Learning-to-See"):
        pairs_from_lists(tmp_path / "nowhere")
    (tmp_path / "Sony" / "short").mkdir(parents=True)
    with pytest.raises(SIDLayoutError, match=r"missing folder .*Sony/long"):
        pairs_from_authors(tmp_path)


def test_list_file_errors(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    (root / "Sony_val_list.txt").unlink()
    with pytest.raises(SIDLayoutError, match=r"missing list file .*Sony_val_list.txt"):
        pairs_from_lists(root)

    empty = root / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(SIDLayoutError, match=r"empty\.txt is empty"):
        parse_list_file(empty, root)

    bad = root / "bad.txt"
    bad.write_text(
        "./Sony/short/00001_01_0.04s.ARW ./Sony/long/00001_00_10s.ARW ISO200 F8\n"
        "./Sony/short/00002_00_0.1s.ARW\n"
    )
    with pytest.raises(SIDLayoutError, match=r"bad\.txt:2: malformed line '\./Sony/short/00002"):
        parse_list_file(bad, root)

    swapped = root / "swapped.txt"
    swapped.write_text("./Sony/long/00001_00_10s.ARW ./Sony/short/00001_01_0.04s.ARW\n")
    with pytest.raises(SIDLayoutError, match=r"swapped\.txt:1: .*columns swapped"):
        parse_list_file(swapped, root)

    mismatch = root / "mismatch.txt"
    mismatch.write_text("./Sony/short/00001_01_0.04s.ARW ./Sony/long/00002_00_30s.ARW\n")
    with pytest.raises(SIDLayoutError, match=r"mismatch\.txt:1: .*scene 00001.*scene 00002"):
        parse_list_file(mismatch, root)

    missing = root / "missing.txt"
    missing.write_text("./Sony/short/00009_00_0.1s.ARW ./Sony/long/00009_00_10s.ARW ISO200 F8\n")
    with pytest.raises(SIDLayoutError, match=r"missing\.txt:1: listed file .*00009_00_0\.1s\.ARW"):
        parse_list_file(missing, root)


def test_unknown_pair_source(tmp_path: Path) -> None:
    with pytest.raises(SIDLayoutError, match=r"pairs='glob'.*lists.*authors"):
        load_pairs(make_tree(tmp_path), "glob")
