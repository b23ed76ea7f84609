"""Renderer geometry and index order, the official-format loader, and its bad inputs."""
import hashlib
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import dataset as D

# 162 real frames of the official dSprites release (DeepMind, Apache 2.0), taken from the
# animated preview in its repository, with their factor classes; images bit-packed along rows.
REFERENCE = Path(__file__).resolve().parent / "dsprites_frames.npz"


def test_factor_grid_and_index_order():
    assert D.NUM_IMAGES == 737_280 and D.BASES == (245760, 40960, 1024, 32, 1)
    index = torch.arange(D.NUM_IMAGES)
    classes = D.index_to_factors(index)
    assert torch.equal(D.factors_to_index(classes), index)
    # posY varies fastest, shape slowest, as in the official file
    assert classes[1].tolist() == [0, 0, 0, 0, 1] and classes[32].tolist() == [0, 0, 0, 1, 0]
    assert classes[-1].tolist() == [s - 1 for s in D.FACTOR_SIZES]
    for k, size in enumerate(D.FACTOR_SIZES):
        assert torch.equal(classes[:, k].unique(), torch.arange(size))


def test_epoch_order_is_a_seeded_permutation():
    a = D.epoch_order(3, 0)
    assert torch.equal(a.sort().values, torch.arange(D.NUM_IMAGES))
    assert torch.equal(a, D.epoch_order(3, 0))  # a resumed run sees the same batches
    assert not torch.equal(a, D.epoch_order(3, 1)) and not torch.equal(a, D.epoch_order(4, 0))


def test_render_shape_dtype_binary_deterministic():
    classes = D.index_to_factors(torch.randint(D.NUM_IMAGES, (300,),
                                               generator=torch.Generator().manual_seed(0)))
    img = D.render(classes)
    assert img.shape == (300, 64, 64) and img.dtype == torch.uint8
    assert set(img.unique().tolist()) <= {0, 1}
    assert (img.flatten(1).sum(1) > 0).all()
    assert torch.equal(img, D.render(classes))
    # batching does not change an image
    assert torch.equal(img[7:8], D.render(classes[7:8]))


def test_render_geometry():
    def c(shape=0, scale=5, orient=0, x=15, y=15):
        return torch.tensor([[shape, scale, orient, x, y]])

    # A square of scale 1 at theta 0 covers 19.2 x 19.2 px: 19 or 20 pixels a side.
    square = D.render(c())[0]
    assert square.sum(0).max() in (19, 20) and square.sum(1).max() in (19, 20)
    # Area grows with scale, for every shape.
    for shape in range(3):
        areas = [D.render(c(shape, s))[0].sum().item() for s in range(6)]
        assert areas == sorted(areas) and areas[0] < areas[-1] / 2.5
    # posX moves along columns, posY along rows; centre = 16 + 32 * pos.
    for x, y in [(0, 0), (31, 0), (7, 24)]:
        img = D.render(c(1, 3, 0, x, y))[0].double()
        rows, cols = torch.nonzero(img, as_tuple=True)
        assert abs(cols.double().mean() + 0.5 - (16 + 32 * x / 31)) < 0.6
        assert abs(rows.double().mean() + 0.5 - (16 + 32 * y / 31)) < 0.6
    # Orientation 0 and 39 are both 0 and 2*pi: the same image. A quarter turn of a square
    # (orientation ~ 9.75) leaves it close to itself; the ellipse's long axis turns to vertical.
    assert torch.equal(D.render(c(2, 4, 0)), D.render(c(2, 4, 39)))
    ellipse = D.render(c(1, 5, 0))[0]
    assert ellipse.sum(0).nonzero().numel() > ellipse.sum(1).nonzero().numel()  # wide
    turned = D.render(c(1, 5, 10))[0]  # 10/39 of a full turn ~ 92 degrees
    assert turned.sum(0).nonzero().numel() < turned.sum(1).nonzero().numel()  # tall
    # The heart has its lobes up and its tip down at theta = 0.
    heart = D.render(c(2))[0]
    rows = heart.sum(1).nonzero().flatten()
    top, bottom = heart[rows[0] + 1], heart[rows[-1]]
    assert bottom.sum() <= 2 and (top[:32].sum() > 0 and top[32:].sum() > 0)


def test_heart_test_is_the_150_point_polygon():
    """The two-chain lookup of _in_heart against matplotlib's point-in-polygon test of the
    whole outline, on 250,000 random points around the heart."""
    from matplotlib.path import Path as Polygon

    t = 2 * np.pi * np.arange(150) / 150
    outline = np.stack([9.6 * np.sin(t) ** 3, -0.662 * (13 * np.cos(t) - 5 * np.cos(2 * t) - 2
                        * np.cos(3 * t) - np.cos(4 * t)) - 1.44], 1)
    points = torch.rand(250_000, 2, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64) * 30 - 15
    expected = Polygon(outline).contains_points(points.numpy())
    got = D._in_heart(points[:, 0], points[:, 1]).numpy()
    assert 0.2 < expected.mean() < 0.5  # the points cover inside and outside
    assert np.array_equal(got, expected)


def test_render_matches_real_dsprites_frames():
    ref = np.load(REFERENCE)
    classes = torch.from_numpy(ref["latents_classes"][:, 1:])
    img = D.render(classes).numpy().astype(bool)
    real = np.unpackbits(ref["imgs_packed"], axis=-1).astype(bool)
    assert real.shape == img.shape == (162, 64, 64)
    iou = (img & real).sum((1, 2)) / (img | real).sum((1, 2))
    assert iou.mean() >= 0.99 and iou.min() >= 0.97, (iou.mean(), iou.min())


def test_rendered_source_serves_images_by_index():
    data = D.DSprites(None)
    idx = torch.tensor([0, 12345, D.NUM_IMAGES - 1])
    assert torch.equal(data.images(idx), D.render(D.index_to_factors(idx)))
    x = D.as_input(data.images(idx))
    assert x.shape == (3, 1, 64, 64) and x.dtype == torch.float32


def test_pack_bits_matches_numpy_packbits():
    noise = torch.rand(50, 64, 64, generator=torch.Generator().manual_seed(0))
    imgs = (noise > 0.5).to(torch.uint8)
    packed = D.pack_bits(imgs)
    assert packed.dtype == torch.uint8 and packed.shape == (50, 64, 8)
    assert np.array_equal(packed.numpy(), np.packbits(imgs.numpy(), axis=-1))


def test_rendered_store_keeps_what_it_drew(monkeypatch):
    """The rendered source draws an image the first time it is asked for, then looks it up;
    draw_all (the GPU's start-up) fills the rest, here on the first 3,000 images in chunks that
    do not divide them evenly."""
    monkeypatch.setattr(D, "NUM_IMAGES", 3000)
    data = D.DSprites(None)
    assert data.packed.shape == (3000, 64, 8) and data.source == "rendered"
    idx = torch.tensor([0, 1023, 1024, 2047, 2999, 1500, 1024])
    expected = D.render(D.index_to_factors(idx))
    assert torch.equal(data.images(idx), expected)
    assert data.drawn.sum() == 6 and data.drawn[idx].all()
    render = D.render
    monkeypatch.setattr(D, "render", lambda classes: pytest.fail("drawn twice"))
    assert torch.equal(data.images(idx), expected)  # from the store
    monkeypatch.setattr(D, "render", render)
    data.draw_all(chunk=1024)
    assert data.drawn is None
    everything = torch.arange(3000)
    assert torch.equal(data.images(everything), D.render(D.index_to_factors(everything)))


# ---------------------------------------------------------------- official format

def write_npz(path, imgs_chunks, shape=(D.NUM_IMAGES, 64, 64), classes=None, keys=None):
    """Write an npz laid out like the official file, streaming imgs so it stays small."""
    if classes is None:
        classes = D.index_to_factors(torch.arange(D.NUM_IMAGES)).numpy()
        classes = np.concatenate([np.zeros((len(classes), 1), np.int64), classes], 1)
    keys = keys or ("imgs", "latents_classes", "latents_values", "metadata")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        if "imgs" in keys:
            with zf.open("imgs.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": "|u1", "fortran_order": False, "shape": shape})
                for chunk in imgs_chunks:
                    f.write(np.ascontiguousarray(chunk, dtype=np.uint8).tobytes())
        for key, value in [("latents_classes", classes),
                           ("latents_values", classes.astype(np.float64)),
                           ("metadata", np.array({"title": "test"}, dtype=object))]:
            if key in keys:
                with zf.open(f"{key}.npy", "w") as f:
                    np.lib.format.write_array(f, value, allow_pickle=True)
    return path


def official_chunks(marked):
    """All 737,280 images: zeros, except the rendered images at the indices in `marked`."""
    chunk = 65536
    for start in range(0, D.NUM_IMAGES, chunk):
        block = np.zeros((min(chunk, D.NUM_IMAGES - start), 64, 64), np.uint8)
        idx = marked[(marked >= start) & (marked < start + chunk)]
        block[idx - start] = D.render(D.index_to_factors(torch.from_numpy(idx))).numpy()
        yield block


def test_official_loader_reads_streamed_file(tmp_path, capsys):
    marked = np.array([0, 1, 31, 32, 40959, 300000, D.NUM_IMAGES - 1])
    path = write_npz(tmp_path / "dsprites.npz", official_chunks(marked))
    data = D.load(path)
    assert "official dSprites file" in capsys.readouterr().out
    assert data.source == "official" and data.packed.shape == (D.NUM_IMAGES, 64, 8)
    idx = torch.from_numpy(marked)
    assert torch.equal(data.images(idx), D.render(D.index_to_factors(idx)))
    assert data.images(torch.tensor([5, 400000])).sum() == 0


def expect_error(path, *fragments):
    with pytest.raises(D.DataError) as e:
        D.load(path)
    for fragment in (str(path),) + fragments:  # every message names the file
        assert fragment in str(e.value), str(e.value)


def test_bad_files_give_clear_errors(tmp_path):
    small = (10, 64, 64)
    expect_error(tmp_path / "missing.npz", "no dSprites file")
    (tmp_path / "text.npz").write_text("not a zip")
    expect_error(tmp_path / "text.npz", "not a readable npz")
    wrong_keys = write_npz(tmp_path / "keys.npz", [], keys=("latents_classes",))
    expect_error(wrong_keys, "missing ['imgs', 'latents_values', 'metadata']")
    wrong_shape = write_npz(tmp_path / "shape.npz", [np.zeros(small)], shape=small)
    expect_error(wrong_shape, "imgs must be uint8", "(10, 64, 64)")


def test_truncated_and_non_binary_files(tmp_path):
    ok = write_npz(tmp_path / "ok.npz", [], shape=(10, 64, 64))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(ok.read_bytes()[: ok.stat().st_size // 2])
    expect_error(cut, "not a readable npz", "truncated")
    # The header promises all 737,280 images; the data stops after 1,000 / holds a 2.
    expect_error(write_npz(tmp_path / "short.npz", [np.zeros((1000, 64, 64))]), "truncated")
    expect_error(write_npz(tmp_path / "twos.npz", [np.full((16384, 64, 64), 2)]), "0/1 values")


def test_wrong_latents_classes(tmp_path):
    # Checked before any image is read, so the files need no images.
    classes = np.zeros((D.NUM_IMAGES, 6), np.int64)
    expect_error(write_npz(tmp_path / "order.npz", [], classes=classes), "not in the official order")
    expect_error(write_npz(tmp_path / "dtype.npz", [], classes=classes.astype(np.int32)),
                 "latents_classes must be int64")


def test_download_checks_md5_and_renames_atomically(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"dsprites" * 1000)
    dest = tmp_path / "data" / D.OFFICIAL_NAME
    with pytest.raises(D.DataError, match="MD5"):
        D.download(dest, src.as_uri(), md5="0" * 32)
    assert list(dest.parent.iterdir()) == []  # no partial file left behind
    D.download(dest, src.as_uri(), md5=hashlib.md5(src.read_bytes()).hexdigest())
    assert dest.read_bytes() == src.read_bytes()
    assert list(dest.parent.iterdir()) == [dest]
    with pytest.raises(D.DataError, match="could not download"):
        D.download(dest.with_name("x.npz"), (tmp_path / "absent").as_uri())


def test_load_defaults_to_renderer_without_a_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = D.load()
    assert data.source == "rendered" and "rendering dSprites offline" in capsys.readouterr().out
    assert math.prod(data.images(torch.tensor([7])).shape) == 64 * 64
