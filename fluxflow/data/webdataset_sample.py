"""One WebDataset sample: which tar members belong to it, and its decoded (image, caption)."""
from __future__ import annotations

import io
import json
from collections.abc import Callable

import torch

from fluxflow.config.file_checks import text_lines
from fluxflow.data.transforms import IMAGE_EXTENSIONS, read_image

CAPTION_EXTENSIONS = ("txt", "caption", "text")
Note = Callable[[str, str], None]  # (kind, reason) of a problem met while decoding


def sample_key(member_name: str) -> tuple[str, str] | None:
    """(key, extension) by the WebDataset rule: the key is everything before the first dot of the basename."""
    directory, _, base = member_name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return None
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def decode_sample(files: dict[str, bytes], img_size: int, channels: int, note: Note,
                  where: str) -> tuple[torch.Tensor, str] | None:
    """(image, caption), or None when the sample does not decode. Each problem is passed to `note(kind, reason)` (to
    count it, fluxflow/data/skips.py KINDS), naming the sample by `where`: a sample that does not decode, one without
    an image (`imageless`) or whose .json caption is broken (`caption`), a caption that was not UTF-8 (`repaired`:
    kept, decoded as Latin-1) and a sample without one (`uncaptioned`: trained with "", naming its files)."""
    try:
        ext = next((e for e in IMAGE_EXTENSIONS if e in files), None)
        if ext is None:  # the image is not what is wrong: say what is
            note("imageless", f"{where}: {_without_image(files)}")
            return None
        image = read_image(io.BytesIO(files[ext]), img_size, channels)
        caption = _caption(files, lambda kind, detail: note(kind, f"{where}: {detail}"))
    except Exception as exc:  # a bad image never stops training (webdataset_source.py)
        note("unreadable", f"{where}: {type(exc).__name__}: {exc}")
        return None
    return None if caption is None else (image, caption)


def _without_image(files: dict[str, bytes]) -> str:
    """What a sample without an image has. A caption alone is what `tar cf x.tar *.png *.txt` makes of a folder: a
    sample's files must be adjacent in the tar (webdataset groups consecutive members by key), else every image
    trains without its caption and every caption is a sample of its own. A sample with another file beside its caption
    (an image of a type not read, `.avif`) is not that: the extensions read are named."""
    if set(files) - {*CAPTION_EXTENSIONS, "json"}:
        # `cat.000.jpg`, `cat.001.jpg`: the key ends at the first dot, so they were one sample of files `000.jpg`, ...
        dotted = any("." in ext for ext in files)
        return (f"no image among its files ({', '.join(sorted(files))}); an image is read from a file named "
                f".{', .'.join(IMAGE_EXTENSIONS)}" + ("; a sample's key is its file name up to the first dot, so "
                                                      "`cat.000.jpg` is a file `000.jpg` of sample `cat`: rename such "
                                                      "files (`cat_000.jpg`)" if dotted else ""))
    if files:  # captions only
        return (f"a caption without an image (files {', '.join(sorted(files))}); a sample's files must be adjacent in "
                "the tar: write it sorted by name (GNU tar: `tar cf x.tar --sort=name -C folder .`), not `*.png *.txt`")
    return "no image among its files (none)"


def _caption(files: dict[str, bytes], on_caption: Callable[[str, str], None]) -> str | None:
    """The sample's caption ("" when it has none); None, said, when its .json cannot be read."""
    for ext in CAPTION_EXTENSIONS:
        if ext in files:  # decoded as a folder's captions file is: a byte-order mark dropped, UTF-16 read
            lines = text_lines(files[ext])
            if any(repaired for _, repaired in lines):
                on_caption("repaired", f"its .{ext} decoded as Latin-1")
            return "\n".join(line for line, _ in lines).strip()
    try:
        meta = json.loads(files["json"]) if "json" in files else None
    except ValueError as exc:  # the caption is what is broken, not the image
        on_caption("caption", f"its .json is not valid JSON ({exc})")
        return None
    caption = next((meta[k] for k in ("caption", "text") if k in meta), None) if isinstance(meta, dict) else None
    if isinstance(caption, str):
        return caption.strip()
    # A sample the stream cannot caption ({"caption": null} was the text "None"): say which files it has, so that a
    # caption under another name (.prompt, a json "prompt" field) is seen, instead of training without text.
    json_keys = f" (json keys: {', '.join(sorted(meta))})" if isinstance(meta, dict) else ""
    on_caption("uncaptioned", f"files {', '.join(sorted(files))}{json_keys}; captions are read from "
                              f".{', .'.join(CAPTION_EXTENSIONS)} or a .json 'caption'/'text' string")
    return ""
