"""Figures: they display as images in notebooks, and their labels, ticks and notes say what they show."""

import re

import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from pyrovae.errors import PyrovaeError
from pyrovae.evaluation.latent_views import traversal
from pyrovae.experiments import compare, sweep
from pyrovae.experiments.toy import plots as toy_plots
from pyrovae.viz import plots

PNG = b"\x89PNG\r\n\x1a\n"
METRICS = [{"epoch": e, "train_loss": 100.0 - e, "test_elbo": -99.0 + e, "test_kl": 5.0 + e, "beta": 1.0}
           for e in (1, 2)]
SWEEP = [{"run": "beta-0.5", "beta": 0.5, "kl_schedule": "constant", "test_kl": 20.0, "test_recon": -60.0,
          "active_units": 8},
         {"run": "beta-1", "beta": 1.0, "kl_schedule": "constant", "test_kl": 15.0, "test_recon": -65.0,
          "active_units": 6},
         {"run": "schedule-linear", "beta": 1.0, "kl_schedule": "linear", "test_kl": 15.1,
          "test_recon": -65.1, "active_units": 6}]


def snr_rows(model_dreg_offset=0.0):
    """IWAE and DReG at K = 1, 4, 16: the model SNRs equal unless ``model_dreg_offset``."""
    rows = []
    for i, k in enumerate((1, 4, 16)):
        rows.append({"family": "iwae", "k": k, "guide_snr": 0.8 / 2 ** i, "model_snr": 0.61 + 0.1 * i})
        rows.append({"family": "dreg", "k": k, "guide_snr": 3.0 + i,
                     "model_snr": 0.61 + 0.1 * i + model_dreg_offset})
    return rows


FIGURES = {
    "images": lambda: plots.plot_images(torch.rand(4, 1, 8, 8)),
    "reconstructions": lambda: plots.plot_reconstructions(torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)),
    "losses": lambda: plots.plot_losses(METRICS),
    "latents": lambda: plots.plot_latents(torch.randn(20, 4), torch.arange(20) % 10),
    "traversal": lambda: plots.plot_traversal(torch.rand(6, 1, 8, 8), [0, 1], [-1.0, 0.0, 1.0]),
    "rate_distortion": lambda: sweep.plot_rate_distortion(SWEEP),
    "active_units": lambda: sweep.plot_active_units(SWEEP[:2]),
    "kl_curves": lambda: sweep.plot_kl_curves({"beta-1": METRICS}),
    "snr_vs_k": lambda: compare.plot_snr_vs_k(snr_rows()),
    "loglik_vs_time": lambda: compare.plot_loglik_vs_time(
        {"trace": [{"seconds": 1.0, "log_px": -90.0}, {"seconds": 2.0, "log_px": -85.0}]}),
    "toy_mixture": lambda: toy_plots.plot_mixture_fit(torch.randn(50), (0.3, 0.5), {"EM": (0.31, 0.5)}),
}


@pytest.mark.parametrize("name", FIGURES)
def test_every_figure_has_a_png_repr_for_notebooks(name):
    png = FIGURES[name]()._repr_png_()
    assert png[:8] == PNG and len(png) > 1000


def drawn(fig):
    FigureCanvasAgg(fig).draw()
    return fig


@pytest.mark.parametrize("n", [1, 2])
def test_latent_map_of_one_or_two_codes_skips_pca(n):
    fig = drawn(plots.plot_latents(torch.randn(n, 8), torch.arange(n)))
    ax = fig.axes[0]
    assert "too few for PCA" in ax.get_title()
    assert ax.get_xlabel() == "z[0]" and ax.get_ylabel() == "z[1]"
    assert len(ax.collections[0].get_offsets()) == n


def test_latent_map_uses_pca_from_three_codes():
    ax = drawn(plots.plot_latents(torch.randn(3, 8))).axes[0]
    assert ax.get_xlabel().startswith("PC 1")


def test_traversal_rows_name_the_latent_and_the_values():
    z = torch.zeros(5)
    codes = traversal(z, dims=[3, 0], span=2.0, steps=5)
    fig = drawn(plots.plot_traversal(torch.rand(len(codes), 1, 6, 6), [3, 0], torch.linspace(-2, 2, 5)))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["z_3", "z_0"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["-2", "+0", "+2"]
    assert "-2 to +2 in 5 steps" in ax.get_xlabel()
    with pytest.raises(PyrovaeError, match="needs 10 images, got 9"):
        plots.plot_traversal(torch.rand(9, 1, 6, 6), [3, 0], torch.linspace(-2, 2, 5))


def labelled_ticks(axis, lo, hi):
    fmt = axis.get_major_formatter()
    return [fmt(v) for v in axis.get_majorticklocs() if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)]


def test_snr_axes_have_plain_readable_ticks():
    fig = drawn(compare.plot_snr_vs_k(snr_rows()))
    for ax in fig.axes:
        assert labelled_ticks(ax.xaxis, *ax.get_xlim()) == ["1", "4", "16"]
        ys = labelled_ticks(ax.yaxis, *ax.get_ylim())
        assert len(ys) >= 2 and all(re.fullmatch(r"\d+(\.\d+)?", y) for y in ys), ys
    lo, hi = fig.axes[1].get_ylim()  # model SNR 0.61..0.81: a narrow range still gets labels
    assert lo <= 0.61 and hi >= 0.81 and len(labelled_ticks(fig.axes[1].yaxis, lo, hi)) >= 3


def test_snr_curves_that_coincide_are_told_apart_and_noted():
    guide, model = drawn(compare.plot_snr_vs_k(snr_rows())).axes
    iwae, dreg = model.get_lines()
    assert (iwae.get_marker(), iwae.get_linestyle()) != (dreg.get_marker(), dreg.get_linestyle())
    assert dreg.get_markerfacecolor() == "none"  # hollow: the IWAE markers show through
    assert [t.get_text() for t in model.texts] == ["iwae = dreg: equal values, the curves overlap"]
    assert not guide.texts
    apart = drawn(compare.plot_snr_vs_k(snr_rows(model_dreg_offset=0.05))).axes[1]
    assert not apart.texts


def test_rate_distortion_names_runs_in_a_legend_not_over_the_points():
    ax = drawn(sweep.plot_rate_distortion(SWEEP)).axes[0]
    assert not ax.texts  # the old annotations overlapped for neighbouring runs
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["β=0.5", "β=1", "linear (β→1)"]
