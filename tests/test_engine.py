"""Training loop: losses, schedule, checkpoints, exact resume and error handling."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from msdgcn import engine
from msdgcn.engine import (
    BatchTimer,
    NonFiniteLossError,
    Trainer,
    build_loss,
    load_checkpoint,
    load_init_weights,
    save_checkpoint,
)
from msdgcn.profiles import resolve_run
from msdgcn.run import build_run_data, build_run_model


def tiny_config(coco_subset_dir, **overrides):
    """A smoke-profile ADD-GCN run on 6 real training and 4 validation images at 32 px."""
    values = dict(
        image_size=32,
        epochs=2,
        batch_size=3,
        max_train_images=6,
        max_val_images=4,
        model=dict(backbone="resnet18", hidden_dim=8),
    )
    values.update(overrides)
    return resolve_run("smoke", "a", "coco-subset", str(coco_subset_dir), values)


def make_trainer(config, checkpoint_dir):
    torch.manual_seed(config.seed)
    train_set, val_set = build_run_data(config)
    model = build_run_model(config, train_set.class_names)
    return Trainer(config, model, train_set, val_set, checkpoint_dir, progress=False)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_loss_switch_is_numerical_no_op(dtype, tolerance):
    generator = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(32, 80, generator=generator, dtype=dtype)
    targets = (torch.rand(32, 80, generator=generator) < 0.1).to(dtype)
    soft_margin = build_loss("multilabel_soft_margin")(logits, targets)
    bce = build_loss("bce")(logits, targets)
    assert abs(soft_margin.item() - bce.item()) < tolerance


def test_unknown_loss_and_optimizer_rejected(coco_subset_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        build_loss("hinge")
    config = tiny_config(coco_subset_dir, optim=dict(optimizer="rmsprop"))
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        make_trainer(config, tmp_path)


def test_parameter_groups_get_backbone_multiplier(coco_subset_dir, tmp_path):
    config = tiny_config(coco_subset_dir, optim=dict(lr=0.05, backbone_lr_mult=0.1))
    trainer = make_trainer(config, tmp_path)
    rates = {group["name"]: group["lr"] for group in trainer.optimizer.param_groups}
    assert rates == pytest.approx({"backbone": 0.005, "head": 0.05})


def test_scheduler_drops_after_milestone_epochs(coco_subset_dir, tmp_path):
    config = tiny_config(coco_subset_dir, epochs=3, optim=dict(lr=0.1, milestones=(1, 2), gamma=0.1))
    trainer = make_trainer(config, tmp_path)
    trainer.fit()
    head_lrs = [row["lr_head"] for row in trainer.state.history]
    assert head_lrs == pytest.approx([0.1, 0.01, 0.001])


def test_resume_matches_uninterrupted_run(coco_subset_dir, tmp_path):
    config = tiny_config(coco_subset_dir)
    straight = make_trainer(config, tmp_path / "straight")
    straight.fit()

    first = make_trainer(tiny_config(coco_subset_dir, epochs=1), tmp_path / "split")
    first.fit()
    second = make_trainer(config, tmp_path / "split")
    assert second.resume()
    assert second.state.epoch == 1
    second.fit()

    assert second.state.epoch == 2
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name
    assert [row["mAP"] for row in straight.state.history] == [row["mAP"] for row in second.state.history]


def test_resume_rejects_checkpoint_of_other_variant(coco_subset_dir, tmp_path):
    trainer = make_trainer(tiny_config(coco_subset_dir, epochs=1), tmp_path)
    trainer.fit()
    other = tiny_config(coco_subset_dir, epochs=1)
    other.variant = "e"
    with pytest.raises(ValueError, match="variant='a'"):
        make_trainer(other, tmp_path).resume()


def test_checkpoint_holds_everything_for_resume(coco_subset_dir, tmp_path):
    trainer = make_trainer(tiny_config(coco_subset_dir, epochs=1), tmp_path)
    trainer.fit()
    payload = load_checkpoint(tmp_path / "last.pt")
    expected = {"model", "optimizer", "scheduler", "epoch", "best_mAP", "best_epoch", "rng", "config", "class_names", "history"}
    assert expected <= set(payload)
    assert payload["epoch"] == 1
    assert payload["class_names"][0] == "person"
    assert (tmp_path / "best.pt").exists()


def test_failed_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"format": engine.CHECKPOINT_FORMAT, "epoch": 1})

    def broken_save(obj, target):
        with open(target, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(engine.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"format": engine.CHECKPOINT_FORMAT, "epoch": 2})
    assert load_checkpoint(path)["epoch"] == 1
    assert list(tmp_path.iterdir()) == [path]


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoint_needing_code_is_rejected(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"format": engine.CHECKPOINT_FORMAT, "payload": _RunsCode()}, handle)
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(path)
    assert "must never run" not in capsys.readouterr().out


def test_init_weights_strip_module_prefix(coco_subset_dir, tmp_path):
    config = tiny_config(coco_subset_dir)
    source = make_trainer(config, tmp_path / "source").model
    state = {f"module.{k}": v + 1 if v.is_floating_point() else v for k, v in source.state_dict().items()}
    torch.save(state, tmp_path / "ddp.pt")
    target = make_trainer(config, tmp_path / "target").model
    report = load_init_weights(target, tmp_path / "ddp.pt")
    assert report == {"skipped": [], "missing": []}
    for name, tensor in target.state_dict().items():
        assert torch.equal(tensor, state[f"module.{name}"]), name


def test_init_weights_do_not_inherit_epoch(coco_subset_dir, tmp_path):
    trained = make_trainer(tiny_config(coco_subset_dir, epochs=1), tmp_path / "coco")
    trained.fit()
    fine_tune = tiny_config(coco_subset_dir, epochs=1, init_weights=str(tmp_path / "coco" / "last.pt"))
    trainer = make_trainer(fine_tune, tmp_path / "fine")
    assert trainer.state.epoch == 0
    assert trainer.state.best_epoch is None
    assert not trainer.resume()


def test_non_finite_loss_stops_with_step(coco_subset_dir, tmp_path):
    trainer = make_trainer(tiny_config(coco_subset_dir), tmp_path)
    trainer.criterion = lambda logits, targets: (logits * float("nan")).mean()
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 1"):
        trainer.fit()
    assert not (tmp_path / "last.pt").exists()


def test_batch_timer_skips_warmup():
    timer = BatchTimer(torch.device("cpu"), warmup=1)
    assert timer.mean is None
    timer.start()
    for _ in range(3):
        timer.stop()
    assert timer.count == 2
    assert timer.mean is not None and timer.mean >= 0


def test_batch_timer_mean_and_cuda_sync(monkeypatch):
    readings = iter([0.0, 5.0, 5.0, 6.0, 6.0, 9.0, 9.0])  # a 5 s warm-up, then 1 s and 3 s
    synchronized = []
    monkeypatch.setattr(engine.time, "perf_counter", lambda: next(readings))
    monkeypatch.setattr(engine.torch.cuda, "synchronize", lambda device: synchronized.append(device))
    timer = BatchTimer(torch.device("cuda", 0), warmup=1)
    timer.start()
    assert [timer.stop() for _ in range(3)] == [5.0, 1.0, 3.0]
    assert timer.count == 2
    assert timer.mean == 2.0
    # One synchronisation before every clock reading: start, then two per stop.
    assert synchronized == [torch.device("cuda", 0)] * 7


def test_batch_timer_no_sync_on_cpu(monkeypatch):
    monkeypatch.setattr(engine.torch.cuda, "synchronize", lambda device: pytest.fail("synchronized on CPU"))
    timer = BatchTimer(torch.device("cpu"), warmup=0)
    timer.start()
    timer.stop()
    assert timer.count == 1


def test_ignored_targets_leave_loss_out():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.3, 4.0, -2.0]])
    targets = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])
    kept = [(0, 0), (0, 2), (1, 0), (1, 1)]
    expected = sum(
        torch.nn.functional.binary_cross_entropy_with_logits(logits[i, j], targets[i, j]) for i, j in kept
    ) / len(kept)
    for name in ("multilabel_soft_margin", "bce"):
        loss = engine.training_loss(build_loss(name), logits, targets)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    full = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    assert engine.training_loss(build_loss("bce"), logits, full) == build_loss("bce")(logits, full)


def test_missing_image_found_before_training(coco_subset_dir, tmp_path):
    copy = tmp_path / "coco-subset"
    copy.mkdir()
    for name in ("annotations", "train.txt", "val.txt"):
        source = coco_subset_dir / name
        (copy / name).symlink_to(source, target_is_directory=source.is_dir())
    (copy / "images").mkdir()
    # Image 25 is the first id of train.txt, so the 6-image training subset includes it.
    for image in (coco_subset_dir / "images").iterdir():
        if image.name != "000000000025.jpg":
            (copy / "images" / image.name).symlink_to(image)
    config = tiny_config(copy)
    with pytest.raises(FileNotFoundError, match="1 of 6 image files .* missing") as error:
        build_run_data(config)
    assert "000000000025.jpg" in str(error.value)


def test_init_weights_reordered_by_class_name(coco_subset_dir, tmp_path):
    config = tiny_config(coco_subset_dir, model=dict(backbone="resnet18", hidden_dim=8))
    trainer = make_trainer(config, tmp_path / "source")
    source = trainer.model.eval()
    names = list(trainer.train_set.class_names)
    path = tmp_path / "source.pt"
    save_checkpoint(path, {"format": engine.CHECKPOINT_FORMAT, "model": source.state_dict(), "class_names": names})

    reversed_names = names[::-1]
    target = build_run_model(config, reversed_names).eval()
    report = load_init_weights(target, path, reversed_names)
    assert report == {"skipped": [], "missing": []}
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(target(images), source(images).flip(1), atol=1e-5)


def test_init_weights_other_classes_skip_class_layers(coco_subset_dir, tmp_path):
    config = tiny_config(coco_subset_dir)
    trainer = make_trainer(config, tmp_path / "source")
    names = list(trainer.train_set.class_names)
    path = tmp_path / "source.pt"
    save_checkpoint(path, {"format": engine.CHECKPOINT_FORMAT, "model": trainer.model.state_dict(), "class_names": names})
    other = [f"class {i}" for i in range(80)]
    report = load_init_weights(build_run_model(config, other), path, other)
    assert "head.sam.class_conv.weight" in report["skipped"]
    assert "head.dgcn.static_adjacency.weight" in report["missing"]
    assert "backbone.conv1.weight" not in report["missing"]


def test_evaluation_independent_of_batch_size(coco_subset_dir, tmp_path):
    config = tiny_config(coco_subset_dir, max_val_images=8)
    trainer = make_trainer(config, tmp_path)
    trainer.fit()
    scores = {}
    for batch_size in (1, 3, 8):
        loader = engine.make_loader(trainer.val_set, batch_size, train=False, num_workers=0)
        scores[batch_size] = engine.predict(trainer.model, loader, torch.device("cpu"))
    for batch_size in (3, 8):
        assert abs(scores[batch_size] - scores[1]).max() < 1e-6
    metrics = [engine.multilabel_metrics(s, trainer.val_set.targets, trainer.val_set.class_names) for s in scores.values()]
    assert metrics[0]["mAP"] == metrics[1]["mAP"] == metrics[2]["mAP"]


def test_deterministic_option_sets_torch(coco_subset_dir, tmp_path):
    try:
        make_trainer(tiny_config(coco_subset_dir, deterministic=True), tmp_path)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


def test_resume_rejects_fewer_epochs(coco_subset_dir, tmp_path):
    make_trainer(tiny_config(coco_subset_dir, epochs=2), tmp_path).fit()
    with pytest.raises(ValueError, match="already trained 2 epochs, more than the 1 requested"):
        make_trainer(tiny_config(coco_subset_dir, epochs=1), tmp_path).resume()


def test_best_checkpoint_written_before_last(coco_subset_dir, tmp_path, monkeypatch):
    written = []
    original = engine.save_checkpoint
    monkeypatch.setattr(engine, "save_checkpoint", lambda path, payload: (written.append(path.name), original(path, payload)))
    make_trainer(tiny_config(coco_subset_dir, epochs=1), tmp_path).fit()
    assert written == ["best.pt", "last.pt"]


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_reduced_precision_trains_finite(coco_subset_dir, tmp_path, precision, dtype):
    config = tiny_config(coco_subset_dir, epochs=1, precision=precision)
    trainer = make_trainer(config, tmp_path)
    head_inputs = []
    trainer.model.head.register_forward_hook(lambda module, inputs, output: head_inputs.append(inputs[0].dtype))
    trainer.fit()
    assert head_inputs[0] == dtype  # the backbone ran under autocast
    loss = trainer.state.history[0]["train_loss"]
    assert math.isfinite(loss)
    reference = make_trainer(tiny_config(coco_subset_dir, epochs=1), tmp_path / "fp32")
    reference.fit()
    # Same initial weights and images: reduced precision moves the mean loss by well under 5%.
    assert loss == pytest.approx(reference.state.history[0]["train_loss"], rel=0.05)
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    assert load_checkpoint(tmp_path / "last.pt")["config"]["precision"] == precision


def test_fp16_logits_of_80_keep_loss_finite():
    # A layer whose float16 outputs are +80 or -80, each on the wrong side of its target.
    model = torch.nn.Linear(1, 4, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[80.0], [-80.0], [80.0], [-80.0]]))
    images = torch.ones(2, 1)
    targets = torch.tensor([[0.0, 1.0, 0.0, 1.0]] * 2)
    for name in ("multilabel_soft_margin", "bce"):
        logits, loss = engine.forward_loss(model, build_loss(name), images, targets, precision="fp16")
        assert logits.dtype == torch.float32
        assert loss.dtype == torch.float32
        # Every entry costs softplus(80) = 80 + log(1 + exp(-80)), which is 80 in float32.
        assert loss.item() == pytest.approx(80.0, rel=1e-6)
        scaler = torch.amp.GradScaler("cpu")
        scaler.scale(loss).backward()
        assert torch.isfinite(model.weight.grad).all()
        model.weight.grad = None


def test_unknown_precision_rejected(coco_subset_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        make_trainer(tiny_config(coco_subset_dir, precision="fp8"), tmp_path)
