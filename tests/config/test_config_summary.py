"""The --validate-pipeline summary: the original tool's lines, branches, transitions, datasets, parameters."""
from pathlib import Path

from fluxflow.config import load_config
from fluxflow.config.summary import format_parameters, format_summary

REPO = Path(__file__).resolve().parents[2]


def summary_of(tmp_path: Path, text: str) -> str:
    (tmp_path / "c.yaml").write_text(text)
    return format_summary(load_config(tmp_path / "c.yaml").config)


def test_summary_has_totals_modes_freezes_and_transitions_per_step():
    text = format_summary(load_config(REPO / "configs" / "seed_complete.yaml").config)
    assert text.splitlines()[0] == "✅ Pipeline validation passed!"
    assert "Total steps: 2" in text and "Total epochs: 4" in text
    assert "Step 1: vae_only (2 epochs, max 2 batches/epoch)" in text
    assert "Step 2: vae_gan" in text and "Training: VAE, GAN" in text
    assert "Freeze: flow_processor, text_encoder" in text
    assert "Transition: epoch (after 2 epochs)" in text
    assert "Optimizers: vae AdamW lr=5e-05, discriminator AdamW lr=5e-05" in text
    assert "After:" not in text  # a straight line of steps has no branches


def test_branches_name_their_parent():
    text = format_summary(load_config(REPO / "configs" / "hypotheses.yaml").config)
    assert text.count("After: vae_warmup (branch)") == 2
    assert "Training: VAE, GAN, SPADE" in text


def test_threshold_transitions_show_metric_threshold_limit_and_total_is_an_upper_bound(tmp_path):
    text = summary_of(tmp_path, """
training:
  pipeline:
    steps:
      - {name: a, n_epochs: 10, train_vae: true,
         transition_on: {mode: loss_threshold, metric: vae_loss, threshold: 0.05, max_epochs: 50}, on_missed: fail}
""")
    assert "Transition: loss_threshold (vae_loss < 0.05 averaged over 20 batches, max 50 epochs, then fail)" in text
    assert "Total epochs: 50 (at most" in text
    assert "Step 1: a (up to 50 epochs)" in text  # was "(10 epochs)": n_epochs, which such a step does not run


def test_a_count_of_one_reads_singular_in_the_plan(tmp_path):
    """`make demo` printed "max 1 batches/epoch"; a window, a max_epochs, a dataset size, a length or a channel count
    of 1 read "1 batches", "1 epochs", "1 procedural images", "1 samples", "1 channels"."""
    text = summary_of(tmp_path, """
data: {channels: 1}
training:
  pipeline:
    datasets:
      one: {type: shapes, size: 1, holdout: 0}
      stream: {type: webdataset, urls: "s-{0..1}.tar", length: 1, holdout: 0}
    default_dataset: one
    steps:
      - {name: a, n_epochs: 1, max_steps: 1, batch_size: 1, train_vae: true}
      - {name: b, train_vae: true, batch_size: 1,
         transition_on: {mode: loss_threshold, metric: vae_loss, threshold: 0.05, max_epochs: 1, window: 1}}
""")
    assert "Step 1: a (1 epoch, max 1 batch/epoch)" in text
    assert "Transition: loss_threshold (vae_loss < 0.05 averaged over 1 batch, max 1 epoch, then " in text
    assert "one: shapes (1 procedural image, seed " in text and "stream: webdataset (s-{0..1}.tar, 1 sample; " in text
    assert "Image size: 32x32, 1 channel" in text


def test_datasets_and_output_are_listed(tmp_path):
    text = summary_of(tmp_path, """
output: {output_path: runs/x}
training:
  pipeline:
    datasets:
      real: {type: folder, path: imgs, captions_file: caps.txt, holdout: 4}
    steps: [{name: a, n_epochs: 1, train_vae: true}]
""")
    assert "Output: runs/x" in text
    assert "real: folder (imgs, captions caps.txt; 4 held out)" in text
    assert "Dataset: real, batch 8" in text


def test_a_captions_file_read_from_the_working_directory_and_unseen_captions_are_said(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "caps.txt").write_text("a.png\ta cat\n")  # found here first, whatever imgs/caps.txt holds
    text = summary_of(tmp_path, """
training:
  pipeline:
    datasets:
      real: {type: folder, path: imgs, captions_file: caps.txt, holdout: 4, holdout_captions: ["*blue*", "re:x"]}
    steps: [{name: a, n_epochs: 1, train_vae: true}]
""")
    # was "captions caps.txt", whichever file was read
    assert ("real: folder (imgs, captions caps.txt (from the working directory), unseen: captions matching *blue*, "
            "re:x; 4 held out)") in text


def test_the_colour_shape_pairs_a_shapes_dataset_holds_out_are_named_drawn_or_listed(tmp_path):
    """A count's draw was said nowhere (console or MLflow): the plan said "64 held out", which are seen pairs."""
    from fluxflow.config.heldout_pairs import heldout_pairs

    text = summary_of(tmp_path, """
training:
  pipeline:
    datasets:
      drawn: {type: shapes, size: 64, holdout: 8, holdout_pairs: 3, holdout_pairs_seed: 5}
      listed: {type: shapes, size: 64, seed: 2, holdout: 8, holdout_pairs: [blue triangle, Red Star]}
    steps:
      - {name: a, n_epochs: 1, train_vae: true, dataset: drawn}
      - {name: b, n_epochs: 1, train_vae: true, dataset: listed}
""")
    drawn = ", ".join(" ".join(pair) for pair in heldout_pairs(3, 5))
    assert f"drawn: shapes (64 procedural images, seed 0, unseen pairs: {drawn}; 8 held out)" in text
    assert "listed: shapes (64 procedural images, seed 2, unseen pairs: blue triangle, red star; 8 held out)" in text


def test_parameter_section_lists_counts_and_total():
    counts = format_parameters({"compressor": 1200, "expander": 34})
    assert counts.splitlines() == ["Parameters:", "  compressor         1,200", "  expander              34",
                                   "  total              1,234"]
