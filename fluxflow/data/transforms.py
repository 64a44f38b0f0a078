"""From a decoded PIL image to the model's input: `img_size` square, `channels` channels, float in [-1, 1].

What a folder of real photos holds, and what becomes of it:
- a JPEG's EXIF orientation (phone photos) is applied, so the image is trained upright, as every viewer shows it;
- 16-bit grayscale (PNG/TIFF, Pillow mode `I;16` or `I`) is scaled to 8 bits (65535 -> 255), not clipped: PIL's own
  conversion clips, which made every such image white. `I` is read as 16-bit data too (Pillow 10 opened 16-bit PNGs
  so), values beyond 0..65535 clipped. 16-bit RGB(A) PNGs PIL already opens as 8-bit RGB(A);
- a 32-bit float image (`F`, TIFF) has no range to scale from: it is refused (ValueError), so the dataset skips and
  counts it instead of training on a black square;
- palette, grey+alpha, RGBA, CMYK and bilevel images are converted, transparent pixels becoming white; so are the
  pixels of a colour key (a PNG's tRNS chunk on an RGB or grayscale image, as optipng/oxipng write them; 8 or 16
  bits for grayscale, 8 for RGB: Pillow reads a 16-bit RGB PNG's pixels as 8 bits, where its key cannot be applied),
  which kept the colour they hid;
- a file whose EXIF (or TIFF) tags are broken is read without Pillow's warnings about the tags it skipped (two raw
  lines per image, each time it was decoded: the warnings filter set for each read reset Python's once-per-place
  record); its pixels are read as any other's;
- an image of more than Pillow's limit (`Image.MAX_IMAGE_PIXELS`, 89.5 M pixels) is read without its warning (two raw
  lines per image, per epoch, for a user's own large scans); beyond twice the limit Pillow refuses it as a possible
  decompression bomb, and the dataset skips and counts it as unreadable, naming why.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from PIL import Image, ImageOps

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
# What an image file is called (lower case, without the dot), for both file-backed types: a folder's image files its
# captions file does not list, a webdataset sample's image (the first of these its files have). GIF: its first frame.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff", "gif", "pgm")


def read_image(source, img_size: int, channels: int) -> torch.Tensor:
    """The image in `source` (a path or a binary file), fit to `img_size` and converted: the one path every
    file-backed dataset uses. Raises whatever PIL raises for a corrupt file or one twice Pillow's size limit (callers
    skip and count it); Pillow's warnings for a large image and for broken metadata tags are not shown."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        # EXIF/TIFF tags skipped ("Possibly corrupt EXIF data", "Tag data larger than file", ...): the image trains.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")
        warnings.filterwarnings("ignore", "(possibly )?corrupt exif", UserWarning)  # the MakerNote's, in PIL.Image
        with Image.open(source) as img:
            if img.mode in ("RGB", "RGBA") and any(str(tile.args).endswith(";16B") for tile in img.tile):
                # A 16-bit RGB PNG's colour key: Pillow reads its pixels as 8 bits (the high byte) but keeps the key
                # in 16, so the key would white out every pixel whose high byte matches (opaque near-black ones for
                # a key of black): not applied, as before it was
                img.info.pop("transparency", None)
            if img.format == "JPEG":
                # JPEG can decode at 1/2, 1/4, 1/8 scale for free: never decode more pixels than the crop needs.
                img.draft("RGB" if channels != 1 else "L", (img_size, img_size))
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # a phone photo stored sideways, with its orientation in EXIF
            img = convert_channels(img, channels)
            if img.size != (img_size, img_size):  # the shorter side scaled to `img_size` (antialiased), centre cut
                img = ImageOps.fit(img, (img_size, img_size), method=Image.Resampling.BICUBIC, centering=(0.5, 0.5))
            return to_tensor(img, channels)


def pil_mode(channels: int) -> str:
    try:
        return _MODES[channels]
    except KeyError:
        raise ValueError(f"channels must be one of {sorted(_MODES)}, got {channels}") from None


# Decoding changed what some files become (2: EXIF orientation, 16-bit scaling; 3: a colour key's pixels white): part
# of a folder's fingerprint, so a latent cache built by the older decoding is not read (fluxflow/data/folder.py).
DECODING_VERSION = 3
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_eight_bits(img: Image.Image) -> Image.Image:
    """A 16-bit grayscale image as 8-bit `L`, scaled (PIL's `convert` clips everything above 255 to white); a float
    image is refused: its range is unknown."""
    if img.mode == "F":
        raise ValueError("32-bit float image: no known range to convert from; save it as 8- or 16-bit")
    if img.mode not in SIXTEEN_BIT_MODES:
        return img
    wide = np.asarray(img).astype(np.int64)  # I;16 reads as uint16, I as int32
    grey = Image.fromarray(((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8))
    if "transparency" not in img.info:
        return grey
    # A 16-bit colour key is lost by the scaling (another tone can scale to the keyed one's): made an alpha first.
    alpha = np.where(wide == img.info["transparency"], 0, 255).astype(np.uint8)
    return Image.merge("LA", (grey, Image.fromarray(alpha)))


def convert_channels(img: Image.Image, channels: int) -> Image.Image:
    """Convert to the mode for `channels`. Transparent pixels become white, not whatever colour they hid; 16-bit
    grayscale is scaled to 8 bits."""
    mode = pil_mode(channels)
    img = to_eight_bits(img)
    # `transparency`: a palette's transparent entry, or the colour key of an RGB or grayscale PNG (its tRNS chunk):
    # an image already of the mode asked for may have one too (it kept the colour the key hid).
    if mode != "RGBA" and (img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info):
        flat = Image.new("RGBA", img.size, (255, 255, 255, 255))
        flat.alpha_composite(img.convert("RGBA"))
        img = flat
    return img if img.mode == mode else img.convert(mode)


def to_tensor(img: Image.Image, channels: int) -> torch.Tensor:
    """[C, H, W] float32 in [-1, 1]."""
    img = convert_channels(img, channels)
    arr = np.array(img, dtype=np.uint8)  # a writable copy, so torch can share it without another one
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
