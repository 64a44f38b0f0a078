"""Step keys decide which steps re-run; describe_change says why."""
from pathlib import Path

import pytest

from fluxflow.checkpoints.step_key import describe_change, json_sha256, step_key, step_key_inputs

STEP = {
    "name": "vae_gan",
    "n_epochs": 2,
    "freeze": ["text_encoder"],
    "optimization": {"optimizers": {"vae": {"type": "AdamW", "lr": 1e-4}}},
}
MODEL = {"vae_dim": 32, "latent_channels": 4}
DATA = {"type": "shapes", "size": 64, "seed": 0}


def test_key_is_short_hex_and_stable_across_calls_and_key_order():
    key = step_key(STEP, MODEL, DATA, "abcd")
    assert len(key) == 16 and int(key, 16) >= 0
    reordered = {k: STEP[k] for k in reversed(list(STEP))}
    assert step_key(reordered, dict(reversed(list(MODEL.items()))), DATA, "abcd") == key
    # Pinned: the key must not drift between releases, or every finished step would re-run after an upgrade.
    assert key == "19c3f2b5508a4637"


def test_json_sha256_is_pinned_in_both_separator_styles():
    # Pinned: compact is the step key's form; spaced is that of the config hash tag and the feature-net cache files.
    value = {"b": [1, 2.5, "\u00e9"], "a": {"p": Path("x/y")}}
    assert json_sha256(value, 16) == "d0d2a2e2c2a4dce9"
    assert json_sha256(value, 16, compact=False) == "2fc2533fad5223ae"
    assert json_sha256(value, 8) == "d0d2a2e2"


@pytest.mark.parametrize(
    "change",
    [
        lambda s, m, d, p: ({**s, "optimization": {"optimizers": {"vae": {"type": "AdamW", "lr": 2e-4}}}}, m, d, p),
        lambda s, m, d, p: (s, {**m, "latent_channels": 8}, d, p),
        lambda s, m, d, p: (s, m, {**d, "seed": 1}, p),
        lambda s, m, d, p: (s, m, d, "other-parent"),
        lambda s, m, d, p: (s, m, d, None),
        lambda s, m, d, p: ({**s, "n_epochs": 2.0}, m, d, p),  # 1 vs 1.0 is a different YAML value: re-run, say so
    ],
)
def test_any_input_change_changes_the_key(change):
    assert step_key(*change(STEP, MODEL, DATA, "abcd")) != step_key(STEP, MODEL, DATA, "abcd")


def test_paths_tuples_and_pydantic_style_values_are_accepted():
    a = step_key({"path": Path("/data/x"), "t": (1, 2)}, MODEL, DATA, None)
    b = step_key({"path": "/data/x", "t": [1, 2]}, MODEL, DATA, None)
    assert a == b


def test_unhashable_values_are_a_clear_error():
    with pytest.raises(TypeError, match="object"):
        step_key({"x": object()}, MODEL, DATA, None)


def test_describe_change_lists_dotted_paths_with_old_and_new_values():
    old = step_key_inputs(STEP, MODEL, DATA, "abcd")
    new_step = {**STEP, "optimization": {"optimizers": {"vae": {"type": "AdamW", "lr": 2e-4}}}, "freeze": []}
    new = step_key_inputs(new_step, {**MODEL, "spade": True}, DATA, "abcd")
    text = describe_change(old, new)
    assert "step.optimization.optimizers.vae.lr: 0.0001 -> 0.0002" in text
    assert "step.freeze: " in text
    assert "model.spade: added (true)" in text
    assert "dataset" not in text and "parent" not in text


def test_describe_change_reports_removed_keys_list_items_and_nothing_when_equal():
    assert describe_change({"a": {"b": 1}}, {"a": {}}) == "a.b: removed (was 1)"
    assert describe_change({"f": ["x", "y"]}, {"f": ["x", "z"]}) == "f[1]: 'y' -> 'z'"
    assert describe_change(step_key_inputs(STEP, MODEL, DATA, None), step_key_inputs(STEP, MODEL, DATA, None)) == ""


def test_image_statistics_fields_enter_a_steps_key_only_where_the_step_uses_the_term(tmp_path):
    from helpers_tiny import step_keys, tiny_config

    def key(**fields):
        return step_keys(tiny_config(tmp_path, [{"name": "a", "n_epochs": 1, "train_vae": True, **fields}]))["a"]

    plain = key()
    assert key(lambda_histogram=0.5) == plain  # a weight of a term that is off changes nothing trained
    assert key(train_histogram=True) != plain
    assert key(train_histogram=True, lambda_histogram=0.5) != key(train_histogram=True)


def webdataset_keys(tmp_path, urls) -> dict[str, str]:
    from helpers_tiny import step_keys, tiny_raw

    from fluxflow.config import load_config

    raw = tiny_raw(tmp_path, [{"name": "a", "n_epochs": 1, "train_vae": True},
                              {"name": "b", "n_epochs": 1, "train_vae": True}])
    raw["training"]["pipeline"]["datasets"] = {"w": {"type": "webdataset", "urls": urls, "holdout": 2}}
    raw["training"]["pipeline"]["default_dataset"] = "w"
    return step_keys(load_config(raw).config)


def test_a_webdataset_variable_enters_the_step_key_as_the_shards_it_names(tmp_path, monkeypatch):
    """`${N}` in urls is $WDS_N: keyed on its name, a run with another value skipped the finished steps for shards
    they never saw, and resumed an interrupted one on them."""
    written = webdataset_keys(tmp_path, "/data/shard-{000..002}.tar")
    # Pinned: the keys of urls without a variable stay those made before (their finished steps are not trained again).
    assert written == {"a": "091a0fc198129b90", "b": "a8cae4fa39b49f84"}
    assert webdataset_keys(tmp_path, ["/data/shard-{000..002}.tar"])["a"] == "d41571c9cd47d578"
    monkeypatch.setenv("WDS_N", "{000..002}")
    assert webdataset_keys(tmp_path, "/data/shard-${N}.tar") == written  # the same shards: the same keys
    assert webdataset_keys(tmp_path, ["/data/shard-${N}.tar"])["a"] == "d41571c9cd47d578"
    monkeypatch.setenv("WDS_N", "{001..002}")
    other = webdataset_keys(tmp_path, "/data/shard-${N}.tar")
    assert other["a"] != written["a"] and other["b"] != written["b"]
