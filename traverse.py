"""Latent traversals of a trained β-VAE: GIFs, a PNG grid and a reconstruction figure.

    python traverse.py results/beta4_H_z10_seed0/ckpt.pt   # the shipped model, a few seconds

For each sample image (rows 1-4: one per shape plus one more) and each latent k, writes
gif/<row>/traversal_latent_dim_<k>.gif: z_k swept from -limit to +limit and back, the other
latents held at the sample's posterior mean; a circle latent (train.py --circles) turns through
one full turn instead, from -π, and the GIF loops on without a jump. A bar under each frame
marks the current z_k.
Also gif/traversal_grid.png (rows = latents sorted by KL, columns = z values, for sample 1),
gif/reconstructions.png (inputs above reconstructions) and gif/traversals.md, the README's
results table. Each latent is named by the factor with the largest normalised MI I(z; v) / H(v)
(evaluate.py's, read from the run's metrics.json or computed here) and its KL;
latents with KL below 0.1 nats are marked inactive.
"""
from pathlib import Path

import numpy as np
import torch

import checkpoint
import cli
import dataset
import evaluate
import runlog
from dataset import FACTOR_NAMES

# Four fixed samples as factor classes (shape, scale, orientation, posX, posY): a square, an
# ellipse and a heart, mid-sized and off-centre, and a small rotated heart near a corner.
SAMPLES = ((0, 3, 0, 10, 20), (1, 4, 5, 20, 12), (2, 5, 0, 16, 16), (2, 1, 12, 25, 6))
UPSCALE = 2  # 64 px frames are small on a page; nearest-neighbour keeps them crisp
BAR = 6  # height in pixels of the z-position bar under each frame
FRAME_MS = 80
INACTIVE_KL = 0.1  # nats: a latent below this carries almost no information about the image
MAX_FRAMES = 200  # z values per sweep: more only makes the GIFs large


def sample_inputs(data, index=None):
    """The sample images as encoder input, S, 1, 64, 64: dSprites indices, or SAMPLES."""
    if index is None:
        index = dataset.factors_to_index(torch.tensor(SAMPLES)).tolist()
    return dataset.as_input(data.images(torch.tensor(index)))


def parse_indices(text):
    """'1,2,3' -> [1, 2, 3]: dSprites indices for --samples; a UserError otherwise."""
    try:
        index = [int(s) for s in text.split(",")]
    except ValueError:
        index = []
    if not index or not all(0 <= i < dataset.NUM_IMAGES for i in index):
        raise cli.UserError(f"--samples must be comma-separated dSprites indices, each in "
                        f"[0, {dataset.NUM_IMAGES}), got {text!r}")
    return index


def sweep_values(model, dim, limit, n):
    """The z values a traversal of latent `dim` takes: n from -limit to limit, or for a circle n
    angles evenly round the whole turn from -π (the next after the last would be -π again)."""
    if dim < model.circles:
        return torch.linspace(-torch.pi, torch.pi, n + 1)[:-1]
    return torch.linspace(-limit, limit, n)


def traverse(model, x, dim, values):
    """Decode z with z[dim] swept over values, the other latents at x's posterior mean.
    x: (1, 1, 64, 64) -> (len(values), 64, 64) pixel probabilities."""
    with torch.no_grad():
        mu, _ = model.encode(x)
        z = mu.repeat(len(values), 1)
        z[:, dim] = values
        return torch.sigmoid(model.decode(z))[:, 0]


def gif_frames(images, values, limit, circle=False):
    """uint8 frames, upscaled, each with a bar marking its z value in [-limit, limit]; forward
    then back, or for a circle (limit π) forward only: the loop closes the turn."""
    frames = []
    for img, z in zip(images.numpy(), values.tolist()):
        big = np.kron(img, np.ones((UPSCALE, UPSCALE)))
        bar = np.full((BAR, big.shape[1]), 0.25)
        pos = round((z + limit) / (2 * limit) * (big.shape[1] - 4))
        bar[1:-1, pos:pos + 4] = 1.0
        frames.append((np.concatenate([big, bar]) * 255).astype(np.uint8))
    if circle:
        return frames
    return frames + frames[-2:0:-1]  # ping-pong: forward, then back without repeating the ends


def write_gifs(model, xs, out, limit, n_frames):
    import imageio.v3 as iio

    paths = []
    for row, x in enumerate(xs, start=1):
        (out / str(row)).mkdir(parents=True, exist_ok=True)
        for k in range(model.latent_dim):
            circle = k < model.circles  # a turn in as many frames as a sweep there and back
            values = sweep_values(model, k, limit, 2 * (n_frames - 1) if circle else n_frames)
            frames = gif_frames(traverse(model, x[None], k, values), values,
                                torch.pi if circle else limit, circle)
            path = out / str(row) / f"traversal_latent_dim_{k}.gif"
            iio.imwrite(path, np.stack(frames), duration=FRAME_MS, loop=0)
            paths.append(path)
    return paths


def latent_info(ckpt_path, step, model, data):
    """Normalised MI (latents x factors) and KL per latent: from the run's metrics.json when it
    belongs to this checkpoint's step, else computed on MIG's 10,000 images."""
    metrics = checkpoint.run_dir(ckpt_path) / "metrics.json"
    if metrics.exists():
        m = cli.read_json(metrics)
        if m.get("step") == step:
            return m["mi"], m["kl_per_dim"]
    return evaluate.latent_factor_mi(model, data)


def latent_labels(mi, kl, circles=0):
    """'z3: posX (KL 2.10)' for each latent, or 'z7: inactive' below INACTIVE_KL; a circle's
    says so: 'z0: circle, orientation (KL 2.10)'."""
    return [f"z{k}: " + ("circle, " if k < circles else "") + (
        "inactive" if kl[k] < INACTIVE_KL else
        f"{FACTOR_NAMES[int(np.argmax(mi[k]))]} (KL {kl[k]:.2f})") for k in range(len(kl))]


def markdown_table(labels, n_rows, out, width=96):
    """The README's results table: one row per sample, one column per latent."""
    head = "| sample | " + " | ".join(labels) + " |"
    lines = [head, "|" + "---|" * (len(labels) + 1)]
    for row in range(1, n_rows + 1):
        cells = [f'<img src="{out.as_posix()}/{row}/traversal_latent_dim_{k}.gif" width="{width}">'
                 for k in range(len(labels))]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_grid(model, x, path, limit, n_frames, labels, order):
    """Rows: the latents in `order`, each swept over its sweep_values (a circle: a full turn,
    marked in its label); columns: the z values, labelled for the Gaussian latents."""
    values = torch.linspace(-limit, limit, n_frames)
    rows = [traverse(model, x[None], k, sweep_values(model, k, limit, n_frames)).numpy()
            for k in order]
    labels = [label + (", one full turn" if k < model.circles else "")
              for k, label in enumerate(labels)]
    with runlog.figure(path, (n_frames * 0.8, len(rows) * 0.8)) as fig:
        axes = fig.subplots(len(rows), n_frames, squeeze=False)
        for k, (imgs, label) in enumerate(zip(rows, [labels[k] for k in order])):
            for j, img in enumerate(imgs):
                ax = axes[k, j]
                ax.imshow(img, cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([]), ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
                if k == len(rows) - 1:
                    ax.set_xlabel(f"{values[j].item():.1f}", fontsize=7)
        fig.suptitle("latent traversals (rows: latents by KL, columns: z value)", fontsize=9)


def write_reconstructions(model, xs, path):
    with torch.no_grad():
        recon = torch.sigmoid(model(xs)[0])[:, 0]
    with runlog.figure(path, (len(xs) * 1.3, 2.8)) as fig:
        axes = fig.subplots(2, len(xs), squeeze=False)
        for j in range(len(xs)):
            for i, img in enumerate((xs[j, 0], recon[j])):
                axes[i, j].imshow(img.numpy(), cmap="gray", vmin=0, vmax=1)
                axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
        axes[0, 0].set_ylabel("input")
        axes[1, 0].set_ylabel("reconstruction")


def main(argv=None):
    p = cli.parser("Latent traversals of a trained β-VAE.")
    p.add_argument("ckpt", help="checkpoint written by train.py (or its run folder)")
    p.add_argument("--out", default="gif", help="output folder (default: gif/)")
    p.add_argument("--limit", type=float, default=3.0, help="sweep z from -limit to +limit (default: 3)")
    p.add_argument("--frames", type=int, default=13, help="z values per sweep (default: 13)")
    default_samples = ",".join(
        str(i) for i in dataset.factors_to_index(torch.tensor(SAMPLES)).tolist())
    p.add_argument("--samples", default=default_samples,
                   help="comma-separated dSprites indices, one GIF row each "
                        f"(default: {default_samples}: a square, an ellipse and two hearts)")
    cli.add_data_arguments(p)
    args = p.parse_args(argv)
    cli.require("frames", args.frames, 2, high=MAX_FRAMES)
    cli.require("limit", args.limit, 0, strict=True)
    samples = parse_indices(args.samples)
    cli.require_folder("--out", args.out)

    ckpt = checkpoint.load(args.ckpt)
    model = checkpoint.rebuild_model(ckpt)
    data = dataset.load(args.data, args.download)
    xs = sample_inputs(data, samples)  # S, 1, 64, 64
    out = Path(args.out)
    paths = write_gifs(model, xs, out, args.limit, args.frames)
    mi, kl = latent_info(args.ckpt, ckpt["step"], model, data)
    labels = latent_labels(mi, kl, model.circles)
    order = np.argsort(-np.array(kl), kind="stable")
    write_grid(model, xs[0], out / "traversal_grid.png", args.limit, args.frames, labels, order)
    write_reconstructions(model, xs, out / "reconstructions.png")
    table = markdown_table(labels, len(xs), out)
    (out / "traversals.md").write_text(table)
    print("latents by KL: " + ", ".join(labels[k] for k in order))
    print(f"wrote {len(paths)} GIFs to {out}/<row>/, {out / 'traversal_grid.png'}, "
          f"{out / 'reconstructions.png'} and {out / 'traversals.md'}")


if __name__ == "__main__":
    cli.run_script(main)
