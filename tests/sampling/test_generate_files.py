"""What `fluxflow-generate` does to its output folder: files of the same name, a prompt given twice, Ctrl-C while it
draws or saves. The model: test_generate.py's tiny trained pipeline."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from fluxflow.sampling import generate as generate_module
from fluxflow.sampling.sample_files import prompt_file_name
from test_generate import generate_cli, trained  # noqa: F401  (trained: the module's fixture)


def test_an_image_already_there_is_not_replaced_without_overwrite(trained, tmp_path, capsys):  # noqa: F811
    """Names depend on prompt and seed only: a second run with other steps (or another checkpoint) drew a different
    image under the same name and replaced the first, silently."""
    _, checkpoint, _ = trained
    out = tmp_path / "g"
    assert generate_cli("--checkpoint", checkpoint, "--prompt", "a red circle", "--n", "2", "--output", str(out)) == 0
    first = out / prompt_file_name("a red circle", 0)
    first.write_bytes(b"the user's own file")  # whatever was there must stay
    capsys.readouterr()
    again = ["--checkpoint", checkpoint, "--prompt", "a red circle", "--prompt", "a blue square", "--n", "2",
             "--steps", "7", "--output", str(out)]
    assert generate_cli(*again) == 2
    assert capsys.readouterr().err == (
        f"fluxflow-generate: --output {out} already has {first.name} and 1 more of the 4 images to write: pass "
        "--overwrite to replace them, or choose another --output\n")
    assert first.read_bytes() == b"the user's own file" and len(list(out.iterdir())) == 2  # nothing drawn
    assert generate_cli(*again, "--overwrite") == 0
    assert len(list(out.iterdir())) == 4
    with Image.open(first) as image:  # replaced, as asked
        assert image.format == "WEBP"



def test_a_folder_where_an_image_goes_is_refused_before_drawing_even_with_overwrite(trained, tmp_path,  # noqa: F811
                                                                                    capsys):
    """--overwrite drew the images before it, then failed naming a hidden temporary file as the folder."""
    _, checkpoint, _ = trained
    out = tmp_path / "g"
    (out / prompt_file_name("a red circle", 1)).mkdir(parents=True)
    assert generate_cli("--checkpoint", checkpoint, "--prompt", "a red circle", "--n", "3", "--output", str(out),
                        "--overwrite") == 2
    assert capsys.readouterr().err == (
        f"fluxflow-generate: --output {out} has a folder named {prompt_file_name('a red circle', 1)}, where an image "
        "of this request goes: move it away, or choose another --output\n")
    assert [p.name for p in out.iterdir()] == [prompt_file_name("a red circle", 1)]  # nothing drawn

def test_a_prompt_given_twice_is_drawn_and_listed_once(trained, tmp_path, capsys):  # noqa: F811
    """It was drawn twice into the same file, listed twice, and counted as 2 images."""
    _, checkpoint, _ = trained
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    assert generate_cli("--checkpoint", checkpoint, "--prompt", "a red circle", "--prompts-file", str(prompts),
                        "--output", str(tmp_path / "g")) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [str(tmp_path / "g" / prompt_file_name(p, 0)) for p in ("a red circle", "a blue square")
                                ] + [f"Wrote 2 image(s) to {tmp_path / 'g'}"]
    assert err == "fluxflow-generate: the prompt 'a red circle' is given 2 times: its images are made once\n"


def test_ctrl_c_keeps_the_images_written_lists_them_and_exits_130(trained, tmp_path, capsys, monkeypatch):  # noqa
    """Ctrl-C printed a KeyboardInterrupt traceback from inside torch and none of the paths of the images it had
    written (they were printed at the end)."""
    _, checkpoint, _ = trained
    real, calls = generate_module.generate, []

    def interrupted_at_the_second(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(generate_module, "generate", interrupted_at_the_second)
    out_dir = tmp_path / "g"
    assert generate_cli("--checkpoint", checkpoint, "--prompt", "a red circle", "--n", "3",
                        "--output", str(out_dir)) == 130
    out, err = capsys.readouterr()
    kept = out_dir / prompt_file_name("a red circle", 0)
    assert out == f"{kept}\n"
    assert err == f"fluxflow-generate: interrupted: 1 image(s) written to {out_dir} (listed above), none half-written\n"
    assert list(out_dir.iterdir()) == [kept]


def test_ctrl_c_while_an_image_is_saved_leaves_no_part_of_it(trained, tmp_path, capsys, monkeypatch):  # noqa: F811
    """The image was saved straight to its name: stopped half way, a truncated file stayed there."""
    _, checkpoint, _ = trained

    def save_half(self, fp, *args, **kwargs):
        (open(fp, "wb") if isinstance(fp, (str, Path)) else fp).write(b"RIFF\x00\x01")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", save_half)
    assert generate_cli("--checkpoint", checkpoint, "--prompt", "x", "--output", str(tmp_path / "g")) == 130
    assert capsys.readouterr().err == "fluxflow-generate: interrupted: no image written\n"
    assert list((tmp_path / "g").iterdir()) == []  # neither the image's name nor a temp file


def test_a_link_to_nowhere_at_an_images_name_is_not_replaced_without_overwrite(trained, tmp_path,  # noqa: F811
                                                                                capsys):
    """Path.exists follows the link: the link was replaced by the image, without --overwrite."""
    _, checkpoint, _ = trained
    out = tmp_path / "g"
    out.mkdir()
    link = out / prompt_file_name("x", 0)
    link.symlink_to(tmp_path / "gone")
    assert generate_cli("--checkpoint", checkpoint, "--prompt", "x", "--output", str(out)) == 2
    assert capsys.readouterr().err == (f"fluxflow-generate: --output {out} already has {link.name}: pass --overwrite "
                                       "to replace it, or choose another --output\n")
    assert link.is_symlink() and not (tmp_path / "gone").exists()


@pytest.mark.parametrize(("flags", "says"), [
    (["--size", "17"], "fluxflow-generate: --size "),
    (["--device", "cuda"], "fluxflow-generate: --device is 'cuda' but no CUDA device"),
    (["--config", "nope.yaml"], "fluxflow-generate: 1 problem in nope.yaml:\n  - (file): not found: nope.yaml"),
    (["--model", "nope"], "fluxflow-generate: --model nope is not a model URI")])
def test_a_request_that_cannot_run_is_refused_for_that_not_for_an_image_already_there(trained, tmp_path, capsys,  # noqa
                                                                                      monkeypatch, flags, says):
    """'already has ...: pass --overwrite' came first: the user passed --overwrite and then met the real error."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _, checkpoint, _ = trained
    out = tmp_path / "g"
    out.mkdir()
    (out / prompt_file_name("x", 0)).write_bytes(b"the user's own file")
    source = [] if "--model" in flags else ["--checkpoint", checkpoint]
    monkeypatch.chdir(tmp_path)
    assert generate_cli(*source, *flags, "--prompt", "x", "--output", str(out)) == 2
    err = capsys.readouterr().err
    assert err.startswith(says) and "already has" not in err
    assert (out / prompt_file_name("x", 0)).read_bytes() == b"the user's own file"
