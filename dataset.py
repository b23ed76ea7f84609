"""dSprites: the official file, or an offline renderer matching it, behind one index API.

    python dataset.py                  # says which source would be used and renders a few images
    python dataset.py --download       # fetch the official file into data/ (MD5-checked)

All 737,280 images are addressed by their official index (posY varies fastest). Images leave
this module as uint8 0/1 tensors on the training device, one batch at a time: nothing here
ever holds the whole set as float (that would be 12 GB). The official file is kept bit-packed
(377 MB), and so are rendered images: on CPU each one is drawn the first time a batch asks for
it, on CUDA all of them are drawn at start-up.
"""
import argparse
import hashlib
import math
import os
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import torch

# Factors in official order, without the constant 'color' factor of the official file.
FACTOR_NAMES = ("shape", "scale", "orientation", "posX", "posY")
FACTOR_SIZES = (3, 6, 40, 32, 32)
NUM_IMAGES = math.prod(FACTOR_SIZES)  # 737,280
# index = dot(classes, BASES): posY varies fastest, as in the official file.
BASES = tuple(math.prod(FACTOR_SIZES[i + 1:]) for i in range(len(FACTOR_SIZES)))
IMAGE_SIZE = 64

OFFICIAL_NAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
OFFICIAL_URL = "https://github.com/deepmind/dsprites-dataset/raw/master/" + OFFICIAL_NAME
OFFICIAL_MD5 = "7da33b31b13a06f4b04a70402ce90c2e"
DEFAULT_PATH = Path("data") / OFFICIAL_NAME


class DataError(Exception):
    """A missing, damaged or foreign data file: one line, no traceback (cli.run_script)."""
    user_mistake = True


# ---------------------------------------------------------------- factor API

def factors_to_index(classes):
    """(..., 5) factor classes -> (...) official indices."""
    return (classes * torch.tensor(BASES, device=classes.device)).sum(-1)


def index_to_factors(index):
    """(...) official indices -> (..., 5) factor classes."""
    bases = torch.tensor(BASES, device=index.device)
    sizes = torch.tensor(FACTOR_SIZES, device=index.device)
    return torch.div(index.unsqueeze(-1), bases, rounding_mode="floor") % sizes


# ---------------------------------------------------------------- renderer
# Geometry measured on real frames (dsprites_frames.npz, test_dataset.py): a pixel is on
# exactly when its centre lies inside the shape, no anti-aliasing.
SQUARE_HALF = 9.6
ELLIPSE_AXES = (12.77, 7.215)


def _heart_chains():
    """The heart outline, a 150-point polygon, as two v-monotone chains of its right half.

    The polygon is mirror-symmetric in u, so a point is inside iff (|u|, v) is inside the right
    half. That half runs from the top dip (t=0) up over the lobe (v minimal) down to the tip
    (t=pi); split at the lobe top, each part is monotone in v, so the polygon test becomes two
    exact linear interpolations instead of a 150-edge crossing count per pixel.
    """
    t = 2 * np.pi * np.arange(76) / 150  # t in [0, pi]: the right half, both axis points included
    u = 9.6 * np.sin(t) ** 3
    v = -0.662 * (13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) - 1.44
    top = int(np.argmin(v))
    inner_v, inner_u = v[top::-1], u[top::-1]  # lobe top -> dip, v increasing
    outer_v, outer_u = v[top:], u[top:]  # lobe top -> tip, v increasing
    assert np.all(np.diff(inner_v) > 0) and np.all(np.diff(outer_v) > 0)
    return [torch.tensor(a.copy(), dtype=torch.float64) for a in (inner_v, inner_u, outer_v, outer_u)]


def _heart_table():
    """The two chains as one lookup table: `knots`, the v breakpoints of both, increasing, and for
    the interval that ends at each knot, each chain's segment as (v0, u0, dv, du). Then
    u(v) = u0 + (v - v0) / dv * du, np.interp's formula, costs one searchsorted and one gather
    for both chains instead of one interpolation per chain."""
    inner_v, inner_u, outer_v, outer_u = _heart_chains()
    knots = torch.unique(torch.cat([inner_v, outer_v]))  # sorted; both start at the lobe top
    columns = []
    for xp, fp in ((inner_v, inner_u), (outer_v, outer_u)):
        i = torch.searchsorted(xp, knots).clamp(1, len(xp) - 1)  # the segment holding each knot
        columns += [xp[i - 1], fp[i - 1], xp[i] - xp[i - 1], fp[i] - fp[i - 1]]
    return knots, torch.stack(columns, 1), inner_v[-1].item()  # K; K, 8; v of the top dip


_HEART_KNOTS, _HEART_SEGMENTS, _HEART_DIP = _heart_table()


def _in_square(u, v):
    return (u.abs() <= SQUARE_HALF) & (v.abs() <= SQUARE_HALF)


def _in_ellipse(u, v):
    return (u / ELLIPSE_AXES[0]) ** 2 + (v / ELLIPSE_AXES[1]) ** 2 <= 1


def _in_heart(u, v):
    knots, segments = (a.to(u.device, u.dtype) for a in (_HEART_KNOTS, _HEART_SEGMENTS))
    j = torch.searchsorted(knots, v.contiguous()).clamp(1, len(knots) - 1)  # interval of each v
    seg = segments.index_select(0, j.flatten()).view(*v.shape, 8)
    inner, outer = (seg[..., k + 1] + (v - seg[..., k]) / seg[..., k + 2] * seg[..., k + 3]
                    for k in (0, 4))  # |u| of each chain at v (outside a chain's v range: unused)
    au = u.abs()
    inside = (v >= knots[0]) & (v <= knots[-1]) & (au <= outer)  # between lobe top and tip
    return inside & ((v >= _HEART_DIP) | (au >= inner))  # and not in the dip between the lobes


WINDOW = 32  # every sprite fits in 32x32 pixels around its centre (largest radius: 13.6 px)


def render(classes):
    """Draw dSprites images from factor classes: (N, 5) int64 -> (N, 64, 64) uint8 0/1.

    Vectorised over the batch and deterministic; runs on the device of `classes`. Each sprite
    is tested only inside the 32x32 window around its centre, and only against its own shape.
    Float64 keeps pixel centres that sit on an edge on the same side every time (float32 gives
    the same images on the reference frames, and is used on MPS, which lacks float64).
    """
    if classes.ndim != 2 or classes.shape[1] != len(FACTOR_NAMES):
        raise ValueError(f"classes must be (N, {len(FACTOR_NAMES)}), got {tuple(classes.shape)}")
    n, dev = len(classes), classes.device
    dtype = torch.float32 if dev.type == "mps" else torch.float64  # MPS has no float64
    shape, scale, orient, pos_x, pos_y = classes.T
    scale = 0.5 + 0.1 * scale.to(dtype)  # linspace(0.5, 1, 6)
    theta = 2 * math.pi / 39 * orient.to(dtype)  # linspace(0, 2pi, 40)
    cos, sin = (torch.cos(theta) / scale)[:, None], (torch.sin(theta) / scale)[:, None]
    span = torch.arange(WINDOW, device=dev)
    # Centre x = 16 + 32 * posX (posX = linspace(0, 1, 32)); window starts 16 pixels left of it.
    cx, cy = (16 + 32 / 31 * p.to(dtype) for p in (pos_x, pos_y))
    cols = cx.floor().long()[:, None] - WINDOW // 2 + span  # N, 32
    rows = cy.floor().long()[:, None] - WINDOW // 2 + span  # N, 32
    dx = cols + 0.5 - cx[:, None]  # N, 32: pixel centre minus sprite centre
    dy = rows + 0.5 - cy[:, None]  # N, 32
    # Sprite coordinates, v pointing down: u = (dx cos - dy sin)/s, v = (dx sin + dy cos)/s.
    u = (dx * cos)[:, None, :] - (dy * sin)[:, :, None]  # N, 32, 32
    v = (dx * sin)[:, None, :] + (dy * cos)[:, :, None]  # N, 32, 32
    inside = torch.empty(n, WINDOW, WINDOW, dtype=torch.bool, device=dev)
    for k, test in enumerate((_in_square, _in_ellipse, _in_heart)):
        pick = shape == k
        inside[pick] = test(u[pick], v[pick])
    img = torch.zeros(n, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8, device=dev)
    img[torch.arange(n, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]] = (
        inside.to(torch.uint8))
    return img


# ---------------------------------------------------------------- data sources

# On CPU glibc serves blocks of 32 MB or more as fresh memory maps every time, whose page faults
# cost more than the drawing: the renderer's float64 temporaries reach that at 4,096 images, and
# at 256 they come from the reused heap.
RENDER_CHUNK = 256


class DSprites:
    """All dSprites images by official index, kept bit-packed (377 MB when all are there).

    packed: the official file's images, or all rendered ones; or None: a rendered store that
    draws each image from its factors the first time it is asked for and keeps it, so that from
    the second epoch on a batch is a lookup instead of a rendering. The store is allocated
    untouched: memory grows as images are drawn.
    """

    def __init__(self, packed=None, device="cpu"):
        self.device = torch.device(device)
        self.source = "rendered" if packed is None else "official"
        self.drawn = None  # None: every image is in `packed`; else which ones are
        if packed is None:
            packed = torch.empty(NUM_IMAGES, IMAGE_SIZE, IMAGE_SIZE // 8, dtype=torch.uint8,
                                 device=self.device)
            self.drawn = torch.zeros(NUM_IMAGES, dtype=torch.bool, device=self.device)
        self.packed = packed
        self._shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=self.device)

    def __len__(self):
        return NUM_IMAGES

    def draw(self, index):
        """Render into the store the images of `index` that it does not hold yet (on CPU,
        RENDER_CHUNK at a time)."""
        new = index[~self.drawn[index]]
        if len(new) == 0:
            return
        for part in new.split(RENDER_CHUNK if self.device.type == "cpu" else len(new)):
            self.packed[part] = pack_bits(render(index_to_factors(part)))
            self.drawn[part] = True

    def draw_all(self, chunk=4096):
        """Render every image the store lacks, `chunk` at a time; then a batch is a lookup alone
        (no more checks of which images are drawn, which make a GPU's host wait)."""
        for index in torch.arange(NUM_IMAGES, device=self.device).split(chunk):
            self.draw(index)
        self.drawn = None

    def images(self, index):
        """(B,) indices -> (B, 64, 64) uint8 0/1 on self.device."""
        index = index.to(self.device)
        if self.drawn is not None:
            self.draw(index)
        bits = self.packed[index].unsqueeze(-1) >> self._shifts  # B, 64, 8, 8 (np.packbits order)
        return (bits & 1).flatten(-2)  # B, 64, 64


def as_input(imgs):
    """(B, 64, 64) uint8 0/1 -> (B, 1, 64, 64) float: the model's input, one batch at a time."""
    return imgs.unsqueeze(1).float()


def epoch_order(seed, epoch, n=NUM_IMAGES):
    """The shuffled image order of one training epoch, a function of (seed, epoch) alone, so a
    resumed run sees exactly the batches it would have seen."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def pack_bits(imgs):
    """(N, 64, 64) uint8 0/1 -> (N, 64, 8) uint8, the layout of np.packbits(imgs, axis=-1)."""
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=imgs.device)
    bits = imgs.view(len(imgs), IMAGE_SIZE, IMAGE_SIZE // 8, 8)  # N, 64, 8 bytes, 8 bits each
    return (bits * weights).sum(-1, dtype=torch.uint8)


def _read_packed_images(zf, chunk=16384):
    """Stream imgs.npy out of the npz and bit-pack it chunk by chunk, so that loading peaks at
    the packed 377 MB instead of the 3 GB of uint8 that np.load would allocate."""
    with zf.open("imgs.npy") as f:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
            version, np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        if shape != (NUM_IMAGES, IMAGE_SIZE, IMAGE_SIZE) or dtype != np.uint8 or fortran:
            raise DataError(f"imgs must be uint8 {(NUM_IMAGES, IMAGE_SIZE, IMAGE_SIZE)}, "
                            f"got {dtype} {shape}")
        packed = np.empty((NUM_IMAGES, IMAGE_SIZE, IMAGE_SIZE // 8), dtype=np.uint8)
        for start in range(0, NUM_IMAGES, chunk):
            n = min(chunk, NUM_IMAGES - start)
            buf = f.read(n * IMAGE_SIZE * IMAGE_SIZE)
            if len(buf) != n * IMAGE_SIZE * IMAGE_SIZE:
                raise DataError("imgs ends early: the file is truncated")
            block = np.frombuffer(buf, dtype=np.uint8).reshape(n, IMAGE_SIZE, IMAGE_SIZE)
            if block.max() > 1:
                raise DataError("imgs must hold 0/1 values")
            packed[start:start + n] = np.packbits(block, axis=-1)
    return packed


def load_official(path):
    """Read the official npz into bit-packed (737280, 64, 8) uint8, checking what it holds."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no dSprites file at {path}; pass --data PATH or --download")
    try:
        with zipfile.ZipFile(path) as zf:
            keys = {Path(n).stem for n in zf.namelist()}
            missing = {"imgs", "latents_classes", "latents_values", "metadata"} - keys
            if missing:
                raise DataError(f"not the dSprites file: missing {sorted(missing)}")
            # Key names only: metadata is a Python-2 pickle, and nothing here needs to run it.
            _check_classes(np.load(zf.open("latents_classes.npy")))
            return _read_packed_images(zf)
    except DataError as e:  # the checks above leave the path out; it is added once, here
        raise DataError(f"{path}: {e}") from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable npz ({e}); it may be truncated") from e


def _check_classes(classes):
    """The file's factor classes must be the official grid in the official order."""
    if classes.shape != (NUM_IMAGES, 6) or classes.dtype != np.int64:
        raise DataError(f"latents_classes must be int64 ({NUM_IMAGES}, 6), "
                        f"got {classes.dtype} {classes.shape}")
    expected = index_to_factors(torch.arange(NUM_IMAGES)).numpy()
    if not np.array_equal(classes[:, 1:], expected):
        raise DataError("latents_classes are not in the official order")


def download(dest=DEFAULT_PATH, url=OFFICIAL_URL, md5=OFFICIAL_MD5):
    """Fetch the official file through a temporary file, check its MD5, then rename it into
    place: an interrupted or corrupted download never leaves a file that looks complete."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            while block := resp.read(1 << 20):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != md5:
            raise DataError(f"download of {url} has MD5 {digest.hexdigest()}, expected {md5}")
        os.replace(tmp, dest)
    except OSError as e:
        raise DataError(f"could not download {url}: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def load(data=None, download_missing=False, device="cpu"):
    """The dataset for training and evaluation, with one line saying which source is in use.

    data: path of the official npz; None uses data/<official name> when it exists, else the
    renderer. download_missing fetches the official file first when it is not there.
    """
    path = Path(data) if data is not None else DEFAULT_PATH
    if download_missing and not path.exists():
        download(path)
    if data is None and not path.exists():
        print(f"data: rendering dSprites offline ({NUM_IMAGES:,} images, exact factor grid); "
              f"place the official file at {DEFAULT_PATH} or use --download to train on it")
        data = DSprites(None, device)
        if data.device.type == "cuda":  # rendering per batch would make the host wait for the GPU
            data.draw_all(chunk=65536)
        return data
    packed = torch.from_numpy(load_official(path))
    print(f"data: official dSprites file {path} ({NUM_IMAGES:,} images, bit-packed "
          f"{packed.numel() / 2**20:.0f} MiB)")
    return DSprites(packed.to(device), device)


def main(argv=None):
    """`python dataset.py [--download]`: which source would be used, and a few images."""
    p = argparse.ArgumentParser(description="Which dSprites source the scripts would use (the "
                                            "official file, or the offline renderer), and three "
                                            "of its images.")
    p.error = _usage_error
    p.add_argument("--download", action="store_true",
                   help=f"download the official file into {DEFAULT_PATH} first (default: off)")
    data = load(download_missing=p.parse_args(argv).download)
    idx = torch.tensor([0, 245760 + 40960 * 5 + 1024 * 10 + 32 * 16 + 16, NUM_IMAGES - 1])
    for i, img in zip(idx.tolist(), data.images(idx)):
        print(f"index {i}: factors {index_to_factors(torch.tensor(i)).tolist()}, "
              f"{int(img.sum())} pixels on")


def _usage_error(message):  # argparse's mistakes, in one line like every other
    raise DataError(message)


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        sys.exit(f"dataset.py: error: {e}")
