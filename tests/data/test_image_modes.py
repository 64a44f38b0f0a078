"""What real photo folders hold decodes to the picture a viewer shows: 16-bit grayscale scaled (not clipped to white),
EXIF orientation applied, float images refused (the dataset skips and counts them)."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fluxflow.data import build_dataset, make_loader
from fluxflow.data.transforms import read_image


def decoded(path, channels=3, size=8):
    return read_image(path, size, channels)


def test_a_16_bit_grayscale_png_keeps_its_tones(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))  # black on the left, white on the right
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    with Image.open(tmp_path / "ramp16.png") as img:
        assert img.mode.startswith("I")  # what Pillow opens it as: the case PIL's convert clips
    image = decoded(tmp_path / "ramp16.png", channels=1, size=64)[0]
    assert image[:, 0].max() < -0.95 and image[:, -1].min() > 0.95  # was +1.0 everywhere: every such image white
    assert abs(image[:, 32].mean().item()) < 0.05  # mid-grey in the middle


def test_32_bit_integer_images_are_read_as_16_bit_and_float_images_are_refused(tmp_path):
    Image.fromarray(np.full((16, 16), 32768, dtype=np.int32)).save(tmp_path / "mid.tif")
    assert abs(decoded(tmp_path / "mid.tif").mean().item()) < 0.01
    Image.fromarray(np.full((16, 16), 0.5, dtype=np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match="float image"):
        decoded(tmp_path / "float.tif")


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (32, 16), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 16, 16))  # stored: blue left half, red right half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": shown with blue on top
    img.save(tmp_path / "phone.jpg", quality=95, exif=exif)
    image = decoded(tmp_path / "phone.jpg", size=16)
    top, bottom = image[:, :4].mean(dim=(1, 2)), image[:, -4:].mean(dim=(1, 2))
    assert top[2] > 0.5 and top[0] < -0.5 and bottom[0] > 0.5 and bottom[2] < -0.5


def test_a_folder_of_16_bit_images_and_a_float_one_trains_on_the_readable_ones(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((16, 16), 20000 * i, dtype=np.uint16)).save(tmp_path / f"g{i}.png")
    Image.fromarray(np.zeros((16, 16), dtype=np.float32)).save(tmp_path / "f.tif")
    (tmp_path / "captions.txt").write_text("g0.png\tblack\ng1.png\tgrey\ng2.png\tlight\nf.tif\tfloat\n")
    ds = build_dataset({"type": "folder", "path": str(tmp_path), "captions_file": "captions.txt", "holdout": 0}, 8, 3)
    means = {captions[0]: images.mean().item() for images, captions in make_loader(ds, 1, 0, 0)}  # one epoch
    assert ds.skipped == 1 and set(means) == {"black", "grey", "light"}
    assert means["black"] < means["grey"] < means["light"] < 1.0
    assert torch.is_tensor(ds[0][0])


def test_a_change_of_decoding_changes_a_folders_fingerprint(tmp_path, monkeypatch):
    import fluxflow.data.folder as folder
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "captions.txt").write_text("a.png\ta\n")
    ds = build_dataset({"type": "folder", "path": str(tmp_path), "captions_file": "captions.txt", "holdout": 0}, 8, 3)
    before = ds.fingerprint()
    monkeypatch.setattr(folder, "DECODING_VERSION", folder.DECODING_VERSION + 1)
    assert ds.fingerprint() != before  # a latent cache of the older decoding is not read


def test_an_image_over_pillows_pixel_limit_loads_without_its_warning_and_twice_over_is_counted(tmp_path, monkeypatch):
    for i, side in enumerate((12, 12, 12, 40)):
        Image.new("RGB", (side, side), (200, 10 * i, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "captions.txt").write_text("".join(f"{i}.png\tp {i}\n" for i in range(4)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 144 pixels: over it; 1,600: over twice it
    ds = build_dataset({"type": "folder", "path": str(tmp_path), "captions_file": "captions.txt", "holdout": 0},
                       8, 3, "train")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        images = [batch[0] for batch, _ in make_loader(ds, 1, 0, 0)]  # one epoch: the skips its batches trained
    assert all(image.shape == (3, 8, 8) for image in images) and len(images) == 4
    assert not [w for w in said if issubclass(w.category, Image.DecompressionBombWarning)]  # was 2 raw lines each
    assert ds.skipped == 1  # the one beyond twice the limit: skipped and counted, its place taken


def test_the_channel_counts_validation_accepts_are_those_an_image_converts_to():
    import typing

    from fluxflow.config.schema import DataConfig
    from fluxflow.data.transforms import pil_mode
    accepted = typing.get_args(DataConfig.model_fields["channels"].annotation)
    assert all(pil_mode(c) for c in accepted)  # 2 was accepted, then failed the step: "channels must be one of"
    for refused in set(range(1, 6)) - set(accepted):
        with pytest.raises(ValueError, match="channels must be one of"):
            pil_mode(refused)


@pytest.mark.parametrize("mode, key, hidden, channels", [
    ("RGB", (0, 255, 0), (0, 255, 0), 3),  # RGB with a tRNS chunk, as optipng/oxipng write a binary alpha
    ("RGB", (0, 255, 0), (0, 255, 0), 1),
    ("L", 0, 0, 1),
    ("L", 0, 0, 3),
    ("I;16", 0, 0, 1),  # a 16-bit grayscale key: lost when scaled to 8 bits
])
def test_a_colour_keyed_png_turns_its_transparent_pixels_white_as_an_rgba_one_does(tmp_path, mode, key, hidden,
                                                                                  channels):
    from fluxflow.data.transforms import read_image
    img = Image.new(mode, (16, 16), hidden)
    img.paste((60, 60, 60) if mode == "RGB" else 60, (0, 0, 16, 8))  # top half visible, bottom half transparent
    img.save(tmp_path / "keyed.png", transparency=key)
    with Image.open(tmp_path / "keyed.png") as opened:
        assert opened.mode == mode and "transparency" in opened.info
    image = read_image(tmp_path / "keyed.png", 16, channels)
    assert torch.all(image[:, 10:] == 1.0)  # white, as documented; was the hidden colour (green, black)
    assert torch.all(image[:, :6] < -0.4)  # the visible half kept
    assert torch.equal(read_image(tmp_path / "keyed.png", 16, 4)[3, 10:], torch.full((6, 16), -1.0))  # alpha 0


def test_a_colour_keyed_png_decoded_to_rgba_and_flattened_is_the_same(tmp_path):
    """The RGBA copy of a keyed image (what the user compared with) decodes to the same pixels."""
    from fluxflow.data.transforms import read_image
    img = Image.new("RGB", (16, 16), (0, 255, 0))
    img.paste((200, 10, 10), (0, 0, 16, 8))
    img.save(tmp_path / "keyed.png", transparency=(0, 255, 0))
    with Image.open(tmp_path / "keyed.png") as opened:
        opened.convert("RGBA").save(tmp_path / "rgba.png")
    assert torch.equal(read_image(tmp_path / "keyed.png", 16, 3), read_image(tmp_path / "rgba.png", 16, 3))


def test_a_jpeg_with_corrupt_exif_trains_without_pillows_warning_at_each_read(tmp_path):
    from fluxflow.data.transforms import read_image
    exif = Image.Exif()
    exif[0x010E] = "a long description " * 10  # its data lies past the IFD: cut below, as a broken camera writes it
    Image.new("RGB", (16, 16), (200, 0, 0)).save(tmp_path / "broken_exif.jpg", quality=95,
                                                 exif=exif.tobytes()[:-150])
    with warnings.catch_warnings(record=True) as pillow_said:
        warnings.simplefilter("always")
        with Image.open(tmp_path / "broken_exif.jpg") as img:
            img.getexif()
    assert pillow_said  # the file is broken as the user's was: Pillow warns about its tags
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        images = [read_image(tmp_path / "broken_exif.jpg", 8, 3) for _ in range(3)]
    assert not said, [str(w.message) for w in said]  # was 2 raw lines at every read (12 for 10 images in 2 batches)
    assert all(image[0].mean() > 0.4 and image[1].mean() < -0.8 for image in images)  # red: it trains as it is


def test_a_16_bit_rgb_png_s_colour_key_whitens_no_opaque_pixel():
    """Pillow reads a 16-bit RGB PNG's pixels as 8 bits (the high byte) and keeps its tRNS key in 16: applied, a key of
    black whitened the opaque near-black pixels (100/65535 reads as 0) too. The key is not applied to such a file."""
    import io
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    pixels = np.array([[[0, 0, 0], [100, 100, 100]]], dtype=">u2")  # keyed black, then an opaque near-black
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 1, 16, 2, 0, 0, 0))
           + chunk(b"tRNS", struct.pack(">HHH", 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\x00" + pixels.tobytes()))
           + chunk(b"IEND", b""))
    image = read_image(io.BytesIO(png), 2, 3)
    assert torch.equal(image, torch.full_like(image, -1.0))  # both black: neither turned white
