"""runlog.py: the run folder's logs and figures."""
import runlog


def test_scores_figure_draws_every_row_and_skips_an_empty_log(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    drawn, plot = {}, Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda ax, x, y, *a, label, **k: drawn.setdefault(
        label, (list(x), list(y))) and plot(ax, x, y, *a, label=label, **k))
    path = tmp_path / "scores.csv"
    path.write_text("step,beta_vae,factor_vae,mig,mig_no_shape,seconds\n")
    assert runlog.read_columns(path) == {}
    runlog.plot_scores(path, tmp_path / "scores.png")  # a log with no row yet: no figure
    assert not (tmp_path / "scores.png").exists() and drawn == {}
    with open(path, "a") as f:
        f.write("57600,0.85,0.61,0.25,0.3,60\n115200,0.88,0.64,0.31,0.33,58\n")
    runlog.plot_scores(path, tmp_path / "scores.png")
    assert drawn == {"β-VAE score": ([57600, 115200], [0.85, 0.88]),
                     "FactorVAE score": ([57600, 115200], [0.61, 0.64]),
                     "MIG": ([57600, 115200], [0.25, 0.31]),
                     "MIG without shape": ([57600, 115200], [0.3, 0.33])}
    assert (tmp_path / "scores.png").stat().st_size > 10_000


def test_a_resumed_log_keeps_the_rows_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "losses.csv"
    columns = runlog.loss_columns(2, "H")
    assert columns == ["step", "epoch", "loss", "recon", "kl", "c", "kl_z0", "kl_z1"]
    runlog.start_log(path, columns)
    path.write_text(path.read_text() + "".join(f"{s},0,1,1,1,0,1,1\n" for s in (5, 10, 15)))
    runlog.start_log(path, columns, step=10)  # a checkpoint at 10: row 15 is trained again
    assert runlog.read_columns(path)["step"] == [5, 10]
    runlog.start_log(path, columns, step=0)  # a new run: the header alone
    assert path.read_text().strip() == ",".join(columns)


def test_tc_runs_log_the_three_parts_of_the_kl():
    assert runlog.loss_columns(1, "TC") == ["step", "epoch", "loss", "recon", "kl", "c", "mi",
                                            "tc", "dw_kl", "kl_z0"]
