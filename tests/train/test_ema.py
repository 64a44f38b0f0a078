"""EMA: lerp arithmetic, buffers copied, state round trip."""
import pytest
import torch

from fluxflow.train.ema import EMA


def tiny():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))


def test_decay_warms_up_from_the_first_updates():
    model = tiny()
    ema = EMA(model, decay=0.999)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.copy_(start + 1.0)
    ema.update(model)  # d = min(0.999, 1/10) = 0.1: the shadow moves 90 % of the way at once
    torch.testing.assert_close(ema.shadow[0].weight, 0.1 * start + 0.9 * (start + 1.0))
    assert [EMA(model, 0.999).current_decay()] == [0.1]
    ema.updates = 10_000
    assert ema.current_decay() == 0.999


def test_update_is_decay_weighted_average_by_hand():
    model = tiny()
    ema = EMA(model, decay=0.9)
    ema.updates = 1_000  # past the warm-up: d = decay
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.copy_(start + 1.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow[0].weight, 0.9 * start + 0.1 * (start + 1.0))
    ema.update(model)  # 0.9·(start + 0.1) + 0.1·(start + 1) = start + 0.19
    torch.testing.assert_close(ema.shadow[0].weight, start + 0.19)
    assert not any(p.requires_grad for p in ema.shadow.parameters()) and not ema.shadow.training


def test_buffers_are_copied_not_averaged():
    model = tiny()
    ema = EMA(model, decay=0.99)
    model.train()
    model(torch.randn(8, 3) * 5 + 2)  # moves BatchNorm running stats and counter
    ema.update(model)
    torch.testing.assert_close(ema.shadow[1].running_mean, model[1].running_mean)
    assert ema.shadow[1].num_batches_tracked.item() == 1


def test_shadow_is_independent_of_the_live_module():
    model = tiny()
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model[0].bias.add_(10.0)
    assert not torch.allclose(ema.shadow[0].bias, model[0].bias)


def test_state_dict_round_trip(tmp_path):
    model = tiny()
    ema = EMA(model, decay=0.8)
    with torch.no_grad():
        model[0].weight.mul_(3)
    ema.update(model)
    torch.save(ema.state_dict(), tmp_path / "ema.pt")
    restored = EMA(tiny(), decay=0.1)
    restored.load_state_dict(torch.load(tmp_path / "ema.pt", weights_only=True))
    assert restored.decay == 0.8
    torch.testing.assert_close(restored.shadow[0].weight, ema.shadow[0].weight)


def test_decay_out_of_range_is_rejected():
    with pytest.raises(ValueError):
        EMA(tiny(), decay=1.5)


def test_a_module_without_parameters_updates_its_buffers():
    # A component of buffers only (a frozen statistic, a norm without affine weights) has nothing to average: the
    # update copies its buffers and counts, instead of failing in torch's foreach lerp of an empty list.
    model = torch.nn.BatchNorm1d(2, affine=False)
    ema = EMA(model, decay=0.9)
    model(torch.randn(8, 2) + 3)
    ema.update(model)
    torch.testing.assert_close(ema.shadow.running_mean, model.running_mean)
    assert ema.updates == 1
