"""configs/real_256.yaml: the real-size example validates once its text encoder directory is in place (and says
exactly what is missing before), has the sizes it claims, and its tiny variant trains on CPU end to end."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers_tiny import TINY_MODEL
from pretrained_fixture import shipped_config_raw, tiny_clip_dir

from fluxflow.config import ConfigError, PipelineConfig, load_config
from fluxflow.config.model_sizes import parameter_counts

__all__ = ["tiny_clip_dir"]

REAL = Path(__file__).resolve().parents[2] / "configs" / "real_256.yaml"


def test_without_the_encoder_directory_validation_names_it_and_nothing_else():
    with pytest.raises(ConfigError) as info:
        load_config(REAL)
    assert [(i.path, "models/clip-text" in i.message and "not found" in i.message) for i in info.value.issues] == [
        ("model.text_encoder.path", True)]


def test_it_validates_at_real_size_with_a_local_encoder():
    config = load_config(shipped_config_raw(REAL)).config
    m, t = config.model, config.training
    assert (config.data.img_size, m.downscale, m.patch_size) == (256, 8, 2)  # 32x32 latents, 256 tokens
    assert (m.feature_maps_dim, m.flow_depth, m.flow_heads) == (768, 12, 12)  # DiT-B
    assert m.text_encoder.type == "pretrained" and m.text_embedding_dim == 768  # derived from the encoder
    assert (t.precision, t.compile, t.workers) == ("bf16", True, "auto")
    assert parameter_counts(m, 3)["flow_processor"] == 180_778_768  # the figure the file's header states
    flow = config.step("flow")
    assert flow.train_diff and not flow.train_diff_full
    assert [s.name for s in config.resolved_steps()] == ["vae", "vae_gan", "flow"]


def test_the_encoder_width_is_read_where_the_file_is_loaded_not_by_validation():
    """Validation reads no file: the model's width is the given one until load_config fills it from the encoder's
    config.json, once, where the file enters (a task re-validating the resolved dict gets it from the dict)."""
    raw = shipped_config_raw(REAL)
    assert "text_embedding_dim" not in raw["model"]
    assert PipelineConfig.model_validate(raw).model.text_embedding_dim == 64  # the field's default: nothing read
    loaded = load_config(raw).config
    assert loaded.model.text_embedding_dim == 768
    assert PipelineConfig.model_validate(loaded.model_dump(mode="json")) == loaded


def write_image_folder(folder: Path, n: int) -> None:
    from PIL import Image

    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
    folder.mkdir(parents=True)
    lines = []
    for i in range(n):
        name, rgb = list(colours.items())[i % 3]
        Image.new("RGB", (40 + i, 36), rgb).save(folder / f"img_{i:02d}.png")  # odd sizes: resized and cropped
        lines.append(f"img_{i:02d}.png\ta {name} square")
    (folder / "captions.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_its_tiny_variant_trains_two_batches_per_step_on_cpu(tmp_path, tiny_clip_dir):
    from fluxflow.train.pipeline import run_pipeline

    raw = shipped_config_raw(REAL)
    write_image_folder(tmp_path / "images", 16)
    sizes = {k: TINY_MODEL[k] for k in ("vae_dim", "feature_maps_dim", "flow_depth", "flow_heads",
                                        "text_max_len", "feature_maps_dim_disc")}
    raw["model"].update(sizes, text_encoder={"type": "pretrained", "path": str(tiny_clip_dir)})
    raw["data"]["img_size"] = 32
    raw["training"].update(batch_size=4, workers=0, device="cpu", precision="fp32", compile=False)
    raw["training"]["pipeline"]["datasets"]["images"].update(path=str(tmp_path / "images"), holdout=4)
    for step in raw["training"]["pipeline"]["steps"]:
        step.update(n_epochs=1, max_steps=2)
    raw["output"].update(output_path=str(tmp_path / "out"), sample_sizes=[32], no_samples=True,
                         checkpoint_save_interval=2)
    outcomes = run_pipeline(load_config(raw).config)
    assert [(o.ref.step_name, o.ref.global_step, o.result.outcome) for o in outcomes] == [
        ("vae", 2, "epochs_done"), ("vae_gan", 4, "epochs_done"), ("flow", 6, "epochs_done")]
    assert all(v == v for v in outcomes[2].result.final_metrics.values())  # no NaN
