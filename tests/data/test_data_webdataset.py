"""`webdataset` shards: brace patterns and fsspec URLs, a held-out head, and a stream order that resumes exactly."""
import io
import itertools
import json
import logging
import os
import tarfile
from types import SimpleNamespace

import fsspec
import pytest
import torch
from PIL import Image

from fluxflow.data import build_dataset, make_loader
from fluxflow.data.webdataset_source import iter_shard

SHARDS, PER_SHARD = 4, 5


def png_bytes(value):
    buf = io.BytesIO()
    Image.new("RGB", (12, 12), (value, 255 - value, 7)).save(buf, format="PNG")
    return buf.getvalue()


def make_shard(fileobj, shard, corrupt=None, latin1=None):
    with tarfile.open(fileobj=fileobj, mode="w") as tar:
        for i in range(PER_SHARD):
            key = f"s{shard}/{i:03d}"
            image = b"\x89PNG broken" if (shard, i) == corrupt else png_bytes(10 * shard + i)
            caption = f"shard {shard} item {i}" + (" café" if (shard, i) == latin1 else "")
            encoding = "latin-1" if (shard, i) == latin1 else "utf-8"
            for ext, data in (("png", image), ("txt", caption.encode(encoding))):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shard_dir(tmp_path):
    for s in range(SHARDS):
        with open(tmp_path / f"shards-{s:03d}.tar", "wb") as f:
            make_shard(f, s, corrupt=(2, 3), latin1=(1, 4))
    return tmp_path


def cfg(urls, holdout=3, length=None):
    return SimpleNamespace(type="webdataset", urls=urls, length=length, holdout=holdout)


def captions_of(loader):
    return [c for _, captions in loader for c in captions]


def test_brace_pattern_holdout_and_length(shard_dir):
    urls = str(shard_dir / "shards-{000..003}.tar")
    train = build_dataset(cfg(urls), 8, 3, "train")
    holdout = build_dataset(cfg(urls), 8, 3, "holdout")
    assert len(train) == SHARDS * PER_SHARD - 3  # counted from the tar headers when `length` is not given
    assert [holdout[i][1] for i in range(3)] == ["shard 0 item 0", "shard 0 item 1", "shard 0 item 2"]
    image = holdout[0][0]
    assert image.shape == (3, 8, 8) and -1 <= image.min() <= image.max() <= 1
    seen = captions_of(make_loader(train, 1, workers=0, seed=0))
    assert len(seen) == len(train)
    everything = {f"shard {s} item {i}" for s in range(SHARDS) for i in range(PER_SHARD)} - {"shard 1 item 4"}
    everything.add("shard 1 item 4 café")
    held = {holdout[i][1] for i in range(3)}
    assert set(seen) == everything - held - {"shard 2 item 3"}, "a held-out sample was trained on, or one is lost"


def test_corrupt_sample_is_replaced_and_counted(shard_dir):
    train = build_dataset(cfg(str(shard_dir / "shards-{000..003}.tar"), holdout=0), 8, 3, "train")
    seen = captions_of(make_loader(train, 1, workers=0, seed=0))
    assert len(seen) == SHARDS * PER_SHARD  # its place is taken: batch boundaries (and resume) are unchanged
    assert "shard 2 item 3" not in seen and len(set(seen)) == SHARDS * PER_SHARD - 1
    assert "shard 1 item 4 café" in seen  # a caption that is not UTF-8 is kept, decoded as Latin-1
    assert train.skipped == 2  # the corrupt image and the repaired caption


def test_epoch_order_is_deterministic_and_resume_matches(shard_dir):
    urls = [str(shard_dir / f"shards-{s:03d}.tar") for s in range(SHARDS)]
    train = build_dataset(cfg(urls, length=SHARDS * PER_SHARD), 8, 3, "train")
    full = list(make_loader(train, 2, workers=0, seed=9, epoch=1))
    assert len(full) == len(make_loader(train, 2, workers=0, seed=9, epoch=1)) == 8
    assert captions_of(full) == captions_of(make_loader(train, 2, workers=0, seed=9, epoch=1))
    assert captions_of(full) != captions_of(make_loader(train, 2, workers=0, seed=9, epoch=2))
    for start in (1, 3, 6):  # inside the first shard, after whole shards, near the end
        resumed = list(make_loader(train, 2, workers=0, seed=9, epoch=1, start_batch=start))
        assert [c for _, c in resumed] == [c for _, c in full[start:]]
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(resumed, full[start:]))


def test_worker_processes_keep_the_single_process_order(shard_dir):
    train = build_dataset(cfg(str(shard_dir / "shards-{000..003}.tar")), 8, 3, "train")
    single = captions_of(make_loader(train, 2, workers=0, seed=4, epoch=0, start_batch=1))
    multi = captions_of(make_loader(train, 2, workers=2, seed=4, epoch=0, start_batch=1))
    assert multi == single and len(single) == 14


def test_skipping_reads_headers_only(shard_dir):
    read = []
    samples = list(iter_shard(str(shard_dir / "shards-001.tar"), want=lambda j: read.append(j) or j == 4))
    assert [k for k, _ in samples] == [f"s1/{i:03d}" for i in range(PER_SHARD)]
    assert [files for _, files in samples[:4]] == [{}] * 4
    assert set(samples[4][1]) == {"png", "txt"}


def test_fsspec_urls(shard_dir):
    fs = fsspec.filesystem("memory")
    for s in range(2):
        with fs.open(f"/wds/part-{s}.tar", "wb") as f:
            make_shard(f, s)
    train = build_dataset(cfg("memory://wds/part-{0..1}.tar", holdout=2), 8, 3, "train")
    holdout = build_dataset(cfg("memory://wds/part-{0..1}.tar", holdout=2), 8, 3, "holdout")
    assert len(train) == 8 and len(holdout) == 2
    assert len(captions_of(make_loader(train, 4, workers=0, seed=0))) == 8
    local = build_dataset(cfg(f"file://{shard_dir}/shards-000.tar", holdout=0), 8, 3, "train")
    assert len(local) == PER_SHARD


def test_two_ranks_read_disjoint_shards_and_together_every_sample(shard_dir):
    urls = str(shard_dir / "shards-{000..003}.tar")
    parts = [build_dataset(cfg(urls, holdout=0), 8, 3, "train", rank=r, world=2) for r in range(2)]
    seen = [captions_of(make_loader(p, 4, workers=0, seed=1, rank=r, world=2)) for r, p in enumerate(parts)]
    assert [len(s) for s in seen] == [10, 10] and {len(p) for p in parts} == {20}
    shards = [{c.split()[1] for c in s} for s in seen]
    assert not shards[0] & shards[1] and len(shards[0]) == len(shards[1]) == 2
    everything = {f"shard {s} item {i}" + (" café" if (s, i) == (1, 4) else "")  # the Latin-1 caption, kept
                  for s in range(SHARDS) for i in range(PER_SHARD)}
    assert set(seen[0]) | set(seen[1]) == everything - {"shard 2 item 3"}  # unreadable: a batch-mate stands in
    with pytest.raises(ValueError, match="built for 2 rank"):
        make_loader(parts[0], 4, workers=0, seed=1)


def test_the_shuffle_buffer_mixes_within_its_size_and_the_shard_split_balances():
    from fluxflow.data.stream_order import assign_shards, buffer_order

    order = buffer_order(1000, 100, [0, 1, 0, 1])
    assert sorted(order.tolist()) == list(range(1000)) and order.tolist() != list(range(1000))
    assert all(order[p] <= p + 100 for p in range(1000))  # no sample is read more than 100 outputs ahead
    assert (order == buffer_order(1000, 100, [0, 1, 0, 1])).all()
    assert not (order == buffer_order(1000, 100, [0, 2, 0, 1])).all()  # another epoch, another order
    assert buffer_order(5, 0, [0]).tolist() == [0, 1, 2, 3, 4]
    assert assign_shards([5, 5, 5, 3], 2) == [[0, 2], [1, 3]]
    with pytest.raises(ValueError, match="^1 shard cannot be split over 2 ranks: write at least one shard per rank"):
        assign_shards([5], 2)  # was "1 shards"


def write_shard(path, samples):
    """samples: {key: {ext: bytes}}, in order."""
    with tarfile.open(path, "w") as tar:
        for key, files in samples.items():
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_a_sample_without_a_caption_is_counted_and_its_files_named(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="fluxflow.data")
    write_shard(tmp_path / "s.tar", {
        "a": {"png": png_bytes(1), "txt": b"a caption"},
        "b": {"png": png_bytes(2), "prompt": b"under another name"},
        "c": {"png": png_bytes(3), "json": json.dumps({"caption": None}).encode()},  # was the caption "None"
        "d": {"png": png_bytes(4), "json": json.dumps({"text": "from json"}).encode()},
    })
    train = build_dataset(cfg(str(tmp_path / "s.tar"), holdout=0), 8, 3, "train")
    seen = sorted(captions_of(make_loader(train, 1, workers=0, seed=0)))
    assert seen == ["", "", "a caption", "from json"]
    assert train.skipped == 2  # was 0: trained without text, unsaid
    said = [r.getMessage() for r in caplog.records if "no caption" in r.getMessage()]
    # the first met (the shuffle decides which), with the files it has: a caption under another name is seen
    assert len(said) == 1 and (":b: files png, prompt;" in said[0] or ":c: files json, png (json keys: caption);"
                               in said[0]), said


def test_a_shard_that_is_no_tar_and_a_holdout_of_every_sample_are_data_errors(shard_dir):
    from fluxflow.errors import DataError
    (shard_dir / "notes.tar").write_text("not a tar archive at all " * 40)
    with pytest.raises(DataError, match="notes.tar is not a tar archive"):  # was tarfile.ReadError: retried, 4 lines
        build_dataset(cfg(str(shard_dir / "notes.tar"), holdout=0), 8, 3, "train")
    with pytest.raises(DataError, match=r"holdout=5 leaves no training samples \(5 samples in its shards\)"):
        build_dataset(cfg(str(shard_dir / "shards-000.tar"), holdout=5), 8, 3, "train")  # was a ValueError: retried


def test_a_truncated_shard_and_a_length_beyond_the_shards_are_data_errors_naming_them(shard_dir):
    from fluxflow.errors import DataError
    whole = (shard_dir / "shards-001.tar").read_bytes()
    (shard_dir / "cut.tar").write_bytes(whole[:2 * 1024 + 700])  # stopped in the data of its 3rd member
    urls = [str(shard_dir / "shards-000.tar"), str(shard_dir / "cut.tar")]
    train = build_dataset(cfg(urls, holdout=0, length=2 * PER_SHARD), 8, 3, "train")
    # was tarfile.ReadError('unexpected end of data'): retried, a traceback, and no shard named
    with pytest.raises(DataError, match=r"shard .*cut.tar is truncated or corrupt \(unexpected end of data\)"):
        captions_of(make_loader(train, 2, workers=0, seed=0))
    urls = str(shard_dir / "shards-{000..001}.tar")
    train = build_dataset(cfg(urls, holdout=1, length=4 * PER_SHARD), 8, 3, "train")
    # was an epoch of no batch at all, "epochs_done", exit 0: the order waited for samples the shards do not hold
    with pytest.raises(DataError, match=r"its shards hold 10 samples, fewer than `length` says \(20\)"):
        captions_of(make_loader(train, 2, workers=0, seed=0))


@pytest.mark.parametrize("cut_in_header", [False, True])
def test_a_shard_cut_at_or_inside_a_header_is_a_data_error_not_a_shorter_shard(shard_dir, cut_in_header):
    """tarfile stops without a word at a missing or cut header: half of the cuts of a shard were read as a shorter
    one, its later samples gone and the last one's caption perhaps lost, with no word."""
    from fluxflow.errors import DataError
    whole = (shard_dir / "shards-001.tar").read_bytes()
    cut = 4 * 1024 + (100 if cut_in_header else 0)  # after the 2nd sample's two files (a header and a data block each)
    (shard_dir / "cut.tar").write_bytes(whole[:cut])
    with pytest.raises(DataError, match=r"shard .*cut.tar is truncated or corrupt \(it ends without the end-of-archive "
                                        r"block, after a whole file\)"):  # when its samples are counted
        build_dataset(cfg(str(shard_dir / "cut.tar"), holdout=0), 8, 3, "train")
    train = build_dataset(cfg(str(shard_dir / "cut.tar"), holdout=0, length=PER_SHARD), 8, 3, "train")  # not counted
    with pytest.raises(DataError, match=r"shard .*cut.tar is truncated or corrupt \(it ends without the end-of-archive "
                                        r"block, after a whole file\)"):
        captions_of(make_loader(train, 2, workers=0, seed=0))
    (shard_dir / "whole.tar").write_bytes(whole)  # the same shard whole: every sample, no error
    assert len(captions_of(make_loader(build_dataset(cfg(str(shard_dir / "whole.tar"), holdout=0), 8, 3, "train"), 1,
                                       workers=0, seed=0))) == PER_SHARD


def test_a_shard_variable_unset_where_the_step_runs_is_a_data_error(shard_dir, monkeypatch):
    """`${ROOT}` with WDS_ROOT set for the driver but not on the Ray node: the run's start checked the driver's, and
    the step raised a ValueError there: retried, a 40-line traceback, exit 1 ("running again may help")."""
    from fluxflow.errors import DataError
    monkeypatch.delenv("WDS_ROOT", raising=False)
    urls = "${ROOT}/shards-{000..001}.tar"
    for split in ("train", "holdout"):
        with pytest.raises(DataError, match=r"environment variable WDS_ROOT is not set"):
            build_dataset(cfg(urls, holdout=1), 8, 3, split)
    monkeypatch.setenv("WDS_ROOT", str(shard_dir))
    assert len(build_dataset(cfg(urls, holdout=1), 8, 3, "train")) == 2 * PER_SHARD - 1


def test_a_shard_of_symbolic_links_says_so(tmp_path):
    """`tar cf links.tar --sort=name -C links .` of a folder of symlinked images stores the links: every sample lost
    its image, and the warning blamed the order of a tar written as the docs say."""
    from fluxflow.errors import DataError
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png_bytes(1))
    with tarfile.open(tmp_path / "links.tar", "w") as tar:
        link = tarfile.TarInfo("s0.png")
        link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path / "images" / "a.png")
        tar.addfile(link)
        caption = tarfile.TarInfo("s0.txt")
        caption.size = 3
        tar.addfile(caption, io.BytesIO(b"a s"))
    with pytest.raises(DataError, match=r"links.tar: s0.png is a symbolic link \(to .*a.png\), which a tar stores as "
                                        r"the link, not the file: .*-h, --dereference"):
        build_dataset(cfg(str(tmp_path / "links.tar"), holdout=0), 8, 3, "train")


def test_the_latent_normalisations_pass_over_the_data_counts_no_skip_the_epoch_counts_again(shard_dir):
    from fluxflow.train.step_data import leading_inputs
    train = build_dataset(cfg(str(shard_dir / "shards-{000..003}.tar"), holdout=0), 8, 3, "train")
    for _ in leading_inputs(SimpleNamespace(batch_source=train), 4, 0, 10 ** 6, torch.device("cpu")):
        pass  # the measurement reads the whole stream: the corrupt image and the repaired caption
    assert train.skipped == 0  # was 2: the flow step then said 4 skips for an epoch that met 2
    captions_of(make_loader(train, 1, workers=0, seed=0))
    assert train.skipped == 2


def test_a_shard_missing_from_an_object_store_is_one_line_naming_its_url_and_not_retried(s3):
    from fluxflow.errors import DataError, is_retryable
    store = fsspec.filesystem("s3")
    for s in (0, 1, 2, 4):  # a gap, as the run's start check finds it; here the step meets it
        with store.open(f"fluxflow/shards/shard-{s:03d}.tar", "wb") as f:
            make_shard(f, s)
    with pytest.raises(DataError) as caught:  # was `FileNotFoundError: fluxflow/shards/shard-003.tar`: retried
        build_dataset(cfg("s3://fluxflow/shards/shard-{000..004}.tar", holdout=0), 8, 3, "train")
    assert str(caught.value) == "webdataset shard s3://fluxflow/shards/shard-003.tar does not exist"
    assert not is_retryable(caught.value)


def test_a_shard_whose_server_cannot_be_reached_says_why_in_one_line_and_is_retried():
    """Was 115 lines ending `FileNotFoundError: http://...`; retried, as a server that restarts mid-run is back by
    the retry (one unreachable from the start is refused at the run's start)."""
    from s3_server import free_port

    from fluxflow.errors import is_retryable
    url = f"http://127.0.0.1:{free_port()}/shard.tar"  # a closed port: the network's failure without a network
    with pytest.raises(OSError) as caught:
        build_dataset(cfg(url, holdout=0), 8, 3, "train")
    assert str(caught.value) == (f"webdataset shard {url} could not be read: cannot reach {url.split('/')[2]}: "
                                 "Connection refused")
    assert is_retryable(caught.value) and caught.value.__cause__ is None and caught.value.__suppress_context__


def test_captions_decode_as_a_folders_captions_file_and_a_broken_json_is_said_to_be_the_caption(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="fluxflow.data")
    write_shard(tmp_path / "s.tar", {
        "a": {"png": png_bytes(1), "txt": "\ufeffwith a byte-order mark".encode()},  # was '\ufeffwith a ...'
        "b": {"png": png_bytes(2), "txt": "Notepad's Unicode, café".encode("utf-16")},  # was Latin-1 garbage
        "c": {"png": png_bytes(3), "json": b'{"caption": "cut'},
    })
    train = build_dataset(cfg(str(tmp_path / "s.tar"), holdout=0), 8, 3, "train")
    seen = sorted(captions_of(make_loader(train, 1, workers=0, seed=0)))
    assert "with a byte-order mark" in seen and "Notepad's Unicode, café" in seen
    assert train.skipped == 1  # the broken json only: neither .txt is "repaired"
    (said,) = [r.getMessage() for r in caplog.records]
    # was "skipping an unreadable image of ...: JSONDecodeError: ..."
    assert said.startswith(f"skipping a sample of {str(tmp_path / 's.tar')!r} whose caption cannot be read: ") \
        and ":c: its .json is not valid JSON (Unterminated string" in said, said


def test_a_caption_without_an_image_is_said_so_with_the_rule_that_a_samples_files_are_adjacent(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="fluxflow.data")
    write_shard(tmp_path / "s.tar", {"a": {"png": png_bytes(1)}, "b": {"png": png_bytes(2)}})
    with tarfile.open(tmp_path / "s.tar", "a") as tar:  # `tar cf s.tar *.png *.txt`: each caption a group of its own
        for key in "ab":
            info = tarfile.TarInfo(f"{key}.txt")
            info.size = 9
            tar.addfile(info, io.BytesIO(b"a caption"))
    train = build_dataset(cfg(str(tmp_path / "s.tar"), holdout=0), 8, 3, "train")
    assert len(train) == 4 and captions_of(make_loader(train, 4, workers=0, seed=0)) == [""] * 4
    said = [r.getMessage() for r in caplog.records if "no image" in r.getMessage()]
    # was "skipping an unreadable image of ...: ValueError: no image among ['txt']"
    assert len(said) == 1 and ": a caption without an image (files txt); a sample's files must be adjacent in the " \
                              "tar: write it sorted by name" in said[0], said


def test_a_gif_sample_is_read_as_a_folder_reads_it_and_an_unread_type_is_named(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="fluxflow.data")
    gif = io.BytesIO()
    Image.new("P", (12, 12), 3).save(gif, format="GIF")
    write_shard(tmp_path / "s.tar", {"a": {"gif": gif.getvalue(), "txt": b"a gif"},  # was "a caption without an
                                     "b": {"png": png_bytes(2), "txt": b"a png"},    # image ... adjacent in the tar"
                                     "c": {"avif": b"not read here", "txt": b"an avif"}})
    train = build_dataset(cfg(str(tmp_path / "s.tar"), holdout=0), 8, 3, "train")
    seen = captions_of(make_loader(train, 3, workers=0, seed=0))
    assert "a gif" in seen and "a png" in seen and train.skipped == 1  # the avif sample only
    said = [r.getMessage() for r in caplog.records if "no image" in r.getMessage()]
    assert len(said) == 1 and ":c: no image among its files (avif, txt); an image is read from a file named .jpg, " \
                              in said[0] and ".gif" in said[0] and "adjacent" not in said[0], said


def test_files_named_with_more_than_one_dot_are_told_the_key_rule(tmp_path, caplog):
    """`cat.000.jpg` ... `cat.003.jpg` are one sample `cat` of files `000.jpg`, ... (WebDataset's key rule): it was
    "no image among its files", and the step found 1 item where the user had 4 images."""
    caplog.set_level(logging.WARNING, logger="fluxflow.data")
    write_shard(tmp_path / "dotted.tar", {f"cat.{i:03d}": {"png": png_bytes(i), "txt": b"a cat"} for i in range(3)}
                | {"dog": {"png": png_bytes(9), "txt": b"a dog"}})
    captions_of(make_loader(build_dataset(cfg(str(tmp_path / "dotted.tar"), holdout=0), 8, 3, "train"), 1,
                            workers=0, seed=0))
    [said] = [r.getMessage() for r in caplog.records if "no image" in r.getMessage()]
    assert ("; a sample's key is its file name up to the first dot, so `cat.000.jpg` is a file `000.jpg` of sample "
            "`cat`: rename such files (`cat_000.jpg`)") in said, said


def test_a_count_of_one_reads_singular_in_a_webdataset_s_errors(tmp_path):
    """Were "(1 samples in its shards)" and "its shards hold 1 samples"."""
    from fluxflow.errors import DataError
    write_shard(tmp_path / "one.tar", {"a": {"png": png_bytes(1), "txt": b"a"}})
    with pytest.raises(DataError, match=r"holdout=1 leaves no training samples \(1 sample in its shards\)"):
        build_dataset(cfg(str(tmp_path / "one.tar"), holdout=1), 8, 3, "train")
    train = build_dataset(cfg(str(tmp_path / "one.tar"), holdout=0, length=3), 8, 3, "train")
    with pytest.raises(DataError, match=r"its shards hold 1 sample, fewer than `length` says \(3\)"):
        captions_of(make_loader(train, 1, workers=0, seed=0))


def test_a_webdataset_reads_every_image_type_a_folder_lists():
    from fluxflow.data.folder import IMAGE_SUFFIXES
    from fluxflow.data.webdataset_sample import IMAGE_EXTENSIONS
    assert IMAGE_SUFFIXES == tuple(f".{ext}" for ext in IMAGE_EXTENSIONS)  # gif and pgm were the folder's only


def test_held_out_samples_are_counted_once_apart_and_none_readable_names_the_dataset(tmp_path, caplog):
    from fluxflow.errors import DataError
    caplog.set_level(logging.WARNING, logger="fluxflow.data")
    write_shard(tmp_path / "s.tar", {"a": {"png": b"broken", "txt": b"a"}, "b": {"png": png_bytes(2), "txt": b"b"},
                                     "c": {"png": png_bytes(3), "txt": b"c"}})
    holdout = build_dataset(cfg(str(tmp_path / "s.tar"), holdout=2), 8, 3, "holdout")
    for _ in range(3):  # samples, then two evaluations
        assert [holdout[i][1] for i in range(2)] == ["b", "b"]
    assert holdout.skipped == 1  # was 3: counted at every read, in a count no metric reported
    said, = [r.getMessage() for r in caplog.records]
    assert "held-out samples of" in said and "counted in skipped_holdout_samples" in said
    write_shard(tmp_path / "bad.tar", {"a": {"png": b"broken", "txt": b"a"}, "b": {"png": png_bytes(2), "txt": b"b"}})
    holdout = build_dataset(cfg(str(tmp_path / "bad.tar"), holdout=1), 8, 3, "holdout")
    # was "no readable image among the 1 held-out samples": of which dataset? (and "its 1 held-out samples")
    with pytest.raises(DataError, match=r"webdataset '.*bad.tar': no readable image among its 1 held-out sample "):
        holdout[0]


def test_a_length_smaller_than_the_shards_hold_is_said_once_with_the_real_count(shard_dir, caplog):
    caplog.set_level(logging.WARNING, logger="fluxflow.data")
    train = build_dataset(cfg(str(shard_dir / "shards-{000..003}.tar"), holdout=0, length=10), 8, 3, "train")
    for epoch in range(2):
        loader = make_loader(train, 2, workers=0, seed=0, epoch=epoch)
        seen = captions_of(itertools.islice(loader, len(loader)))  # as the step's loop stops: after the last batch
        assert len(seen) == 10 and seen == captions_of(make_loader(train, 2, workers=2, seed=0, epoch=epoch))
    said = [r.getMessage() for r in caplog.records if "`length`" in r.getMessage()]
    # was nothing: each epoch trained on about one shard of the four, unsaid
    assert said == [f"webdataset {str(shard_dir / 'shards-{000..003}.tar')!r}: its shards hold 20 samples, more "
                    "than `length` says (10); each epoch trains on 10 of them (the first of its shard order) and "
                    "reads past the others: correct `length` or leave it out (the tar headers are then counted)"]


def test_the_skip_count_is_of_the_batches_trained_whatever_the_workers_and_across_a_resume(tmp_path):
    for s in range(4):
        write_shard(tmp_path / f"b-{s}.tar", {f"s{s}/{i}": {"png": png_bytes(i) if (s * 5 + i) % 3 else b"broken",
                                                           "txt": f"{s} {i}".encode()} for i in range(5)})
    urls = str(tmp_path / "b-{0..3}.tar")

    def train_set():
        return build_dataset(cfg(urls, holdout=0), 8, 3, "train")

    def trained(ds, workers, start=0, stop=None):
        loader = make_loader(ds, 2, workers=workers, seed=0, start_batch=start)
        for _ in itertools.islice(loader, (stop or len(loader)) - start):
            pass
        return ds.skipped

    uninterrupted = trained(train_set(), 0)
    assert uninterrupted == 7  # the broken images of the 20 samples
    first_two = trained(train_set(), 0, stop=2)
    assert trained(train_set(), 2, stop=2) == first_two < uninterrupted  # was more: what the workers read ahead
    killed = train_set()
    trained(killed, 2, stop=3)  # interrupted after batch 3, its checkpoint saved
    resumed = train_set()
    resumed.skips.load_state_dict(killed.skips.state_dict())
    assert trained(resumed, 2, start=3) == uninterrupted  # was more: the read-ahead samples were counted twice


def test_the_identity_a_resume_checks_is_the_expanded_shards_files_and_changes_when_they_are_regenerated(
        shard_dir, monkeypatch):
    """A step's latest.pt records it (as a folder's listing): a resume over shards regenerated at their paths, or
    over the other shards a changed $WDS_ variable names, went on without a word, on another stream."""
    monkeypatch.setenv("WDS_PART", "{000..003}")
    urls = str(shard_dir / "shards-${PART}.tar")
    first = build_dataset(cfg(urls), 8, 3, "train").identity
    assert first["shards"] == SHARDS
    assert build_dataset(cfg(urls), 8, 3, "train").identity == first  # the same files: it resumes
    assert build_dataset(cfg(str(shard_dir / "shards-{000..003}.tar")), 8, 3, "train").identity == first
    monkeypatch.setenv("WDS_PART", "{001..003}")
    assert build_dataset(cfg(urls), 8, 3, "train").identity["shards"] == SHARDS - 1
    monkeypatch.setenv("WDS_PART", "{000..003}")
    shard = shard_dir / "shards-001.tar"
    with open(shard, "wb") as f:
        make_shard(f, 9)  # regenerated at its path, with other samples
    later = shard.stat().st_mtime_ns + 10**9
    os.utime(shard, ns=(later, later))
    regenerated = build_dataset(cfg(urls), 8, 3, "train").identity
    assert regenerated["shards"] == SHARDS and regenerated != first
