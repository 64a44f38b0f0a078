"""`folder` datasets: images + `filename<TAB>caption`, fitted to img_size; bad files skipped, counted, never fatal."""
import logging
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from fluxflow.data import build_dataset, make_loader
from fluxflow.errors import DataError

GREEN = (0, 200, 0)


def striped(width, height):
    """Red | green | blue thirds, left to right: a centre crop of a wide image is all green."""
    img = Image.new("RGB", (width, height), GREEN)
    img.paste((255, 0, 0), (0, 0, width // 3, height))
    img.paste((0, 0, 255), (width - width // 3, 0, width, height))
    return img


@pytest.fixture
def folder(tmp_path):
    striped(96, 32).save(tmp_path / "wide.png")
    striped(90, 30).convert("RGB").save(tmp_path / "wide.jpg", quality=95)
    (tmp_path / "sub").mkdir()
    Image.new("L", (20, 40), 128).save(tmp_path / "sub" / "gray.png")
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))  # fully transparent red
    rgba.save(tmp_path / "clear.png")
    for i in range(6):
        Image.new("RGB", (24, 24), (10 * i, 0, 0)).save(tmp_path / f"plain_{i}.png")
    (tmp_path / "garbage.jpg").write_bytes(b"this is not a jpeg")
    data = (tmp_path / "wide.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    lines = ["# comment line", "", "wide.png\ta wide striped image", "wide.jpg\ta wide striped jpeg",
             "sub/gray.png\ta gray image", "clear.png\ttransparent", "garbage.jpg\tnot an image",
             "truncated.png\thalf a file", "missing.png\tno such file", "no tab on this line"]
    lines += [f"plain_{i}.png\tplain {i}" for i in range(6)]
    (tmp_path / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path


def cfg(path, holdout=0, captions_file="captions.txt"):
    return SimpleNamespace(type="folder", path=str(path), captions_file=captions_file, holdout=holdout)


def by_caption(ds):
    return {ds.items[i][1]: i for i in range(len(ds))}


def test_images_are_fitted_by_shorter_side_and_centre_crop(folder):
    ds = build_dataset(cfg(folder), 16, 3, "train")
    index = by_caption(ds)
    for caption in ("a wide striped image", "a wide striped jpeg"):
        image, got = ds[index[caption]]
        assert got == caption and image.shape == (3, 16, 16)
        pixels = ((image + 1) * 127.5).reshape(3, -1)
        assert (pixels[1] > 150).all() and (pixels[0] < 60).all() and (pixels[2] < 60).all(), "not a centre crop"


def test_gray_and_transparent_images_become_rgb_and_white(folder):
    ds = build_dataset(cfg(folder), 16, 3, "train")
    index = by_caption(ds)
    gray = ds[index["a gray image"]][0]
    assert gray.shape == (3, 16, 16) and torch.allclose(gray, torch.full_like(gray, 128 / 127.5 - 1), atol=1e-6)
    clear = ds[index["transparent"]][0]
    assert torch.allclose(clear, torch.ones_like(clear)), "transparent pixels must become white"
    single = build_dataset(cfg(folder), 16, 1, "train")
    assert single[index["a wide striped image"]][0].shape == (1, 16, 16)


def test_bad_entries_are_skipped_counted_and_each_kind_warned_once(folder, caplog):
    caplog.set_level(logging.WARNING, logger="fluxflow.data")
    ds = build_dataset(cfg(folder), 16, 3, "train")
    assert ds.skipped == 2  # at build: the line without a tab and the missing file
    assert len(ds) == 12  # every existing listed file, readable or not (decoding is lazy)
    index = by_caption(ds)
    for caption in ("not an image", "half a file"):
        image, got = ds[index[caption]]  # never raises: the next readable item takes its place
        assert got != caption and image.shape == (3, 16, 16)
    assert ds.skipped == 2  # read, not trained: counted when a batch holding them is
    for _ in range(2):  # a whole epoch, twice: each bad file is counted once
        for images, captions in make_loader(ds, 4, workers=0, seed=0):
            assert images.shape == (4, 3, 16, 16) and "not an image" not in captions
    assert ds.skipped == 4
    # One line per kind of problem, whatever was logged before it (the missing file and the undecodable images were
    # hidden behind the first line), and the two bad images, met in two epochs, once.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, warnings
    assert "1 line(s) of captions.txt without a tab" in warnings[0] and "'missing.png'" in warnings[1]
    assert "unreadable image" in warnings[2] and "garbage.jpg" in warnings[2]


def trained(ds, caption):
    """Read the item of `caption` and count it as the loader does when it hands out a batch holding it."""
    index = by_caption(ds)[caption]
    ds[index]
    ds.skips.count_items([index])


def test_a_restored_skip_count_continues_and_counts_no_item_twice(folder):
    killed = build_dataset(cfg(folder), 16, 3, "train")
    trained(killed, "not an image")  # trained before the checkpoint
    saved = killed.skips.state_dict()
    assert saved["count"] == 3  # the line without a tab, the missing file, the broken jpeg

    resumed = build_dataset(cfg(folder), 16, 3, "train")  # counts its build-time skips again: 2
    resumed.skips.load_state_dict(saved)
    assert resumed.skipped == 3  # not 5: build-time skips are not added twice
    trained(resumed, "not an image")  # trained again after the resume (a later epoch): already counted
    trained(resumed, "half a file")  # trained for the first time
    assert resumed.skipped == 4


def test_skips_in_worker_processes_are_counted_in_the_main_process(folder):
    ds = build_dataset(cfg(folder), 16, 3, "train")
    assert ds.skipped == 2
    for _ in make_loader(ds, 4, workers=2, seed=0):
        pass
    assert ds.skipped == 4


def test_holdout_is_a_fixed_disjoint_part(folder):
    train = build_dataset(cfg(folder, holdout=3), 16, 3, "train")
    holdout = build_dataset(cfg(folder, holdout=3), 16, 3, "holdout")
    again = build_dataset(cfg(folder, holdout=3), 16, 3, "holdout")
    train_names = {name for name, _ in train.items}
    held_names = {name for name, _ in holdout.items}
    assert len(held_names) == 3 and len(train_names) == 9 and not train_names & held_names
    assert [n for n, _ in again.items] == [n for n, _ in holdout.items]
    with pytest.raises(DataError, match="holdout=12 leaves no training images"):
        build_dataset(cfg(folder, holdout=12), 16, 3, "train")


def test_captions_file_outside_the_folder_and_missing_paths(folder, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("meta") / "caps.tsv"
    elsewhere.write_text("plain_0.png\tonly one\n", encoding="utf-8")
    ds = build_dataset(cfg(folder, captions_file=str(elsewhere)), 8, 3, "train")
    assert len(ds) == 1 and ds[0][1] == "only one"
    # DataError: not retryable, one line (a step is never retried into a folder that is not there)
    with pytest.raises(DataError, match="captions file .*nope.txt does not exist"):
        build_dataset(cfg(folder, captions_file="nope.txt"), 8, 3, "train")
    with pytest.raises(DataError, match="image folder .*nowhere does not exist"):
        build_dataset(cfg(folder / "nowhere"), 8, 3, "train")
    (folder / "captions-dir").mkdir()  # was "captions file .../captions-dir does not exist"
    with pytest.raises(DataError, match="captions file .*captions-dir is a folder, not a regular file"):
        build_dataset(cfg(folder, captions_file="captions-dir"), 8, 3, "train")


def test_a_caption_line_that_is_not_utf8_is_kept_as_latin1_and_counted(tmp_path):
    for i in range(3):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(tmp_path / f"p{i}.png")
    (tmp_path / "captions.txt").write_bytes(
        "\ufeffp0.png\tplain zero\n".encode("utf-8")  # a byte-order mark is not part of the first filename
        + "p1.png\tcafé crème\n".encode("latin-1")  # one line from another editor
        + "p2.png\tnaïve, in UTF-8\n".encode("utf-8"))
    ds = build_dataset(cfg(tmp_path), 16, 3, "train")
    assert sorted(caption for _, caption in ds.items) == ["café crème", "naïve, in UTF-8", "plain zero"]
    assert ds.skipped == 1  # the repaired line


def test_a_latin1_comment_is_not_counted_and_a_latin1_line_without_a_tab_is_counted_once(tmp_path):
    """A comment in Latin-1 was counted as a skipped sample (it is no sample), and a Latin-1 line without a tab twice
    (repaired, and without a tab)."""
    plain_folder(tmp_path)
    (tmp_path / "captions.txt").write_bytes(
        "# photos by Renée, © 2024\n".encode("latin-1")
        + "".join(f"p{i}.png\tcaption {i}\n" for i in range(3)).encode()
        + "notab café\n".encode("latin-1"))
    ds = build_dataset(cfg(tmp_path), 16, 3, "train")
    assert len(ds) == 3 and ds.skipped == 1  # the line without a tab


def plain_folder(path, n=3):
    for i in range(n):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(path / f"p{i}.png")
    return path


def test_captions_of_any_line_end_and_of_utf16_pair_each_file_with_its_own_caption(tmp_path):
    plain_folder(tmp_path)
    lines = [f"p{i}.png\tcaption {i}" for i in range(3)]
    for name, data in [("mac.txt", "\r".join(lines).encode()),  # Excel's "tab delimited" on a Mac: was one line,
                       ("dos.txt", "\r\n".join(lines).encode()),  # p0.png with the text of every line
                       ("notepad.txt", "\r\n".join(lines).encode("utf-16"))]:  # was 3 lines without a tab... or NULs
        (tmp_path / name).write_bytes(data)
        ds = build_dataset(cfg(tmp_path, captions_file=name), 8, 3, "train")
        assert ds.items == [(f"p{i}.png", f"caption {i}") for i in range(3)] and ds.skipped == 0, name


def test_a_file_listed_twice_with_two_captions_is_counted_and_said(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="fluxflow.data")
    plain_folder(tmp_path)
    (tmp_path / "captions.txt").write_text("p0.png\ta cat\np1.png\ta dog\np2.png\tx\np0.png\ta black cat\n"
                                           "p1.png\ta dog\n")  # the same line again drops nothing
    ds = build_dataset(cfg(tmp_path), 8, 3, "train")
    assert dict(ds.items)["p0.png"] == "a black cat" and ds.skipped == 1  # was 0: "a cat" dropped unsaid
    assert any("1 file(s) listed again in captions.txt with another caption, the last line kept; first: 'p0.png'"
               in r.getMessage() for r in caplog.records)


def test_images_the_captions_file_does_not_list_are_said_once_by_the_training_split(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="fluxflow.data")
    plain_folder(tmp_path)
    (tmp_path / "new").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "new" / "added.JPG")  # added to the folder, not to the captions
    for other in (".DS_Store", "notes.txt", ".hidden.png"):
        (tmp_path / other).write_bytes(b"x")
    (tmp_path / "captions.txt").write_text("".join(f"./p{i}.png\tp {i}\n" for i in range(3)))
    build_dataset(cfg(tmp_path), 8, 3, "train")
    build_dataset(cfg(tmp_path), 8, 3, "holdout")
    said = [r.getMessage() for r in caplog.records if "not listed" in r.getMessage()]
    assert said == [f"{tmp_path}: 1 image file(s) not listed in captions.txt, not trained on; first: "
                    f"'{os.path.join('new', 'added.JPG')}'"]


def test_a_listed_file_in_a_folder_that_cannot_be_searched_is_skipped_and_counted(tmp_path, monkeypatch):
    plain_folder(tmp_path)
    (tmp_path / "captions.txt").write_text("p0.png\tzero\np1.png\tone\np2.png\ttwo\nlocked/p9.png\tlocked\n")
    is_file = Path.is_file

    def searching_locked(path):  # what a folder without x permission does to pathlib (root is never refused)
        if "locked" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return is_file(path)

    monkeypatch.setattr(Path, "is_file", searching_locked)
    ds = build_dataset(cfg(tmp_path), 8, 3, "train")  # was: PermissionError, a traceback, the step retried
    assert len(ds) == 3 and ds.skipped == 1


@pytest.mark.parametrize("captions, says", [
    ("file_name,text\np0.png,zero\np1.png,one\n", re.escape("none of its 3 lines is 'filename<TAB>caption' (first: "
                                                            "'file_name,text')")),
    ("p0.png zero\np1.png one\n", re.escape("none of its 2 lines is 'filename<TAB>caption' (first: 'p0.png zero')")),
    ("# nothing yet\n\n", "lists no images"),
    ("zero\tp0.png\none\tp1.png\n", "none of the 2 files listed in captions.txt is in .* \\(first: 'zero', looked "
                                    "for at .*zero\\)"),  # the two columns the wrong way round
])
def test_a_captions_file_that_lists_nothing_usable_says_why(tmp_path, captions, says):
    plain_folder(tmp_path)
    (tmp_path / "captions.txt").write_text(captions)
    with pytest.raises(DataError, match=says):  # was: 0 items ("fewer than one batch" at the step), or a hold-out
        build_dataset(cfg(tmp_path, holdout=1), 8, 3, "train")


@pytest.mark.parametrize("not_text", ["an image", "UTF-16 without its mark"])
def test_a_captions_file_that_is_not_text_is_said_to_be_so_without_its_bytes(tmp_path, not_text):
    """Its lines' raw bytes (NULs, terminal controls) went into 'none of the files listed is in the folder'."""
    plain_folder(tmp_path)
    captions = tmp_path / "captions.txt"
    if not_text == "an image":
        captions.write_bytes((tmp_path / "p0.png").read_bytes())
    else:
        captions.write_bytes("p0.png\tzero\np1.png\tone\n".encode("utf-16-le"))
    with pytest.raises(DataError) as raised:
        build_dataset(cfg(tmp_path), 8, 3, "train")
    message = str(raised.value)
    assert f"captions file {captions} is not text (it holds NUL bytes" in message
    assert message.isprintable(), message


def test_a_held_out_split_of_unreadable_files_names_the_split_and_why(tmp_path):
    from fluxflow.data.folder import holdout_names
    names = [f"i{i}.png" for i in range(6)]
    held = holdout_names(names, 2)
    for name in names:
        if name in held:
            (tmp_path / name).write_bytes(b"not an image")
        else:
            Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "captions.txt").write_text("".join(f"{n}\t{n}\n" for n in names))
    holdout = build_dataset(cfg(tmp_path, holdout=2), 8, 3, "holdout")
    # was "no readable image among the 2 files of DIR", of a folder of 6 files
    with pytest.raises(DataError, match=r"none of the 2 held-out images of .* can be read \(i\d\.png: "
                                        r"UnidentifiedImageError"):
        holdout[0]


def test_a_count_of_one_reads_singular_in_the_folder_s_errors(tmp_path):
    """Were "(1 listed images found)" and "none of the 1 held-out images of DIR can be read"."""
    (tmp_path / "a.png").write_bytes(b"not an image")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    (tmp_path / "captions.txt").write_text("a.png\ta\nc.png\tc\n")  # c.png is not there
    with pytest.raises(DataError, match=r"holdout=1 leaves no training images \(1 listed image found\); "):
        build_dataset(cfg(tmp_path, holdout=1), 8, 3, "train")
    (tmp_path / "captions.txt").write_text("a.png\ta\nb.png\tb\n")
    holdout = build_dataset(cfg(tmp_path, holdout=1), 8, 3, "holdout")
    if holdout.items[0][0] == "b.png":  # the hold-out draw took the readable one: make it unreadable
        (tmp_path / "b.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"none of the 1 held-out image of .* can be read \("):
        holdout[0]


def test_an_unreadable_held_out_image_is_said_to_be_held_out_and_counted_once_apart_from_training(tmp_path, caplog):
    from fluxflow.data.folder import holdout_names
    caplog.set_level(logging.WARNING, logger="fluxflow.data")
    names = [f"i{i}.png" for i in range(6)]
    broken = sorted(holdout_names(names, 2))[0]
    for name in names:
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / broken).write_bytes(b"")  # a zero-byte file
    (tmp_path / "captions.txt").write_text("".join(f"{n}\t{n}\n" for n in names))
    holdout = build_dataset(cfg(tmp_path, holdout=2), 8, 3, "holdout")
    train = build_dataset(cfg(tmp_path, holdout=2), 8, 3, "train")
    for _ in range(2):  # the step's sample images, then an evaluation: read twice, counted once
        assert [holdout[i][1] for i in range(2)] == [n for n in sorted(holdout_names(names, 2)) if n != broken] * 2
    # was 0 anywhere: the warning said "counted in skipped_samples", which stayed 0
    assert holdout.skipped == 1 and train.skipped == 0
    said, = [r.getMessage() for r in caplog.records]
    assert "(held out, scored by evaluation)" in said and broken in said
    assert said.endswith("(further ones are counted in skipped_holdout_samples, not logged)")


def test_a_file_listed_under_two_spellings_is_one_file_with_the_last_caption(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="fluxflow.data")
    plain_folder(tmp_path)
    (tmp_path / "captions.txt").write_text("p0.png\ta red\np1.png\tb\np2.png\tc\n./p0.png\ta blue\n")
    ds = build_dataset(cfg(tmp_path), 8, 3, "train")
    assert ds.items == [("p0.png", "a blue"), ("p1.png", "b"), ("p2.png", "c")] and ds.skipped == 1  # was 4 items
    assert any("listed again in captions.txt with another caption" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("spelling", ["absolute", "../<folder>/", "symlinked folder"])
def test_a_file_listed_by_a_path_through_another_folder_is_one_item_with_the_last_caption(tmp_path, caplog, spelling):
    """Through a symlinked folder too: one file was two items, held out and trained at once."""
    caplog.set_level(logging.WARNING, logger="fluxflow.data")
    root = tmp_path / "photos"
    root.mkdir()
    plain_folder(root, n=4)
    (root / "also").symlink_to(root)
    other = {"absolute": str(root / "p0.png"), "../<folder>/": "../photos/p0.png",
             "symlinked folder": "also/p0.png"}[spelling]
    (root / "captions.txt").write_text(f"p0.png\ta red\np1.png\tb\np2.png\tc\np3.png\td\n{other}\ta blue\n")
    ds = build_dataset(cfg(root), 8, 3, "train")
    assert sorted(c for _, c in ds.items) == ["a blue", "b", "c", "d"] and ds.skipped == 1  # was 5 items, 0 skipped
    assert any("1 file(s) listed again in captions.txt with another caption, the last line kept; first: 'p0.png'"
               in r.getMessage() for r in caplog.records)
    for holdout in range(1, 4):  # held out or trained, never both
        train, held = (build_dataset(cfg(root, holdout=holdout), 8, 3, split, report=False) for split in
                       ("train", "holdout"))
        assert len(train) + len(held) == 4 and not {c for _, c in train.items} & {c for _, c in held.items}


def test_the_identity_a_resume_checks_changes_with_the_listed_images_and_captions_only(tmp_path):
    plain_folder(tmp_path, n=4)
    (tmp_path / "captions.txt").write_text("".join(f"p{i}.png\tp {i}\n" for i in range(3)))
    before = build_dataset(cfg(tmp_path), 8, 3, "train").identity
    assert before["items"] == 3 and build_dataset(cfg(tmp_path), 8, 3, "train").identity == before
    Image.new("RGB", (16, 16), (0, 0, 90)).save(tmp_path / "p0.png")  # replaced in place: the same items
    assert build_dataset(cfg(tmp_path), 8, 3, "train").identity == before
    with (tmp_path / "captions.txt").open("a") as captions:
        captions.write("p3.png\tp 3\n")
    assert build_dataset(cfg(tmp_path), 8, 3, "train").identity["items"] == 4
    (tmp_path / "captions.txt").write_text("".join(f"p{i}.png\tp {i}!\n" for i in range(3)))
    edited = build_dataset(cfg(tmp_path), 8, 3, "train").identity
    assert edited["items"] == 3 and edited["sha256"] != before["sha256"]


def test_a_file_the_captions_file_lists_by_its_absolute_path_is_not_said_to_be_unlisted(tmp_path, caplog):
    """Nor by a path through a symlinked folder (`link/p2.png` for `sub/p2.png`), which was said not to be trained."""
    caplog.set_level(logging.WARNING, logger="fluxflow.data")
    plain_folder(tmp_path, n=4)
    (tmp_path / "sub").mkdir()
    (tmp_path / "p2.png").rename(tmp_path / "sub" / "p2.png")
    (tmp_path / "link").symlink_to(tmp_path / "sub")
    (tmp_path / "captions.txt").write_text(f"p0.png\tp 0\n{tmp_path / 'p1.png'}\tp 1\n./link/p2.png\tp 2\n")
    ds = build_dataset(cfg(tmp_path), 8, 3, "train")
    assert len(ds) == 3  # p1.png is trained on
    said = [r.getMessage() for r in caplog.records if "not listed" in r.getMessage()]
    assert said == [f"{tmp_path}: 1 image file(s) not listed in captions.txt, not trained on; first: 'p3.png'"]


def test_the_skip_count_is_of_the_batches_trained_whatever_the_workers_decode_ahead(tmp_path):
    import itertools
    import time
    for i in range(24):
        Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(tmp_path / f"p{i:02d}.png")
    from fluxflow.data import epoch_permutation
    order = epoch_permutation(24, 0, 0).tolist()  # epoch 0's: batches of 4
    for position in (0, 5, 10, 14, 18, 22):  # 6 zero-byte images, 2 in the first two batches
        (tmp_path / f"p{order[position]:02d}.png").write_bytes(b"")
    (tmp_path / "captions.txt").write_text("".join(f"p{i:02d}.png\tp {i}\n" for i in range(24)))

    def skipped_after_two_batches(workers):  # a step of max_steps 2
        ds = build_dataset(cfg(tmp_path), 8, 3, "train")
        batches = iter(make_loader(ds, 4, workers=workers, seed=0))
        for _ in itertools.islice(batches, 2):
            pass
        time.sleep(0.5)  # as long as the step would train: the workers decode the batches after these meanwhile
        return ds.skipped

    alone = skipped_after_two_batches(0)
    assert 0 < alone < 6
    assert skipped_after_two_batches(2) == alone  # was 5 against 2: what the workers decoded ahead was counted
