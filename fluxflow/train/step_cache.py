"""The caches of one flow step: which it uses (fluxflow/config/caching.py), their keys, built or reused, attached.

`attach_caches` runs in the step's set-up (fluxflow/train/step_run.py) after the Trainer exists, because the caches
hold what the step's own frozen networks compute: the latent encoder `trainer.ctx.latent_encoder` (the EMA
compressor where there is one) and the text encoder. It runs before the latent normalisation is measured, which
then reads the cached means instead of encoding images again.

Where: `<root>/latent_cache/<key>/` and `<root>/text_cache/<key>/`, the root being `output.cache_dir` or else the
output directory, so every run and branch that would compute the same rows reads one copy. A key hashes everything
a row depends on (the `inputs` of `latent_cache` and `text_cache`): the encoder's weights as the step runs it (the
EMA ones of a frozen encoder that has them), the precision, and the dataset (its config and fingerprint,
fluxflow/cache/fingerprint.py) or the distinct captions. Under torchrun every rank calls this: the first to take a
cache's lock builds it, the others wait, then read it.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from fluxflow.cache.fingerprint import dataset_fingerprint, module_sha256
from fluxflow.cache.health import damage, size_text
from fluxflow.cache.latent_cache import LatentCacheDataset, build_latent_cache, latent_store, mark_unreadable
from fluxflow.cache.store import CacheStore
from fluxflow.cache.text_cache import TextCache, build_text_cache, text_store
from fluxflow.checkpoints.step_key import KEY_LENGTH, json_sha256
from fluxflow.config.caching import LATENT_CACHE_DIR, TEXT_CACHE_DIR, cache_root, latent_cache_choice, text_cache_choice
from fluxflow.data.sampler import epoch_permutation
from fluxflow.models.latents import LATENT_NORM_IMAGES, posterior
from fluxflow.train.batch_step import encode_text
from fluxflow.wording import counted

CHUNK_ROWS = 1024  # rows between progress marks: an interrupted build redoes at most this many
TEXT_BATCH = 256  # captions per text-encoder call while building (the encoder is small next to the flow model)


def attach_caches(config, step, data, trainer, epochs: range | None = None,
                  say: Callable[[str], None] = print) -> None:
    """Build or reuse the step's caches and switch the data and the Trainer to them. `epochs`: the pipeline epochs
    the step may train (its latent rows are those they read, see `rows_read`); None: every row."""
    kind = config.dataset_for(step).type
    if latent_cache_choice(step, kind).on:
        rows = None if epochs is None else rows_read(len(data.train_set), step, data.batches_per_epoch, epochs)
        store = latent_cache(config, step, data.train_set, rows, trainer, say)
        mark_unreadable(store, data.train_set)  # a reused cache's unreadable items count as when it was built
        data.latent_cache = LatentCacheDataset(store, getattr(data.train_set, "skips", None))
        trainer.cached_latents = True
    if text_cache_choice(step, kind).on:
        trainer.text_cache = TextCache(text_cache(config, step, data.captions, trainer, say))


def rows_read(n: int, step, batches_per_epoch: int, epochs: range) -> np.ndarray:
    """The items a step's loader can visit in `epochs` (each epoch's first `batches_per_epoch` batches of its order,
    fluxflow/data/sampler.py) and the first flow step's latent-normalisation items (epoch 0's first batches,
    fluxflow/train/step_data.py: leading_inputs). A step with `max_steps` reads a part of each epoch: only that part
    is encoded, so a short step pays for the latents it uses, not for the whole dataset."""
    used = np.zeros(n, dtype=bool)
    norm_batches = -(-LATENT_NORM_IMAGES // step.batch_size)
    for epoch, n_batches in [(0, norm_batches), *((e, batches_per_epoch) for e in epochs)]:
        used[epoch_permutation(n, step.seed, epoch)[:n_batches * step.batch_size].numpy()] = True
        if used.all():
            break
    return np.flatnonzero(used)


def latent_cache(config, step, dataset, rows: np.ndarray | None, trainer, say: Callable[[str], None]) -> CacheStore:
    encoder, device = trainer.ctx.latent_encoder, trainer.ctx.device
    inputs = {"encoder": module_sha256(encoder), "precision": str(trainer.ctx.amp_dtype),
              "dataset": config.dataset_for(step).model_dump(mode="json"), "fingerprint": dataset_fingerprint(dataset),
              "img_size": step.img_size, "channels": config.data.channels}
    directory = cache_root(config) / LATENT_CACHE_DIR / json_sha256(inputs, KEY_LENGTH)
    probe, _ = posterior(encoder, dataset[0][0][None].to(device), trainer.ctx.amp_dtype)
    store = latent_store(directory, inputs, len(dataset), tuple(probe.shape[1:]))
    _ensure(store, rows, "Latent", step, say, lambda: build_latent_cache(
        store, dataset, rows, lambda images: posterior(encoder, images, trainer.ctx.amp_dtype), device,
        batch_size=step.batch_size, workers=step.workers, chunk_rows=CHUNK_ROWS, desc=f"{step.name} latent cache"))
    store.note_use(str(config.output.output_path), step.name)
    return store


def text_cache(config, step, captions: list[str], trainer, say: Callable[[str], None]) -> CacheStore:
    text_settings = {k: v for k, v in config.model.model_dump(mode="json").items() if k.startswith("text")}
    inputs = {"encoder": module_sha256(trainer.ctx.models["text_encoder"]), "model": text_settings,
              "precision": str(trainer.ctx.amp_dtype), "captions": json_sha256(captions, 64)}
    directory = cache_root(config) / TEXT_CACHE_DIR / json_sha256(inputs, KEY_LENGTH)

    def encode(batch: list[str]) -> dict:
        return encode_text(trainer.ctx, *trainer.tokenize(batch))._asdict()

    store = text_store(directory, inputs, len(captions), encode(captions[:1]), trainer.ctx.amp_dtype)
    _ensure(store, None, "Text", step, say, lambda: build_text_cache(
        store, captions, encode, batch_size=TEXT_BATCH, chunk_rows=CHUNK_ROWS, desc=f"{step.name} text cache"))
    store.note_use(str(config.output.output_path), step.name)
    return store


def _ensure(store: CacheStore, rows: np.ndarray | None, what: str, step, say: Callable[[str], None],
            build: Callable[[], int]) -> None:
    """Fill the rows the step needs unless they are there, saying which it is, how large it is and how long the
    build took. Damaged files (fluxflow/cache/health.py) are made again, the whole cache computed again."""
    wanted = store.rows if rows is None else rows.size
    problem = damage(store)
    missing = wanted if problem else store.missing(rows).size
    if missing == 0:
        say(f"{what} cache of step {step.name}: reusing {store.dir} ({counted(wanted, 'row', spec=',')}; "
            f"{size_text(store.nbytes())} on disk)")
        return
    if problem:
        say(f"{what} cache of step {step.name}: {store.dir} is damaged ({problem}); computing it again")
    there = f" ({wanted - missing:,} of its {counted(wanted, 'row', spec=',')} already there)" if missing < wanted \
        else ""
    say(f"{what} cache of step {step.name}: computing {counted(missing, 'row', spec=',')} in {store.dir}{there}; "
        f"{size_text(store.nbytes())} on disk for all its {counted(store.rows, 'row', spec=',')}")
    start = time.perf_counter()
    computed = build()
    took = time.perf_counter() - start
    if computed:
        say(f"{what} cache of step {step.name}: built in {took:.1f} s")
    else:  # another holder of the lock (a branch of this run, a run sharing cache_dir, a torchrun rank) computed them
        say(f"{what} cache of step {step.name}: another step or process computed it meanwhile (waited {took:.1f} s); "
            "reusing it")
