from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from pidng.core import RAW2DNG
from pidng.dng import Tag
from PIL import Image
from torch import nn

from darkraw.errors import ConfigError, DarkrawError, DataError
from darkraw.restoration import (
    PACKED_MULTIPLE,
    RAW_EXTENSIONS,
    Reporter,
    amplification_for,
    axis_weights,
    blend_ramp,
    check_amplification,
    check_image_format,
    check_m_values,
    check_tiling,
    gains_and_labels,
    list_raw_files,
    load_packed_normalised,
    output_stems,
    pad_to_multiple,
    prepare_output_dir,
    restore_all,
    restore_file,
    run_padded,
    run_tiled,
    tile_count,
    tile_spans,
    trained_m,
    write_image,
)
from datamodules.dng import _tags, atomic_write_bytes, write_bayer_dng
from datamodules.raw import RawReadError, read_raw
from lightning_modules.network import DarkRestorationNet

REPO = Path(__file__).resolve().parents[1]
RESTORE_DEFAULTS = OmegaConf.load(REPO / "conf" / "restore.yaml")


def local_net() -> nn.Module:
    """A per-pixel network: tiling must reproduce its whole-image output exactly."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 12, 1), nn.PixelShuffle(2)).eval()


def restore_options(**overrides: object) -> dict[str, object]:
    options: dict[str, object] = {
        "m_values": [5.0], "amplification": "estimated", "image_format": "png",
        "tile_size": 32, "tile_overlap": 8, "device": torch.device("cpu"),
    }
    return {**options, **overrides}


def dark_mosaic(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(512, 900, size=(height, width), dtype=np.uint16)


@pytest.mark.parametrize(("tile", "overlap"), [(32, 0), (32, 15), (48, 16), (64, 31), (128, 40),
                                               (1024, 64)])
def test_tile_spans_start_at_multiples_of_16_and_cover_with_the_overlap(tile: int,
                                                                         overlap: int) -> None:
    stride = (tile - overlap) // PACKED_MULTIPLE * PACKED_MULTIPLE
    for length in [*range(1, 400), 1424, 2002, 2128, 4003]:
        spans = tile_spans(length, tile, overlap)
        assert spans[0][0] == 0 and sum(spans[-1]) == length
        assert all(start % PACKED_MULTIPLE == 0 and 0 < size <= tile for start, size in spans)
        assert all(size % PACKED_MULTIPLE == 0 for _, size in spans[:-1])  # no padding inside
        for (a, a_size), (b, _) in itertools.pairwise(spans):
            assert a < b and a + a_size - b >= overlap
        # As few tiles as can cover the length with 16-aligned starts, and about equal ones.
        fewest = 1 if length <= tile else 1 + math.ceil((length - tile) / stride)
        assert len(spans) == fewest, (length, spans)
        assert max(s for _, s in spans) - min(s for _, s in spans) < 2 * PACKED_MULTIPLE


def test_the_default_tiles_of_a_sid_frame_cost_little_more_than_the_frame() -> None:
    """Packed 1424 x 2128: greedy 1024 px tiles ran 6 tiles of 1024^2, 2.1x the pixels."""
    tile, overlap = RESTORE_DEFAULTS.tile_size, RESTORE_DEFAULTS.tile_overlap
    rows, cols = tile_spans(1424, tile, overlap), tile_spans(2128, tile, overlap)
    assert len(rows) * len(cols) == 6 == tile_count((1424, 2128), tile, overlap)
    assert all(start % PACKED_MULTIPLE == 0 for start, _ in rows + cols)
    area = sum(s for _, s in rows) * sum(s for _, s in cols)
    assert area <= 1.3 * 1424 * 2128


def test_blend_ramp_fades_only_on_shared_sides_and_stays_positive() -> None:
    w = blend_ramp(10, 4, 0)
    assert 0 < w[0] < w[1] < w[2] < w[3] < 1 and torch.all(w[4:] == 1)
    assert torch.all(blend_ramp(10, 0, 0) == 1)
    both = blend_ramp(10, 8, 6)  # ramps that meet inside the tile: still positive
    assert torch.all(both > 0) and both.max() < 1


@pytest.mark.parametrize("length", [100, 300, 1001])
def test_axis_weights_cross_fade_to_one_over_unequal_overlaps(length: int) -> None:
    spans = tile_spans(length, 64, 16)
    overlaps = {a + n - b for (a, n), (b, _) in itertools.pairwise(spans)}
    total = torch.zeros(2 * length)
    for (start, size), weights in zip(spans, axis_weights(spans), strict=True):
        assert weights.shape == (2 * size,) and torch.all(weights > 0)
        total[2 * start:2 * (start + size)] += weights
    assert torch.allclose(total, torch.ones(2 * length), atol=1e-6)
    if length == 1001:
        assert len(overlaps) > 1  # the case the per-neighbour ramps are there for


@pytest.mark.parametrize("hw", [(37, 53), (16, 16), (20, 3)])
def test_padding_reaches_a_multiple_of_16_and_output_is_cropped_back(hw: tuple[int, int]) -> None:
    x = torch.rand(1, 4, *hw)
    assert all(s % 16 == 0 for s in pad_to_multiple(x).shape[-2:])
    net = DarkRestorationNet().eval()
    with torch.no_grad():
        y = run_padded(net, x)
    assert y.shape == (1, 3, 2 * hw[0], 2 * hw[1])


@pytest.mark.parametrize(("hw", "tile", "overlap"), [((100, 140), 48, 16), ((101, 301), 64, 16),
                                                     ((70, 97), 32, 0)])
def test_tiles_blend_to_the_whole_image_result_for_a_local_network(
        hw: tuple[int, int], tile: int, overlap: int) -> None:
    x = torch.rand(1, 4, *hw)
    net = local_net()
    tiles: list[None] = []
    with torch.no_grad():
        whole = run_padded(net, x)
        tiled = run_tiled(net, x, tile=tile, overlap=overlap, on_tile=lambda: tiles.append(None))
    assert tiled.shape == whole.shape
    assert torch.allclose(tiled, whole, atol=1e-5)
    assert len(tiles) == tile_count(hw, tile, overlap) > 1


def test_tiles_of_the_real_network_stay_close_to_the_whole_image() -> None:
    """Its deepest encoder sees the whole tile, so seams shrink as tiles and overlaps grow."""
    x = torch.rand(1, 4, 192, 320) * 4
    net = DarkRestorationNet().eval()
    with torch.no_grad():
        whole = run_padded(net, x)
        small = run_tiled(net, x, tile=64, overlap=16)
        large = run_tiled(net, x, tile=160, overlap=64)
    assert large.shape == whole.shape
    assert large.min() >= 0 and large.max() <= 1
    assert (large - whole).abs().mean() < 0.5 * (small - whole).abs().mean()


# How far (packed px) a tile border changes the real network's output: measured on this random
# network, 0.006 at 96 px, 0.0007 at 128 and 0 from 160 on (its deepest 3x3 convs run at 1/16).
REACH = 192


def test_default_tiles_of_an_odd_raw_equal_the_whole_image_away_from_seams(
        tmp_path: Path) -> None:
    """A 41 x 4003 raw (short to be fast: only its width is tiled). Greedy tiles put the last
    one at 2002 - 1024 = 978 packed px, not a multiple of 16, and its whole tile came out up to
    151/255 off. Now every tile, the last one included, is the whole-image computation wherever
    no tile border is within reach."""
    path = write_bayer_dng(tmp_path / "odd.dng", dark_mosaic(41, 4003), exposure_time=0.1)
    packed = load_packed_normalised(path).packed
    x = torch.from_numpy(packed)[None] * 20
    tile, overlap = RESTORE_DEFAULTS.tile_size, RESTORE_DEFAULTS.tile_overlap
    net = DarkRestorationNet().eval()
    with torch.no_grad():
        whole = run_padded(net, x)
        tiled = run_tiled(net, x, tile, overlap)
    spans = tile_spans(x.shape[-1], tile, overlap)
    assert len(spans) == 3 and x.shape[-2] <= tile
    borders = [b for start, size in spans for b in (start, start + size) if 0 < b < x.shape[-1]]
    column = torch.arange(x.shape[-1]).repeat_interleave(2)  # the packed column of each pixel
    far = torch.stack([(column - b).abs() for b in borders]).amin(0) >= REACH
    for start, size in spans:  # every tile has such a region: the test reaches the last one
        assert far[2 * start:2 * (start + size)].any()
    assert (tiled - whole)[..., far].abs().max() < 1e-4
    assert (tiled - whole).abs().max() < 0.5  # near seams: blended, not a broken tile


@pytest.mark.parametrize(("tile", "overlap"), [(50, 8), (64, 32), (64, -1), (16, 4)])
def test_bad_tile_settings_fail_clearly(tile: int, overlap: int) -> None:
    with pytest.raises(ConfigError, match="tile_"):
        run_tiled(local_net(), torch.rand(1, 4, 200, 200), tile, overlap)


def test_a_fixed_amplification_gives_one_output_named_by_the_gain_whatever_m() -> None:
    packed = np.full((4, 8, 8), 0.02, np.float32)
    assert gains_and_labels(packed, 100, [1.0, 5.0]) == [(100.0, "x100")]
    assert gains_and_labels(packed, 2.5, [5.0]) == [(2.5, "x2p5")]


def test_the_estimated_amplification_gives_one_output_per_m() -> None:
    packed = np.random.default_rng(0).uniform(0.001, 0.02, (4, 16, 16)).astype(np.float32)
    outputs = gains_and_labels(packed, "estimated", [1.0, 2.5])
    assert [label for _, label in outputs] == ["m1", "m2p5"]
    assert [gain for gain, _ in outputs] == [amplification_for(packed, "estimated", m)
                                             for m in (1.0, 2.5)]
    assert outputs[0][0] < outputs[1][0]


@pytest.mark.parametrize(("check", "value", "message"), [
    (check_amplification, "bright", "amplification='bright' is not allowed"),
    (check_amplification, 500.0, "amplification=500 is outside"),
    (check_amplification, True, "amplification=True is not allowed"),
    (check_m_values, [1, 0], "m=0 is not allowed"),
    (check_m_values, [float("nan")], "m=nan is not allowed: each m must be a finite positive"),
    (check_m_values, [5, float("inf")], "m=inf is not allowed"),
    (check_m_values, [-math.inf], "m=-inf is not allowed"),
    (check_m_values, [1, 1.0], r"m=\[1, 1\.0\] gives m=1 and m=1\.0 the same image name "
                               r"\(<file>_m1\.<format>\), so one would replace the other"),
    (check_m_values, [2.5, 5, 2.5000001], r"m=2\.5 and m=2\.5000001 the same image name "
                                         r"\(<file>_m2p5\.<format>\)"),
    (check_m_values, ["x"], "m='x' is not allowed"),
    (check_m_values, [], "m=\\[\\] holds no value"),
    (check_image_format, "bmp", "format='bmp' is not allowed"),
])
def test_settings_are_checked_with_the_key_named(check: object, value: object,
                                                 message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check(value)  # type: ignore[operator]


def test_good_settings_pass_their_checks() -> None:
    assert check_amplification("estimated") == "estimated"
    assert check_amplification(100) == 100.0
    assert check_m_values([1, 5.5]) == [1.0, 5.5]
    assert check_image_format(".TIFF") == "tiff"
    check_tiling(None, 10_000)  # no tiling: the overlap does not matter
    check_tiling(1024, 64)
    check_tiling(16, 0)


# --- other Bayer phases -------------------------------------------------------------------------

# Rows/columns to add at the top/left of an RGGB mosaic so that it starts with each layout.
PHASES = {"GRBG": (0, 1), "GBRG": (1, 0), "BGGR": (1, 1)}


@pytest.mark.parametrize("pattern", sorted(PHASES))
def test_other_bayer_phases_restore_like_the_rggb_scene_they_contain(pattern: str,
                                                                    tmp_path: Path) -> None:
    """The same scene as RGGB, and with one more row and/or column at the top/left (then it
    starts at G or B): identical packed channels, the same image, padded back to full size."""
    dy, dx = PHASES[pattern]
    scene = dark_mosaic(63, 97)
    extra = dark_mosaic(64, 98, seed=1)
    shifted = extra.copy()
    shifted[dy:dy + 63, dx:dx + 97] = scene
    shifted = shifted[:63 + dy, :97 + dx]
    rggb = write_bayer_dng(tmp_path / "rggb.dng", scene, exposure_time=0.1)
    other = write_bayer_dng(tmp_path / f"{pattern}.dng", shifted, exposure_time=0.1,
                            cfa_pattern=pattern)

    loaded, loaded_rggb = load_packed_normalised(other), load_packed_normalised(rggb)
    packed, shape, offset = loaded.packed, loaded.shape, loaded.offset
    packed_rggb, shape_rggb = loaded_rggb.packed, loaded_rggb.shape
    assert offset == (dy, dx) and shape == shape_rggb == (63, 97)
    np.testing.assert_array_equal(packed, packed_rggb)

    options = restore_options(amplification=20)
    [(out_rggb, _)] = restore_file(local_net(), rggb, tmp_path / "out", **options)
    [(out_other, _)] = restore_file(local_net(), other, tmp_path / "out", **options)
    image = np.asarray(Image.open(out_other))
    assert image.shape == (63 + dy, 97 + dx, 3)  # the file's full visible size
    np.testing.assert_array_equal(image[dy:, dx:], np.asarray(Image.open(out_rggb)))
    np.testing.assert_array_equal(image[0], image[dy])  # replicated edge row (or itself)
    np.testing.assert_array_equal(image[:, 0], image[:, dx])


def test_a_bggr_files_sites_land_in_their_own_packed_channels(tmp_path: Path) -> None:
    """BGGR: B at (0, 0), R at (1, 1). Each colour must land in its packed channel (R, G, G, B)."""
    mosaic = np.empty((64, 96), np.uint16)
    mosaic[0::2, 0::2], mosaic[0::2, 1::2] = 1000, 2000  # B, G (on the B row)
    mosaic[1::2, 0::2], mosaic[1::2, 1::2] = 3000, 4000  # G (on the R row), R
    path = write_bayer_dng(tmp_path / "bggr.dng", mosaic, exposure_time=0.1, cfa_pattern="BGGR")
    frame = read_raw(path, multiple=1, any_bayer_phase=True)
    assert frame.offset == (1, 1) and frame.visible_shape == (64, 96)
    assert frame.shape == (63, 95) and frame.mosaic[0, 0] == 4000  # now starts at R
    packed = load_packed_normalised(path).packed
    black, white = frame.black_level[0], frame.white_level
    for channel, value in enumerate((4000, 3000, 2000, 1000)):  # R, G (R row), G (B row), B
        assert np.allclose(packed[channel], (value - black) / (white - black))


def test_training_keeps_refusing_other_bayer_phases(tmp_path: Path) -> None:
    path = write_bayer_dng(tmp_path / "g.dng", dark_mosaic(64, 64), exposure_time=0.1,
                           cfa_pattern="GBRG")
    with pytest.raises(RawReadError, match=r"g\.dng has CFA layout GBRG.*expects RGGB"):
        read_raw(path)


def write_xtrans_dng(path: Path) -> Path:
    """A Fuji X-Trans DNG (6 x 6 colour filter pattern), which LibRaw decodes as such."""
    xtrans = [1, 1, 0, 1, 1, 2, 1, 1, 2, 1, 1, 0, 2, 0, 1, 0, 2, 1,
              1, 1, 2, 1, 1, 0, 1, 1, 0, 1, 1, 2, 0, 2, 1, 2, 0, 1]
    tags = _tags(96, 96, exposure_time=0.1, black_level=512, white_level=16383,
                 cfa_pattern="RGGB", neutral=np.array([0.5, 1.0, 0.6]), iso=100)
    tags.set(Tag.CFARepeatPatternDim, [6, 6])
    tags.set(Tag.CFAPattern, xtrans)
    writer = RAW2DNG()
    writer.options(tags, path="", compress=False)
    return atomic_write_bytes(path, bytes(writer.convert(dark_mosaic(96, 96))))


def test_x_trans_files_still_fail_clearly(tmp_path: Path) -> None:
    path = write_xtrans_dng(tmp_path / "fuji.dng")
    with pytest.raises(RawReadError, match=r"fuji\.dng is not a 2x2 Bayer mosaic .*6x6.*X-Trans"):
        load_packed_normalised(path)


# --- folders, failures, output ------------------------------------------------------------------


class Recorder(Reporter):
    """Keeps what a run reports, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def reading(self, path: Path) -> None:
        self.events.append(("reading", path.name))

    def restoring(self, path: Path, images: int, tiles: int) -> None:
        self.events.append(("restoring", path.name, images, tiles))

    def advance(self) -> None:
        self.events.append(("tile",))

    def written(self, path: Path, gain: float) -> None:
        self.events.append(("written", path.name))

    def failed(self, path: Path, error: DarkrawError) -> None:
        self.events.append(("failed", path.name, str(error)))


def folder_with_a_bad_file(folder: Path) -> list[Path]:
    """a.dng and c.dng real raws, b.dng a PNG under a raw name."""
    a = write_bayer_dng(folder / "a.dng", dark_mosaic(64, 96), exposure_time=0.1)
    b = folder / "b.dng"
    Image.new("RGB", (32, 32)).save(b, format="PNG")
    c = write_bayer_dng(folder / "c.dng", dark_mosaic(65, 97), exposure_time=0.1)
    return [a, b, c]


def test_a_bad_file_is_reported_and_skipped_and_the_others_are_restored(tmp_path: Path) -> None:
    files = folder_with_a_bad_file(tmp_path / "raw")
    recorder = Recorder()
    report = restore_all(local_net(), files, tmp_path / "out", reporter=recorder,
                         **restore_options(m_values=[1.0, 5.0]))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a_m1.png", "a_m5.png", "c_m1.png", "c_m5.png"]
    assert [p.name for p, _ in report.written] == ["a_m1.png", "a_m5.png", "c_m1.png", "c_m5.png"]
    # Each image is reported as soon as it is written, before the next one is restored.
    names = [e for e in recorder.events if e[0] != "tile"]
    assert names[:4] == [("reading", "a.dng"), ("restoring", "a.dng", 2, 2),
                         ("written", "a_m1.png"), ("written", "a_m5.png")]
    assert names[4][:2] == ("reading", "b.dng") and names[5][:2] == ("failed", "b.dng")
    assert "LibRaw does not recognise it" in names[5][2]
    assert names[6:] == [("reading", "c.dng"), ("restoring", "c.dng", 2, 6),
                         ("written", "c_m1.png"), ("written", "c_m5.png")]
    assert recorder.events.count(("tile",)) == 2 * 2 + 2 * 6  # images x tiles, per file
    [(failed, reason)] = report.failed
    assert failed == files[1] and str(files[1]) not in reason  # the name is listed beside it
    message = report.failure_message()
    assert message.startswith("1 of 3 files could not be restored: b.dng (cannot decode b.dng: ")
    assert "\n" not in message


def test_a_single_file_that_fails_raises_its_own_error(tmp_path: Path) -> None:
    bad = folder_with_a_bad_file(tmp_path)[1]
    with pytest.raises(RawReadError, match=r"cannot decode .*b\.dng"):
        restore_all(local_net(), [bad], tmp_path / "out", skip_failures=False,
                    **restore_options())


def test_many_failures_list_the_first_few_on_one_line(tmp_path: Path) -> None:
    files = []
    for i in range(8):
        files.append(tmp_path / f"junk{i}.dng")
        files[-1].write_bytes(b"not a raw file" * 100)
    report = restore_all(local_net(), files, tmp_path / "out", **restore_options())
    message = report.failure_message()
    assert message.startswith("8 of 8 files could not be restored: junk0.dng (")
    assert "junk4.dng" in message and "junk5.dng" not in message
    assert message.endswith(", and 3 more (see the warnings above)")


def test_output_folders_that_cannot_be_written_fail_up_front_naming_the_path(
        tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for output, reason in [(a_file, "is a file, not a folder"),
                           (a_file / "sub", "cannot be created or written"),
                           (Path("/proc/nope"), "cannot be created or written")]:
        with pytest.raises(ConfigError, match=f"output={output} {reason}"):
            prepare_output_dir(output)
    made = prepare_output_dir(tmp_path / "new" / "deeper")
    assert made.is_dir() and list(made.iterdir()) == []  # the write probe leaves nothing


def test_a_failed_write_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(DataError, match=r"cannot write .*blocker/x\.png"):
        write_image(torch.zeros(3, 4, 4), blocker / "x.png")


# --- which files a folder run takes, and what it names its images --------------------------------


def test_the_common_bayer_raw_formats_are_taken_by_their_extension() -> None:
    """RAF (non-X-Trans Fujis), Minolta MRW, old Canon CRW, Sony SRF/SR2 and Hasselblad FFF were
    passed over in a folder without a word."""
    for extension in (".raf", ".mrw", ".crw", ".srf", ".sr2", ".fff", ".mef", ".kdc", ".arw",
                      ".dng", ".nef", ".cr2", ".cr3", ".orf", ".rw2", ".pef"):
        assert extension in RAW_EXTENSIONS, extension
    assert ".jpg" not in RAW_EXTENSIONS and ".x3f" not in RAW_EXTENSIONS  # no Foveon mosaic
    assert len(set(RAW_EXTENSIONS)) == len(RAW_EXTENSIONS)


def folder_of_everything(folder: Path) -> Path:
    """Raws under three extensions, and what a real photo folder also holds beside them."""
    for name in ("a.dng", "b.RAF", "c.mrw"):
        write_bayer_dng(folder / name, dark_mosaic(64, 96), exposure_time=0.1)
    (folder / "sub.dng").mkdir()  # a folder named like a raw
    (folder / "._a.dng").write_bytes(b"\x00\x05\x16\x07" + bytes(4000))  # macOS AppleDouble
    for name in ("notes.txt", "a.jpg", "b.xmp", "c.pp3"):
        (folder / name).write_text("not a raw")
    return folder


def test_a_folder_listing_takes_raw_files_and_names_what_it_skips(tmp_path: Path) -> None:
    folder = folder_of_everything(tmp_path / "photos")
    listing = list_raw_files(folder)
    assert [p.name for p in listing.files] == ["a.dng", "b.RAF", "c.mrw"]
    assert listing.skipped_message() == (
        "skipped 6 entries: 4 not raw files by their extension: a.jpg, b.xmp, c.pp3, ... (1 more);"
        " 1 folder or other non-file (sub-folders are not searched): sub.dng; 1 macOS metadata "
        "file (._*): ._a.dng"
    )
    # Every file taken is one LibRaw decodes (the ones under RAF and MRW names too).
    for path in listing.files:
        assert load_packed_normalised(path).packed.shape == (4, 32, 48)
    only_raws = tmp_path / "raws"
    write_bayer_dng(only_raws / "x.dng", dark_mosaic(64, 64), exposure_time=0.1)
    assert list_raw_files(only_raws).skipped_message() is None
    assert list_raw_files(only_raws / "x.dng").files == [only_raws / "x.dng"]


def test_a_folder_without_raw_files_says_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "sub.dng").mkdir()
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(DataError, match=r"holds no raw files \(taken by extension: 3fr arw .*\); "
                                        r"skipped 2 entries: 1 not a raw file by its extension: "
                                        r"notes\.txt; 1 folder .*: sub\.dng$"):
        list_raw_files(tmp_path)
    with pytest.raises(DataError, match=r"holds no raw files .*, and nothing else$"):
        list_raw_files(tmp_path / "sub.dng")


@pytest.mark.parametrize(("names", "stems"), [
    (["a.dng", "b.dng"], ["a", "b"]),
    (["a.dng", "a.NEF", "b.dng"], ["a_dng", "a_NEF", "b"]),
    (["IMG_1.CR2", "img_1.dng"], ["IMG_1_CR2", "img_1_dng"]),  # one name on macOS and Windows
    (["x.tar.dng", "x.tar.nef"], ["x.tar_dng", "x.tar_nef"]),
])
def test_output_stems_keep_the_extension_only_where_stems_collide(names: list[str],
                                                                  stems: list[str]) -> None:
    files = [Path("in") / name for name in names]
    assert list(output_stems(files).values()) == stems


@pytest.mark.parametrize("names", [["A.dng", "a.dng"], ["a.dng", "a.NEF", "a_NEF.dng"]])
def test_names_that_collide_even_with_their_extension_are_refused_naming_them(
        names: list[str]) -> None:
    files = [Path("in") / name for name in names]
    with pytest.raises(DataError, match=r"would write images of the same name .*: rename one of "
                                        "them") as caught:
        output_stems(files)
    assert "\n" not in str(caught.value)
    assert sum(name in str(caught.value) for name in names) == 2
    # The case note only where the names differ by case alone.
    assert ("differing only in case" in str(caught.value)) == (names[0] == "A.dng")


def test_files_sharing_a_stem_each_keep_their_images(tmp_path: Path) -> None:
    """IMG_0001.CR2 and the IMG_0001.DNG made from it: both wrote IMG_0001_m5.png, the second
    replacing the first. Each image must be its own file's restoration."""
    folder = tmp_path / "raw"
    first = write_bayer_dng(folder / "a.dng", dark_mosaic(64, 96, seed=1), exposure_time=0.1)
    second = write_bayer_dng(folder / "a.NEF", dark_mosaic(64, 96, seed=2), exposure_time=0.1)
    other = write_bayer_dng(folder / "b.dng", dark_mosaic(64, 96, seed=3), exposure_time=0.1)
    report = restore_all(local_net(), list_raw_files(folder).files, tmp_path / "out",
                         **restore_options(m_values=[1.0, 5.0]))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a_NEF_m1.png", "a_NEF_m5.png", "a_dng_m1.png", "a_dng_m5.png", "b_m1.png", "b_m5.png"]
    assert len(report.written) == 6
    for path, stem in ((first, "a_dng"), (second, "a_NEF"), (other, "b")):
        [(alone, _)] = restore_file(local_net(), path, tmp_path / "alone",
                                    **restore_options())
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / f"{stem}_m5.png")),
                                      np.asarray(Image.open(alone)))
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "out" / "a_dng_m5.png")),
                              np.asarray(Image.open(tmp_path / "out" / "a_NEF_m5.png")))


@pytest.mark.parametrize("kind", ["text", "appledouble", "png"])
def test_a_file_libraw_cannot_read_is_called_not_a_readable_raw_file(tmp_path: Path,
                                                                     kind: str) -> None:
    """datamodules.raw words these for SID's download ("re-download it"); a user's photo
    folder needs to hear what the file is instead."""
    path = tmp_path / {"text": "notes.dng", "appledouble": "._a.dng", "png": "p.nef"}[kind]
    if kind == "png":
        Image.new("RGB", (32, 32)).save(path, format="PNG")
    else:
        path.write_bytes(b"\x00\x05\x16\x07" + bytes(4000) if kind == "appledouble"
                         else b"just some notes\n" * 50)
    with pytest.raises(RawReadError, match=f"cannot decode {path}: LibRaw does not recognise it "
                                           "as a raw file .*: it is not a readable raw file"
                       ) as caught:
        load_packed_normalised(path)
    message = str(caught.value)
    assert "download" not in message and "dataset" not in message and "\n" not in message


def test_a_cut_short_raw_file_is_not_told_to_be_downloaded_again(tmp_path: Path) -> None:
    whole = write_bayer_dng(tmp_path / "whole.dng", dark_mosaic(256, 256), exposure_time=0.1)
    cut = tmp_path / "cut.dng"
    cut.write_bytes(whole.read_bytes()[:4000])
    with pytest.raises(RawReadError, match=r"cannot decode .*cut\.dng: .*not a readable raw "
                                           r"file") as caught:
        load_packed_normalised(cut)
    assert "download" not in str(caught.value) and "\n" not in str(caught.value)


def test_a_file_gone_since_the_listing_is_said_so(tmp_path: Path) -> None:
    with pytest.raises(RawReadError, match=r"cannot read .*gone\.dng: it is no longer a file"):
        load_packed_normalised(tmp_path / "gone.dng")


@pytest.mark.parametrize(("trained", "m", "source"), [
    ({"amplification": "estimated", "m": 3}, 3.0, "the checkpoint's data.m=3"),
    ({"amplification": "estimated", "m": 2.5}, 2.5, "the checkpoint's data.m=2.5"),
    ({"amplification": "exposure_ratio", "m": 3}, 5.0,
     "the paper's m=5: the checkpoint was trained with data.amplification=exposure_ratio"),
    ({}, 5.0, "the paper's m=5: the checkpoint records no training settings"),
])
def test_trained_m_is_the_checkpoints_knob_or_the_papers(trained: dict, m: float,
                                                         source: str) -> None:
    assert trained_m(trained) == (m, source)


# --- orientation, amplifier limits, non-finite outputs ----------------------------------------


@pytest.mark.parametrize(("orientation", "turn"), [(6, -1), (8, 1), (3, 2)])
def test_a_photo_taken_upright_is_restored_upright(tmp_path: Path, orientation: int,
                                                   turn: int) -> None:
    """A portrait photo's mosaic is stored sideways, with an Orientation tag: its restoration
    came out sideways. ``orientation=sensor`` keeps the stored orientation (eval.py's)."""
    mosaic = dark_mosaic(64, 96)
    stored = write_bayer_dng(tmp_path / "stored.dng", mosaic, exposure_time=0.1)
    turned = write_bayer_dng(tmp_path / "turned.dng", mosaic, exposure_time=0.1,
                             orientation=orientation)
    options = restore_options(amplification=20)
    [(plain, _)] = restore_file(local_net(), stored, tmp_path / "out", **options)
    [(shot, _)] = restore_file(local_net(), turned, tmp_path / "out", **options)
    [(sensor, _)] = restore_file(local_net(), turned, tmp_path / "sensor", orientation="sensor",
                                 **options)
    plain_image = np.asarray(Image.open(plain))
    np.testing.assert_array_equal(np.asarray(Image.open(shot)), np.rot90(plain_image, turn))
    np.testing.assert_array_equal(np.asarray(Image.open(sensor)), plain_image)
    with pytest.raises(ConfigError, match="orientation='upright' is not allowed"):
        restore_file(local_net(), turned, tmp_path / "x", orientation="upright", **options)


class Warnings(Reporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, message: str) -> None:
        self.lines.append(message)


def test_knobs_beyond_the_amplifier_limits_are_said(tmp_path: Path) -> None:
    """m=1e6 and m=1e-6 are clamped to x300 and x1: images the same as their neighbours',
    under other names, with a line saying why."""
    path = write_bayer_dng(tmp_path / "dark.dng", dark_mosaic(64, 96), exposure_time=0.1)
    reporter = Warnings()
    written = restore_file(local_net(), path, tmp_path / "out", reporter=reporter,
                           **restore_options(m_values=[1e-6, 5.0, 1e6]))
    assert [gain for _, gain in written][0::2] == [1.0, 300.0]
    assert reporter.lines == [
        "dark.dng: m=1e-06 reaches the amplifier's lower limit, x1 (the range the network was "
        "trained on is [1, 300]): a smaller m gives the same image",
        "dark.dng: m=1e+06 reaches the amplifier's upper limit, x300 (the range the network was "
        "trained on is [1, 300]): a larger m gives the same image",
    ]
    reporter = Warnings()  # a fixed gain is the user's own number: nothing to say
    restore_file(local_net(), path, tmp_path / "fixed", reporter=reporter,
                 **restore_options(amplification=300))
    assert reporter.lines == []


class NanNet(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 3, 2 * x.shape[-2], 2 * x.shape[-1])
        out[..., 5, 7] = float("nan")
        return out


def test_a_restoration_holding_nan_is_an_error_not_a_black_image(tmp_path: Path) -> None:
    """NaN rounds to 0 in the written image: a black picture and exit status 0 before."""
    path = write_bayer_dng(tmp_path / "dark.dng", dark_mosaic(64, 96), exposure_time=0.1)
    with pytest.raises(DataError, match=r"the restoration of .*dark\.dng at amplification x20\.0 "
                                        r"holds NaN or inf values \(it would be written black\)"):
        restore_file(NanNet(), path, tmp_path / "out", **restore_options(amplification=20))
    with pytest.raises(DataError, match="fp16 overflows .*use precision=bf16 or precision=32"):
        restore_file(NanNet(), path, tmp_path / "out",
                     **restore_options(amplification=20, autocast_dtype=torch.float16))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
