"""Checks of the files a config names: the LPIPS backbone, the starting checkpoint, a pretrained text encoder, the
image folder of a `folder` dataset, the shards of a `webdataset` (local, or listed on their object store).

Nothing is ever downloaded, so a file that is not there is a validation error that says where it should be. No
torch and no transformers here: `--validate-pipeline` reads at most the small config.json of a pretrained text encoder,
a `save_pretrained` directory (fluxflow/models/pretrained_text.py loads it with transformers, the `pretrained` extra).

LPIPS (the `lpips` package) ships only its small linear layers; its AlexNet ImageNet backbone comes from torchvision's
hub cache, found as `torch.hub.get_dir()` finds it. `fluxflow.losses` re-exports `lpips_backbone_path`.

The captions file of a `folder` dataset is read here, not in fluxflow/data (which imports torch): a folder that is
missing, has no captions file, or lists too few images for its hold-out is a config problem named before any step
starts (data_issues), and the dataset (fluxflow/data/folder.py) applies the same rules to the files it finds. A line
that is not UTF-8 is decoded as Latin-1, which decodes every byte string: kept (repaired) and counted, never fatal.
"""
from __future__ import annotations

import codecs
import functools
import importlib.util
import json
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluxflow.config.caption_patterns import caption_matcher, unseen_problem
from fluxflow.config.errors import STEPS, ConfigIssue, format_path
from fluxflow.wording import counted

LPIPS_BACKBONE_FILE = "alexnet-owt-7be5be79.pth"


def lpips_backbone_path() -> Path:
    """Where torchvision looks for the AlexNet weights that LPIPS loads."""
    default = os.path.join(os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache")), "torch")
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", default))) / "hub" / "checkpoints" / LPIPS_BACKBONE_FILE


def missing_lpips_backbone_message() -> str | None:
    """None when the backbone file is in place, else what is missing and how to put it there."""
    path = lpips_backbone_path()
    if path.is_file():
        return None
    return (
        f"LPIPS needs the AlexNet ImageNet backbone file '{LPIPS_BACKBONE_FILE}' at {path}, and it is not there "
        "(nothing is downloaded at run time). Copy it there from a machine with internet access, where "
        "`python -c \"import torchvision; torchvision.models.alexnet(weights='IMAGENET1K_V1')\"` puts it in "
        "$TORCH_HOME/hub/checkpoints/ (default ~/.cache/torch/hub/checkpoints/), or point TORCH_HOME at a folder "
        "whose hub/checkpoints/ holds it; or set use_lpips: false"
    )


TEXT_PATH = "model.text_encoder.path"


def lpips_issues(indexes: list[int]) -> list[ConfigIssue]:
    """The missing backbone explained once, at the first step that needs it."""
    if not indexes or (message := missing_lpips_backbone_message()) is None:
        return []
    first = format_path((*STEPS, indexes[0], "use_lpips"))
    return [ConfigIssue(first, message)] + [
        ConfigIssue((*STEPS, i, "use_lpips"), f"the LPIPS backbone file is missing (see {first})")
        for i in indexes[1:]]


def not_a_regular_file(path: str | os.PathLike) -> str | None:
    """What `path` is when it exists but is not a regular file (a folder, a FIFO, a device, a socket), else None.
    The files the commands are given (a config, a checkpoint, a prompts file, an export's files, a sqlite store) are
    checked with this before they are opened: opening a FIFO waits for a writer forever, and /dev/zero never ends,
    so reading either hung; a folder failed with a message about something else."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # missing or unreadable: opening it says so
        return None
    if stat.S_ISREG(mode):
        return None
    kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "a special file")
    return f"{path} is {kind}, not a regular file"


def checkpoint_issues(uri: str | None) -> list[ConfigIssue]:
    """A local starting checkpoint must exist (URIs like s3://... are checked when the step opens them)."""
    if uri is None or "://" in uri or Path(uri).expanduser().is_file():
        return []
    return [ConfigIssue("model_checkpoint", not_a_regular_file(Path(uri).expanduser()) or f"file not found: {uri}")]


DEFAULT_CAPTIONS_FILE = "captions.txt"


def decode_text(raw: bytes) -> tuple[str, bool]:
    """(text, repaired): UTF-8, else Latin-1 with repaired=True."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("latin-1"), True


def resolve_captions_path(root: Path, captions_file: str | os.PathLike | None) -> Path:
    """An absolute or existing path is used as given; otherwise it is looked up inside the image folder."""
    if captions_file is None:
        return root / DEFAULT_CAPTIONS_FILE
    p = Path(captions_file).expanduser()
    return p if p.is_absolute() or p.exists() else root / p


@dataclass
class CaptionsFile:
    """What a captions file lists, and the lines it could not use as they are."""

    path: Path
    captions: dict[str, str]  # filename -> caption, in file order
    lines: int  # lines that are neither blank nor comments
    malformed: list[str]  # lines without a tab: skipped
    repaired: list[int]  # numbers of the lines that were not UTF-8: kept, decoded as Latin-1
    relisted: list[str]  # files listed again with another caption: the last line is kept
    binary: bool = False  # NUL bytes outside UTF-16: not text at all (nothing else read)


def text_lines(raw: bytes) -> list[tuple[str, bool]]:
    """(line, repaired) for each line of a text file the user wrote (a captions file, a prompts file): any line end
    (\\n, \\r\\n, or a classic Mac's \\r, which Excel still writes: read as one line, it paired the first file with
    every other line's text); UTF-8 with or without a byte-order mark, UTF-16 with one (Windows Notepad's
    "Unicode"); a line that is not UTF-8 decoded as Latin-1 (repaired=True)."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return [(line, False) for line in re.split(r"\r\n|\r|\n", raw.decode("utf-16"))]
    lines = [decode_text(line) for line in raw.splitlines()]
    if lines:  # a byte-order mark some editors write is not part of the first line
        lines[0] = (lines[0][0].removeprefix("\ufeff"), lines[0][1])
    return lines


def opened_file(path: str | os.PathLike, real_folder=None) -> str:
    """The file `path` opens, as one string for every way of spelling it: `a.png`, `./a.png`, its absolute path,
    `../<folder>/a.png`, and a path through a symlinked folder (as two items one file trained twice, or was both held
    out and trained). A symlink to a file is a file of its own: telling costs an lstat per name (6 s per million).
    `real_folder`: a cache of os.path.realpath, which resolves each folder once (per name: 19 s per million)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(real_folder(folder) if real_folder else os.path.realpath(folder), name)


def read_captions(captions_path: Path, root: Path) -> CaptionsFile:
    """The captions file's {filename: caption} (a later line for the same file, however its path is spelled, wins) and
    its unusable lines. `root`: the image folder the names are relative to."""
    listing = CaptionsFile(captions_path, {}, 0, [], [], [])
    # The file the dataset opens for each name (`root / name`) -> the spelling first listed.
    spelled: dict[str, str] = {}
    real_folder = functools.lru_cache(maxsize=None)(os.path.realpath)
    raw = captions_path.read_bytes()
    # An image named as the captions file, UTF-16 without its byte-order mark: read as lines, their raw bytes went
    # into a "none of the files listed is in the folder" message, NULs and terminal controls included.
    if b"\0" in raw and not raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        listing.binary = True
        return listing
    for number, (line, was_repaired) in enumerate(text_lines(raw), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        listing.lines += 1
        name, sep, caption = line.partition("\t")
        if not sep or not name.strip():
            listing.malformed.append(line)
            continue
        if was_repaired:  # an entry's: a comment is no item, and a line without a tab is counted as that, once
            listing.repaired.append(number)
        name, caption = name.strip(), caption.strip()
        name = spelled.setdefault(opened_file(root / name, real_folder), name)
        if listing.captions.get(name, caption) != caption:
            listing.relisted.append(name)
        listing.captions[name] = caption
    return listing


def is_listed_file(path: Path) -> bool:
    """Whether a file the captions file lists is there; False too when a folder on its way cannot be searched
    (pathlib raises PermissionError there, which stopped the dataset's build with a traceback)."""
    try:
        return path.is_file()
    except OSError:
        return False


def folder_problem(root: Path, captions_path: Path) -> str | None:
    """Why a folder dataset cannot be read at all (no folder, no captions file), or None."""
    if not root.is_dir():
        where = "" if root.is_absolute() else f" (relative to the working directory, {Path.cwd()})"
        return f"image folder {root} {'is a file, not a folder' if root.exists() else 'does not exist'}{where}"
    if not os.access(root, os.R_OK | os.X_OK):
        return f"image folder {root} cannot be read (permission denied)"
    if not is_listed_file(captions_path):  # a FIFO or a folder is not missing: say what it is
        odd = not_a_regular_file(captions_path)
        return f"captions file {odd or f'{captions_path} does not exist'} (one 'filename<TAB>caption' line per image)"
    return None


def entries_problem(listing: CaptionsFile) -> str | None:
    """Why a captions file lists no image, or None: a CSV or space-separated file was read as lines without a tab,
    and reported as a hold-out that leaves nothing, or as a dataset smaller than a batch."""
    if listing.binary:
        return (f"captions file {listing.path} is not text (it holds NUL bytes: a binary file, or UTF-16 without a "
                "byte-order mark); write one 'filename<TAB>caption' line per image in UTF-8")
    if listing.captions:
        return None
    if listing.malformed:
        return (f"captions file {listing.path}: none of its {counted(listing.lines, 'line')} is "
                f"'filename<TAB>caption' (first: {listing.malformed[0][:80]!r}); separate each filename from its "
                "caption by a tab (CSV, JSON Lines and space-separated files are not read)")
    return f"captions file {listing.path} lists no images (one 'filename<TAB>caption' line per image)"


def found_problem(root: Path, listing: CaptionsFile, found: int) -> str | None:
    """Why none of the listed files is in the folder (names relative to another folder, or the two columns the wrong
    way round), or None."""
    if found or not listing.captions:
        return None
    first = next(iter(listing.captions))
    return (f"none of the {counted(len(listing.captions), 'file')} listed in {listing.path.name} is in {root} (first: "
            f"{first!r}, looked for at {root / first}); filenames are relative to the image folder, one "
            "'filename<TAB>caption' line per image")


def holdout_problem(root: Path, entries: int, holdout: int, what: str, whats: str) -> str | None:
    """Why `holdout` held-out images leave nothing to train on among `entries` (`what` one is, `whats` several are),
    or None."""
    if holdout <= 0 or holdout < entries:  # no hold-out: an empty folder is "fewer items than one batch" later
        return None
    return (f"folder {root}: holdout={holdout} leaves no training images ({counted(entries, what, whats)}); lower "
            "holdout or add images")


def data_issues(config) -> list[ConfigIssue]:
    """The data of every `folder` and `webdataset` dataset of a valid `config` is in place: checked when a run starts
    (resolve_run_config), not by validation, which accepts a config written before its data is in place
    (configs/original_tool_example.yaml)."""
    issues: list[ConfigIssue] = []
    # folder dataset -> (entries its captions file lists, how many of them holdout_captions match): the file read once
    listed: dict[str, tuple[int, int]] = {}
    for name, ds in config.training.pipeline.datasets.items():
        loc = ("training", "pipeline", "datasets", name)
        if ds.type == "folder":
            found, listed[name] = folder_issues(loc, ds)
            issues += found
        elif ds.type == "webdataset":
            issues += shards_issues(loc, ds)
    return issues or batch_issues(config, listed)


def batch_issues(config, listed: dict[str, tuple[int, int]]) -> list[ConfigIssue]:
    """A `folder` dataset lists at least one batch of training images for each step that trains on it (the `listed`
    images minus the hold-out: an upper bound, so the step still checks what it finds). A dataset of 20 images and
    the default batch of 32 failed the first step only, after the servers had started."""
    issues, seen = [], set()
    for step in config.resolved_steps():
        ds = config.dataset_for(step)
        if ds.type != "folder" or (step.dataset, step.batch_size) in seen:
            continue
        seen.add((step.dataset, step.batch_size))
        entries, unseen = listed[step.dataset]
        training = entries - unseen - ds.holdout
        if training < step.batch_size:
            matched = f", {unseen} matched by holdout_captions" if unseen else ""
            issues.append(ConfigIssue(("training", "pipeline", "datasets", step.dataset), (
                f"{counted(training, 'training image')} ({entries} listed in {ds.captions_file}{matched}, holdout "
                f"{ds.holdout}) {'is' if training == 1 else 'are'} fewer than one batch of {step.batch_size} (step "
                f"{step.name}); lower batch_size or holdout, or add images")))
    return issues


def folder_issues(loc: tuple, ds) -> tuple[list[ConfigIssue], tuple[int, int]]:
    """(issues, (entries listed, entries holdout_captions match)) of a `folder` dataset at config path `loc`; only the
    first problem is said. Listed files are looked for only until one is found (one file system call when the names
    are right): whether each exists and decodes is the dataset's to find when a step builds it
    (fluxflow/data/folder.py)."""
    root = Path(ds.path).expanduser()
    captions_path = resolve_captions_path(root, ds.captions_file)
    if problem := folder_problem(root, captions_path):
        field = "path" if problem.startswith("image folder") else "captions_file"
        return [ConfigIssue((*loc, field), problem)], (0, 0)
    try:
        listing = read_captions(captions_path, root)
    except OSError as exc:
        return [ConfigIssue((*loc, "captions_file"), f"cannot read {captions_path}: {exc}")], (0, 0)
    listed, matches = len(listing.captions), caption_matcher(ds.holdout_captions)
    unseen = sum(map(matches, listing.captions.values())) if matches else 0
    where = f" in {captions_path.name}" + (" outside holdout_captions" if unseen else "")
    problems = {"captions_file": entries_problem(listing) or found_problem(
                    root, listing, any(is_listed_file(root / name) for name in listing.captions)),
                "holdout_captions": unseen_problem(root, ds.holdout_captions, unseen, list(listing.captions.values())),
                "holdout": holdout_problem(root, listed - unseen, ds.holdout, f"entry{where}", f"entries{where}")}
    return [ConfigIssue((*loc, field), problem) for field, problem in problems.items() if problem][:1], (listed, unseen)


WDS_VARIABLE = re.compile(r"\$\{(\w+)\}")  # `${NAME}` in a webdataset url, which webdataset reads from $WDS_NAME


def substitute_wds_variables(url: str, *, keep_unset: bool = False) -> str:
    """`url` with each `${NAME}` replaced by $WDS_NAME, as webdataset does. ValueError naming one that is not set;
    with `keep_unset`, that one is left as written."""
    def value(match: re.Match) -> str:
        name = f"WDS_{match.group(1)}"
        if name not in os.environ and not keep_unset:
            raise ValueError(f"{url!r}: environment variable {name} is not set")
        return os.environ.get(name, match.group(0))

    return WDS_VARIABLE.sub(value, url)


def expand_shards(urls: str | list[str]) -> list[str]:
    """The shards a webdataset's `urls` name, expanded as the webdataset package expands them (each string split at
    `::`, `${NAME}` replaced by $WDS_NAME, brace patterns `{000..009}` / `{a,b}` expanded; `~` in local paths too),
    but without importing it (it imports torch): validation expands them. ValueError naming the pattern when its
    braces do not balance, a variable is not set, or nothing is named."""
    from braceexpand import UnbalancedBracesError, braceexpand  # webdataset's own dependency: always there with it

    shards: list[str] = []
    for url in [urls] if isinstance(urls, str) else list(urls):
        for part in url.split("::"):
            try:
                shards.extend(braceexpand(substitute_wds_variables(part)))
            except UnbalancedBracesError:
                where = f" in {part!r}" if part != urls else ""  # a string is shown by the error already
                raise ValueError(f"unbalanced braces{where} (a pattern is written like shards-{{000..009}}.tar)") \
                    from None
    if not shards:
        raise ValueError("names no shard")
    shards = [s if "://" in s else os.path.expanduser(s) for s in shards]
    # A shard named twice (two patterns that overlap) was trained twice per epoch, and its samples held out trained.
    # A local one by the file it opens (`file://`, `./`, a symlinked folder); a remote one by its URL.
    seen: set[str] = set()
    real_folder = functools.lru_cache(maxsize=None)(os.path.realpath)
    for shard in shards:
        local = shard[len("file://"):] if shard.lower().startswith("file://") else shard
        file = shard if "://" in local else opened_file(local, real_folder)
        if file in seen:
            raise ValueError(f"names the shard {shard} more than once: its samples would be trained twice an epoch, "
                             "and those held out trained too")
        seen.add(file)
    return shards


def shards_issues(loc: tuple, ds) -> list[ConfigIssue]:
    """The shards of a `webdataset` dataset (`ds`, at config path `loc`) are files: a pattern that matches nothing, or
    a shard missing from an object store, stopped the first step after the servers had started, with tracebacks and a
    retry. Local shards are looked at one by one, remote ones by missing_remote_shards."""
    try:
        shards = expand_shards(ds.urls)
    except ValueError as exc:  # validation expanded them already, but not a ${VAR} (set where the step runs)
        return [ConfigIssue((*loc, "urls"), str(exc))]
    local = [Path(s.removeprefix("file://")) for s in shards if "://" not in s or s.startswith("file://")]
    missing = [p for p in local if not is_listed_file(p)]
    if missing:
        where = "" if missing[0].is_absolute() else f", relative to the working directory, {Path.cwd()}"
        what = not_a_regular_file(missing[0]) or f"{missing[0]} does not exist{where}"
    else:
        try:
            missing = missing_remote_shards([s for s in shards if "://" in s and not s.startswith("file://")])
        except OSError as exc:
            return [ConfigIssue((*loc, "urls"), f"the shards named by {ds.urls!r} cannot be read: {exc}")]
        if not missing:
            return []
        what = f"{missing[0]} does not exist"
    are = "is not a file" if len(missing) == 1 else "are not files"
    return [ConfigIssue((*loc, "urls"), f"{len(missing)} of the {counted(len(shards), 'shard')} named by {ds.urls!r} "
                        f"{are} (first: {what})")]


REMOTE_CHECK_S = 60.0  # a store that does not answer by then is said so: the run's start never hangs on it


def missing_remote_shards(remote: list[str]) -> list[str]:
    """The URLs among `remote` that name no object: each folder on an object store is listed once (a request per
    1000 shards, not one per shard); an http(s) server lists nothing, so only its first shard in each folder is
    asked for. OSError with one line when the store cannot be reached (the root cause, not a missing file), refuses
    (credentials, access), or does not answer within REMOTE_CHECK_S."""
    if not remote:
        return []
    outcome: list = []

    def check() -> None:
        try:
            outcome.append(_missing_remote(remote))
        except Exception as exc:  # noqa: BLE001 - said in one line by the caller's thread, not as a thread's traceback
            outcome.append(OSError(f"{remote[0]}: {type(exc).__name__}: {exc}"))

    worker = threading.Thread(target=check, daemon=True)
    worker.start()  # a daemon thread: one still waiting on a silent store does not keep the process alive
    worker.join(REMOTE_CHECK_S)
    if worker.is_alive():
        raise OSError(f"{remote[0]}: the store did not answer within {REMOTE_CHECK_S:g} s")
    if isinstance(outcome[0], OSError):
        raise outcome[0]
    return outcome[0]


def _missing_remote(remote: list[str]) -> list[str] | OSError:
    """missing_remote_shards' answer, or the OSError it raises (made in its thread)."""
    import fsspec

    from fluxflow.storage.fetch import http_timeouts
    from fluxflow.storage.store_errors import describe_store_error, unreachable

    folders: dict[str, list[str]] = {}
    for url in remote:
        folders.setdefault(url.rsplit("/", 1)[0], []).append(url)
    missing: list[str] = []
    for urls in folders.values():
        try:
            fs, path = fsspec.core.url_to_fs(urls[0], use_listings_cache=False, **http_timeouts(urls[0]))
            if urls[0].lower().startswith(("http://", "https://")):
                fs.info(path)
                continue
            listed = {name.rstrip("/") for name in fs.ls(fs._parent(path), detail=False)}
            missing += [url for url in urls if fs._strip_protocol(url) not in listed]
        except Exception as exc:  # said in one line: the run does not start either way
            line = unreachable(urls[0], exc) or describe_store_error(urls[0], exc)
            if line is None and isinstance(exc, FileNotFoundError):  # an empty folder, an http 404
                missing += urls[:1] if urls[0].lower().startswith(("http://", "https://")) else urls
                continue
            return OSError(line or f"{urls[0]}: {type(exc).__name__}: {exc}")
    return missing


# config.json `model_type` -> family (how the model is loaded and pooled).
FAMILIES = {"clip_text_model": "clip", "clip": "clip", "t5": "t5", "mt5": "t5", "umt5": "t5"}
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class PretrainedText:
    family: str  # "clip" or "t5"
    width: int  # embedding width of the encoder's output tokens
    max_positions: int | None  # longest token sequence (CLIP's learned positions); None: no fixed limit (T5)


def pretrained_text_path(model_cfg) -> str | None:
    """The directory of `model_cfg`'s pretrained text encoder; None for the byte encoder (or an object, such as an
    older checkpoint's model_config, that has no `text_encoder`)."""
    te = getattr(model_cfg, "text_encoder", None)
    return te.path if te is not None and te.type == "pretrained" else None


class UnusablePretrained(ValueError):
    """The directory is missing or does not hold a supported text encoder, or transformers is not installed; the
    message says what is wrong."""


def require_transformers() -> None:
    """UnusablePretrained naming the extra to install when transformers is missing (found without importing it:
    validation stays fast)."""
    if importlib.util.find_spec("transformers") is None:
        raise UnusablePretrained("a pretrained text encoder needs the transformers package, which is not installed: "
                                 "pip install 'fluxflow-pipelines[pretrained]'")


def inspect_pretrained(path: str | Path) -> PretrainedText:
    """What the flow model needs to know about the encoder in `path`; UnusablePretrained if it cannot be used."""
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise UnusablePretrained(f"directory not found: {path} (nothing is downloaded: put a save_pretrained "
                                 "directory there, see docs/CONFIG.md)")
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnusablePretrained(f"no config.json in {path}: not a Hugging Face model directory") from None
    except (OSError, ValueError) as exc:
        raise UnusablePretrained(f"cannot read {directory / 'config.json'}: {exc}") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    family = FAMILIES.get(model_type) if isinstance(model_type, str) else None  # a list there: not a name, no crash
    if family is None:
        raise UnusablePretrained(f"{path}: model_type {model_type!r} is not a supported text encoder (supported: "
                                 f"{', '.join(FAMILIES)})")
    if not any((directory / name).is_file() for name in WEIGHT_FILES):
        raise UnusablePretrained(f"{path}: no weights ({' or '.join(WEIGHT_FILES)})")
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise UnusablePretrained(f"{path}: no tokenizer ({' or '.join(TOKENIZER_FILES)}); the tokenizer is loaded "
                                 "from the model's directory")
    section = config.get("text_config", config) if model_type == "clip" else config
    width = section.get("hidden_size" if family == "clip" else "d_model") if isinstance(section, dict) else None
    if not isinstance(width, int) or width < 1:
        raise UnusablePretrained(f"{directory / 'config.json'}: no embedding width (hidden_size / d_model)")
    positions = section.get("max_position_embeddings") if family == "clip" else None
    return PretrainedText(family, width, positions if isinstance(positions, int) else None)


def with_pretrained_width(raw: dict[str, Any]) -> dict[str, Any]:
    """The config file's dict with `model.text_embedding_dim` filled from a pretrained encoder's config.json when the
    file leaves it out (the width is the encoder's). Done once, where a file is loaded, so that validating a config
    never reads files; a different value or an unusable directory is reported by text_encoder_issues."""
    model = raw.get("model")
    te = model.get("text_encoder") if isinstance(model, dict) else None
    if not isinstance(te, dict) or te.get("type") != "pretrained" or not isinstance(te.get("path"), str) \
            or "text_embedding_dim" in model:
        return raw
    try:
        return {**raw, "model": {**model, "text_embedding_dim": inspect_pretrained(te["path"]).width}}
    except UnusablePretrained:
        return raw


def text_encoder_issues(model) -> list[ConfigIssue]:
    """A pretrained encoder's directory exists and holds a supported model whose sizes fit the flow model.
    `model`: the ModelConfig, or None when it did not parse."""
    te = model.text_encoder if model is not None else None
    if te is None or te.type == "byte":
        return [ConfigIssue(TEXT_PATH, "only read with type: pretrained (the byte encoder has no files)")] \
            if te is not None and te.path else []
    if not te.path:
        return [ConfigIssue(TEXT_PATH, "required for type: pretrained (a local Hugging Face model directory)")]
    if "://" in te.path:
        return [ConfigIssue(TEXT_PATH, f"must be a local directory (nothing is downloaded): {te.path}")]
    try:
        require_transformers()
    except UnusablePretrained as exc:
        return [ConfigIssue("model.text_encoder.type", str(exc))]
    try:
        info = inspect_pretrained(te.path)
    except UnusablePretrained as exc:
        return [ConfigIssue(TEXT_PATH, str(exc))]
    issues = []
    if model.text_embedding_dim != info.width:
        issues.append(ConfigIssue("model.text_embedding_dim", f"{model.text_embedding_dim} differs from the "
                                  f"pretrained text encoder's width {info.width} ({te.path}); leave it out: it is "
                                  "derived from the encoder"))
    if info.max_positions is not None and model.text_max_len > info.max_positions:
        issues.append(ConfigIssue("model.text_max_len", f"{model.text_max_len} exceeds the {info.max_positions} "
                                  f"positions of the pretrained text encoder ({te.path})"))
    return issues

