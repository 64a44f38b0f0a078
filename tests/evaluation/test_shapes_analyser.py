"""The classical `shapes` analyser reads colour and shape back from real images, >= 98 % of the time."""
import torch

from fluxflow.data.shapes import STREAM_VALIDATION, ShapesDataset, parse_caption, scene
from fluxflow.evaluation.shapes_analyser import analyse_shape_image, prompt_adherence


def accuracy(n: int, img_size: int, seed: int) -> tuple[dict[str, float], list[dict]]:
    """The analyser's accuracy per attribute on `n` fresh `shapes` images (the validation stream: neither the training
    nor the held-out images of any seed), and the first few misreads."""
    dataset = ShapesDataset(n, seed, img_size, stream=STREAM_VALIDATION)
    items = (dataset[i] for i in range(n))  # the very tensors training sees, and their (canonical) captions
    reads = [(parse_caption(caption), analyse_shape_image(image)) for image, caption in items]
    misreads = [{"index": i, "truth": truth, "read": read} for i, (truth, read) in enumerate(reads) if read != truth]
    return {a: sum(read[a] == truth[a] for truth, read in reads) / n for a in reads[0][0]}, misreads[:10]


def test_accuracy_on_500_fresh_images_at_32px_is_at_least_98_percent():
    report, misreads = accuracy(n=500, img_size=32, seed=31337)
    print(report)
    assert report["color"] >= 0.98, misreads
    assert report["shape"] >= 0.98, misreads
    assert report["background"] >= 0.98 and report["position"] >= 0.98, misreads


def test_accuracy_at_16px_the_test_size():
    report, misreads = accuracy(n=200, img_size=16, seed=5)
    assert report["color"] >= 0.98 and report["shape"] >= 0.95, misreads


def test_a_dataset_image_reads_back_as_its_scene():
    s = scene(8, 2)
    expected = {"color": s.color, "shape": s.shape, "background": s.background, "position": s.position}
    assert analyse_shape_image(ShapesDataset(3, 8, 32)[2][0]) == expected


def test_noisy_images_still_read_correctly():
    ds = ShapesDataset(100, 4, 32, stream=2)
    g = torch.Generator().manual_seed(0)
    hits = 0
    for i in range(len(ds)):
        noisy = (ds[i][0] + 0.2 * torch.randn(3, 32, 32, generator=g)).clamp(-1, 1)
        s = ds.scene(i)
        read = analyse_shape_image(noisy)
        hits += read["color"] == s.color and read["shape"] == s.shape
    assert hits >= 95


def test_a_flat_image_has_no_shape():
    read = analyse_shape_image(torch.full((3, 32, 32), -0.8))
    assert read["shape"] is None and read["color"] is None and read["background"] == "black"


def test_prompt_adherence_scores_matching_and_mismatched_captions():
    ds = ShapesDataset(40, 1, 32)
    images = torch.stack([ds[i][0] for i in range(40)])
    captions = [ds[i][1] for i in range(40)]
    own = prompt_adherence(images, captions)
    assert own == {"n": 40, "color": 1.0, "shape": 1.0, "color_and_shape": 1.0}
    shifted = prompt_adherence(images, captions[1:] + captions[:1])
    assert shifted["n"] == 40 and shifted["color_and_shape"] < 0.3
    assert prompt_adherence(images[:1], ["a photo of a cat"])["n"] == 0
