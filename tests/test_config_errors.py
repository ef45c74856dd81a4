"""Start-up checks that turn a wrong setting into one line naming the key, in-process and fast.

tests/test_train.py runs the same checks through the real train.py (exit status, no traceback,
no data touched); here each check's rules are pinned case by case.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

import darkraw.resolvers  # noqa: F401  (the resolvers the composed configs use)
from darkraw.distributed import check_multi_node_launch
from darkraw.errors import ConfigError, DataError
from darkraw.instantiate import check_argument_types, parameter_types, scalar_kinds
from darkraw.resume import check_resume_checkpoint
from darkraw.training import (
    CALLBACKS_COMPLETE,
    build_loggers,
    build_plugins,
    check_batch_divides,
    check_callbacks_group,
    check_patch_size,
    check_train_metrics_interval,
    check_trainer_config,
    check_types,
    device_count,
    instantiate_named,
)
from datamodules.sid_datamodule import SIDDataModule, SyntheticSIDDataModule
from datamodules.sid_lists import SIDLayoutError, parse_list_file
from lightning_modules.config import LossConfig, OptimizerConfig, SchedulerConfig, build
from tests.helpers import REPO, run_entry_point


@pytest.fixture(scope="module")
def composer() -> Iterator[Any]:
    """``compose("train", overrides)`` on the real conf/ folder."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        yield lambda *overrides: compose("train", overrides=[*overrides, "paths.root_dir=/x"])


# ----------------------------------------------------------------------------- value types

#: The data settings whose type the check knows, from the DataModule's own signature.
TYPED_DATA_KEYS = sorted(name for name, (kinds, _) in parameter_types(SIDDataModule).items()
                         if kinds is not None)


def test_the_typed_data_keys_come_from_the_signature() -> None:
    assert {"batch_size", "patch_size", "num_workers", "m", "max_ratio", "fraction", "seed",
            "patches_per_epoch", "val_max_images", "hflip_prob", "vflip_prob",
            "transpose_prob"} <= set(TYPED_DATA_KEYS)
    # The synthetic module passes **kwargs on: it takes its parent's parameters and types.
    assert parameter_types(SyntheticSIDDataModule)["batch_size"] == (frozenset({int}), 8)
    assert parameter_types(SyntheticSIDDataModule)["synthetic"][0] is None  # a mapping


@pytest.mark.parametrize("data", ["synthetic", "sid"])
@pytest.mark.parametrize("key", TYPED_DATA_KEYS)
def test_a_string_in_any_typed_data_key_is_named(composer: Any, data: str, key: str) -> None:
    cfg = composer(f"data={data}", f"data.{key}=abc")
    with pytest.raises(ConfigError, match=rf"^data\.{key}='abc' must be .*, not a string"):
        check_argument_types(cfg.data)


@pytest.mark.parametrize(("override", "message"), [
    ("data.batch_size=2.5", "data.batch_size=2.5 must be an integer (e.g. data.batch_size=8)"),
    ("data.hflip_prob=true", "data.hflip_prob=true must be a number, not true or false"),
    ("data.pin_memory=1", "data.pin_memory=1 must be true or false (e.g. data.pin_memory=true)"),
    ("data.val_max_images=[1]", "data.val_max_images=[1] must be an integer or null, not a list"),
    ("trainer.log_every_n_steps=abc", "trainer.log_every_n_steps='abc' must be an integer or "
                                      "null, not a string"),
])
def test_wrong_types_say_what_is_allowed(composer: Any, override: str, message: str) -> None:
    cfg = composer(override)
    group = cfg[override.split(".")[0]]
    with pytest.raises(ConfigError) as caught:
        check_argument_types(group)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(("override", "message"), [
    ("+data.batchsize=2", "data.batchsize is not a setting of SyntheticSIDDataModule: did you "
                          "mean data.batch_size?"),
    ("+trainer.max_step=3", "trainer.max_step is not a setting of Trainer: did you mean "
                            "trainer.max_steps?"),
    ("+callbacks.nan_guard.max_consecutiv=1", "callbacks.nan_guard.max_consecutiv is not a "
                                              "setting of NanGuard: did you mean "
                                              "callbacks.nan_guard.max_consecutive?"),
])
def test_a_key_the_target_does_not_take_is_named(composer: Any, override: str,
                                                 message: str) -> None:
    """The ``+key=`` Hydra suggests for a typo: one line with the closest name, not Hydra's
    "Error in call to target ... unexpected keyword argument" block."""
    cfg = composer(override)
    node = OmegaConf.select(cfg, override.lstrip("+").rsplit(".", 1)[0])
    with pytest.raises(ConfigError) as caught:
        check_argument_types(node)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(("override", "message"), [
    ("+model.rbd=after", "model.rbd is not a setting of the model: did you mean model.rdb?"),
    ("+model.compiled=true", "model.compiled is not a setting of the model: did you mean "
                             "model.compile?"),
])
def test_a_misspelt_model_key_is_named(composer: Any, override: str, message: str) -> None:
    """The model group is not an instantiated node: a typo there trained the default variant."""
    with pytest.raises(ConfigError) as caught:
        check_types(composer(override))
    assert str(caught.value).startswith(message)
    check_types(composer("model.rdb=after", "model.compile=true"))  # the real keys pass


def test_the_model_groups_network_keys_reach_the_network(composer: Any) -> None:
    from darkraw.training import build_module

    assert build_module(composer("model.rdb=after")).hparams["net"] == {"rdb": "after"}


@pytest.mark.parametrize(("header", "refused"), [("", True), ("# @package _global_\n", False)])
def test_a_local_config_without_its_package_line_is_refused(composer: Any, tmp_path: Path,
                                                            header: str, refused: bool) -> None:
    """Without the line, conf/local/default.yaml's paths land under ``local.``, unread."""
    from darkraw.training import check_local_config

    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "default.yaml").write_text(
        header + "paths: {sid_root: /data/SID, sid_cache_dir: /data/SID-cache}\n")
    cfg = composer(f"hydra.searchpath=[file://{tmp_path}]")
    if refused:
        with pytest.raises(ConfigError, match=r"^conf/local/default\.yaml must start with the "
                                              r"line '# @package _global_'.*\(paths\)"):
            check_local_config(cfg)
    else:
        check_local_config(cfg)
        assert cfg.paths.sid_root == "/data/SID"


@pytest.mark.parametrize("value", [0, -5])
def test_a_log_interval_below_one_is_named_itself(composer: Any, value: int) -> None:
    """Not blamed on model.train_metrics_every_n_steps (which follows it), nor a ZeroDivision."""
    for extra in ((), ("model.train_metrics_every_n_steps=1",)):
        cfg = composer(f"trainer.log_every_n_steps={value}", *extra)
        with pytest.raises(ConfigError, match=rf"^trainer\.log_every_n_steps={value} must be a "
                                              "positive step count"):
            check_train_metrics_interval(cfg.model, cfg.trainer)


def test_loggers_and_the_checkpoint_writer_are_checked_too(composer: Any, tmp_path: Path) -> None:
    cfg = composer("logger=csv", "+logger.csv.flush_logs_every=10",
                   f"paths.output_dir={tmp_path}")
    with pytest.raises(ConfigError, match=r"^logger\.csv\.flush_logs_every is not a setting of "
                                          "ResumableCSVLogger"):
        build_loggers(cfg, tmp_path, fresh=True)
    cfg = composer("+checkpoint_io.min_free_gb=2", f"paths.output_dir={tmp_path}")
    with pytest.raises(ConfigError, match=r"^checkpoint_io\.min_free_gb is not a setting of "
                                          "AtomicCheckpointIO"):
        build_plugins(cfg)


def test_a_misspelt_synthetic_set_setting_is_named_before_generating(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^data\.synthetic\.num_train_scene is not a setting "
                                          r"of generate_synthetic_sid: did you mean "
                                          r"data\.synthetic\.num_train_scenes\?"):
        SyntheticSIDDataModule(root=str(tmp_path / "set"), cache_dir=str(tmp_path / "cache"),
                               synthetic={"num_train_scene": 3})
    assert not (tmp_path / "set").exists()


def test_train_py_names_a_key_the_target_does_not_take(tmp_path: Path) -> None:
    proc = run_entry_point("train.py", "+data.batchsize=2", f"paths.root_dir={tmp_path}",
                           check=False, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "darkraw: error: data.batchsize is not a setting of SyntheticSIDDataModule: did you "
        "mean data.batch_size?")
    assert not (tmp_path / "data").exists()  # before generating or caching any data


def test_a_disk_short_of_min_free_disk_gb_names_the_setting(tmp_path: Path) -> None:
    proc = run_entry_point("train.py", "min_free_disk_gb=1e9", f"paths.root_dir={tmp_path}",
                           check=False, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("darkraw: error: not enough free disk space for checkpoints, metrics "
                           "and images in "), last
    assert ("(min_free_disk_gb=1000000000.0 asks for that much: lower it if the run needs "
            "less)") in last
    assert not (tmp_path / "data").exists()  # before generating or caching any data


@pytest.mark.parametrize("overrides", [
    (), ("experiment=paper",), ("experiment=ablation_baseline",), ("data=sid",),
    ("trainer=ddp",), ("trainer=gpu",), ("trainer=cpu",),
    ("data.m=5", "data.fraction=1", "data.patches_per_epoch=100", "data.cache_workers=null"),
])
def test_every_shipped_config_passes(composer: Any, overrides: tuple[str, ...]) -> None:
    cfg = composer(*overrides)
    for node in (cfg.data, cfg.trainer, cfg.checkpoint_io, *cfg.callbacks.values()):
        check_argument_types(node)


def test_only_plain_scalar_annotations_are_checked() -> None:
    assert scalar_kinds(int | None) == frozenset({int, type(None)})
    assert scalar_kinds(float) == frozenset({float})
    assert scalar_kinds(int | str) is None  # a string is allowed: not this check's business
    assert scalar_kinds(Literal["step", "epoch"]) is None
    assert scalar_kinds(list[int]) is None


@pytest.mark.parametrize(("cls", "group", "values", "message"), [
    (OptimizerConfig, "optimizer", {"lr": "abc"},
     "optimizer.lr='abc' must be a number, not a string (e.g. optimizer.lr=0.0001)"),
    (OptimizerConfig, "optimizer", {"betas": 0.9},
     "optimizer.betas=0.9 must be a list of two numbers (e.g. optimizer.betas=[0.9, 0.999])"),
    (OptimizerConfig, "optimizer", {"betas": [0.9, "x"]},
     "optimizer.betas=[0.9, 'x'] must be a list of two numbers"),
    (SchedulerConfig, "scheduler", {"milestones": ["abc"]},
     "scheduler.milestones=['abc'] must be a list of whole numbers"),
    (SchedulerConfig, "scheduler", {"milestones": [2.5]},
     "scheduler.milestones=[2.5] must be a list of whole numbers"),
    (SchedulerConfig, "scheduler", {"gamma": True},
     "scheduler.gamma=true must be a number, not true or false"),
    (LossConfig, "loss", {"win_size": 11.5}, "loss.win_size=11.5 must be an integer"),
])
def test_model_groups_name_wrong_types(cls: type, group: str, values: dict[str, Any],
                                       message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build(cls, values, group)
    assert str(caught.value).startswith(message)


def test_model_groups_keep_accepting_what_hydra_writes() -> None:
    # `scheduler.milestones=[5e5]` is a float to Hydra; `loss.ms_ssim_weight=1` an int.
    assert build(SchedulerConfig, {"milestones": [5e5]}, "scheduler").milestones == [500_000]
    assert build(LossConfig, {"ms_ssim_weight": 1}, "loss").ms_ssim_weight == 1
    assert build(OptimizerConfig, {"betas": [0, 0.5]}, "optimizer").betas == (0.0, 0.5)


# ----------------------------------------------------------------------------- patch size


@pytest.mark.parametrize(("patch", "message"), [
    (200, "data.patch_size=200 must be a multiple of 32"),
    (16, "data.patch_size=16 must be a multiple of 32"),
    (160, "data.patch_size=160 is too small for the loss"),
    (192, None),
    ("abc", None),  # the data group's type check names it
])
def test_the_patch_size_is_checked_as_itself(patch: object, message: str | None) -> None:
    if message is None:
        check_patch_size(patch, 11, 160)
        return
    with pytest.raises(ConfigError, match=f"^{message}"):
        check_patch_size(patch, 11, 160)


# ---------------------------------------------------------------------- devices and batch


@pytest.mark.parametrize(("trainer", "count"), [
    ({"accelerator": "cpu", "devices": 2}, 2),
    ({"accelerator": "cpu", "devices": "auto"}, 1),
    ({"accelerator": "cpu", "devices": -1}, os.cpu_count()),
    ({"accelerator": "cpu", "devices": "3"}, 3),
    ({"accelerator": "gpu", "devices": [0, 1, 3]}, 3),
    ({"accelerator": "gpu", "devices": "0,1"}, 2),
    ({"accelerator": "gpu", "devices": 4}, 4),
    ({"accelerator": "tpu", "devices": "auto"}, None),  # Lightning decides: skip the check
])
def test_devices_are_counted_as_lightning_counts_them(trainer: dict[str, Any],
                                                      count: int | None) -> None:
    assert device_count(OmegaConf.create(trainer)) == count


def test_the_global_batch_must_divide_over_every_device_of_every_node() -> None:
    data = {"batch_size": 6}
    check_batch_divides(data, {"accelerator": "cpu", "devices": 2, "num_nodes": 3})
    with pytest.raises(ConfigError, match=r"^data\.batch_size=6 is the global batch and must "
                                          r"divide evenly over 4 devices; use a multiple of 4$"):
        check_batch_divides(data, {"accelerator": "cpu", "devices": 2, "num_nodes": 2})
    check_batch_divides({"batch_size": "abc"}, {"devices": 2})  # the type check's business


@pytest.mark.parametrize(("launch", "refused"), [
    ({}, True),
    ({"NODE_RANK": "0", "MASTER_ADDR": "node0"}, False),  # by hand, on every node
    ({"SLURM_NTASKS": "2", "SLURM_JOB_NAME": "train"}, False),  # srun
    ({"SLURM_NTASKS": "2", "SLURM_JOB_NAME": "bash"}, True),  # an interactive allocation
    ({"TORCHELASTIC_RUN_ID": "1", "RANK": "0", "GROUP_RANK": "0", "LOCAL_RANK": "0",
      "LOCAL_WORLD_SIZE": "1"}, False),  # torchrun
])
def test_several_nodes_need_something_that_starts_them(monkeypatch: pytest.MonkeyPatch,
                                                       launch: dict[str, str],
                                                       refused: bool) -> None:
    for name in list(os.environ):
        if name.startswith(("SLURM_", "TORCHELASTIC_", "LSB_", "OMPI_", "PMI_")) or name in (
                "NODE_RANK", "GROUP_RANK", "RANK", "LOCAL_RANK", "MASTER_ADDR"):
            monkeypatch.delenv(name)
    for name, value in launch.items():
        monkeypatch.setenv(name, value)
    check_multi_node_launch(1)
    if not refused:
        check_multi_node_launch(2)
        return
    with pytest.raises(ConfigError, match=r"^trainer\.num_nodes=2 needs one process per node "
                                          r"started on 2 machines.*trainer\.num_nodes=1 with "
                                          r"trainer\.devices=N"):
        check_multi_node_launch(2)


# ----------------------------------------------------------------------------- callbacks


def test_one_callback_file_as_the_whole_group_is_refused(composer: Any) -> None:
    with pytest.raises(ConfigError, match=r"^callbacks=lr_monitor replaces all default "
                                          r"callbacks \(.*last_checkpoint.*\): to change one"):
        check_callbacks_group(composer("callbacks=lr_monitor"))
    for fine in ((), ("~callbacks.image_panel",), ("callbacks.lr_monitor=null",)):
        check_callbacks_group(composer(*fine))


def test_the_completeness_marker_is_not_taken_for_a_callback(composer: Any) -> None:
    cfg: DictConfig = composer("callbacks.image_panel=null", "callbacks.lr_monitor=null",
                               "callbacks.progress_bar=null")
    assert cfg.callbacks[CALLBACKS_COMPLETE] is True
    with open_dict(cfg):
        cfg.callbacks.last_checkpoint.dirpath = "/x/checkpoints"
        cfg.callbacks.model_checkpoint.dirpath = "/x/checkpoints"
        cfg.callbacks.image_panel = None
    names = sorted(type(cb).__name__ for cb in instantiate_named(cfg.callbacks))
    assert names == ["BestCheckpoint", "LastCheckpoint", "LearningHealth", "NanGuard",
                     "Throughput"]


@pytest.mark.parametrize(("override", "message"), [
    ("callbacks.image_panel.num_images=0", "callbacks.image_panel.num_images=0 must be >= 1"),
    ("callbacks.image_panel.max_side=8", "callbacks.image_panel.max_side=8 must be >= 16"),
    ("callbacks.throughput.log_every_n_steps=0",
     "callbacks.throughput.log_every_n_steps=0 must be >= 1"),
])
def test_a_callback_value_out_of_range_is_one_line(composer: Any, override: str,
                                                   message: str) -> None:
    """A ConfigError passes through instantiate as itself; a ValueError came out as Hydra's
    "Error in call to target" block."""
    cfg = composer(override, "paths.output_dir=/x/out")  # Hydra's run folder, outside an app
    with pytest.raises(ConfigError) as caught:
        instantiate_named(cfg.callbacks)
    assert str(caught.value).startswith(message)


# ---------------------------------------------------------------------- resume checkpoint


def _checkpoint(path: Path, step: int) -> Path:
    """A torch.save archive like a checkpoint (the format is what matters here)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {"w": torch.randn(64, 64)}}, path)
    return path


def _damage(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def test_a_damaged_last_checkpoint_names_the_intact_ones(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    last, best = _checkpoint(folder / "last.ckpt", 9), _checkpoint(folder / "best-a.ckpt", 6)
    other = _checkpoint(folder / "best-b.ckpt", 3)
    check_resume_checkpoint(last, [last, best, other])  # all intact: nothing to say
    _damage(last)
    _damage(other)
    with pytest.raises(DataError) as caught:
        check_resume_checkpoint(last, [last, best, other])
    message = str(caught.value)
    assert message.startswith(f"the checkpoint to resume from, {last}, is damaged")
    assert "is damaged and cannot be read (" in message and "resume=false" in message
    assert f"cp {best} {last} (intact: best-a.ckpt)" in message
    _damage(best)
    with pytest.raises(DataError, match="no other intact checkpoint is left in"):
        check_resume_checkpoint(last, [last, best, other])


def test_a_damaged_requeue_checkpoint_is_to_be_deleted(tmp_path: Path) -> None:
    last = _checkpoint(tmp_path / "checkpoints" / "last.ckpt", 5)
    requeued = _checkpoint(tmp_path / "hpc_ckpt_2.ckpt", 7)
    _damage(requeued)
    with pytest.raises(DataError, match=rf"delete it \(rm {requeued}\) to resume from the next "
                                        r"newest checkpoint \(last\.ckpt intact\)"):
        check_resume_checkpoint(requeued, [last, requeued])


def test_a_checkpoint_with_other_objects_is_left_to_lightning(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    torch.save({"hyper_parameters": argparse.Namespace(lr=1e-4)}, path)
    check_resume_checkpoint(path)  # readable, not damaged: not this check's to refuse
    check_resume_checkpoint(None)  # a fresh start


# ----------------------------------------------------------------------------- list files


def test_a_list_file_error_names_its_line_once(tmp_path: Path) -> None:
    listing = tmp_path / "Sony_train_list.txt"
    listing.write_text("./Sony/short/00001_00_0.1s.ARW ./Sony/long/00002_00_10s.ARW ISO200 F8\n")
    with pytest.raises(SIDLayoutError) as caught:
        parse_list_file(listing, tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{listing}:1: malformed line './Sony/short/00001_00_0.1s.ARW")
    assert message.count(f"{listing}:1") == 1, message
    assert "short file 00001_00_0.1s.ARW (scene 00001) is paired with 00002_00_10s.ARW" in message


# ----------------------------------------------------------------------------- eval.py


@pytest.mark.slow
def test_eval_names_a_wrong_type_in_the_data_group(tmp_path: Path) -> None:
    """eval.py instantiates the data group through the same checked path as train.py."""
    from lightning_modules.module import RestorationModule
    from tests.test_eval_restore import save_checkpoint

    ckpt = save_checkpoint(RestorationModule(), tmp_path / "random.ckpt")
    proc = run_entry_point("eval.py", f"ckpt={ckpt}", "data.val_max_images=abc",
                           f"paths.root_dir={tmp_path}", check=False, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "darkraw: error: data.val_max_images='abc' must be an integer or null, not a string")
    assert not (tmp_path / "data").exists()  # before generating or caching any data


# --------------------------------------------------------------------------- trainer settings


@pytest.mark.parametrize(("override", "message"), [
    # Lightning's MisconfigurationException, in Hydra's "Error in call to target" block.
    ("trainer.val_check_interval=0.5", "trainer.val_check_interval=0.5 must be a positive whole "
                                       "number of optimiser steps"),
    ("trainer.val_check_interval=0", "trainer.val_check_interval=0 must be a positive whole"),
    ("trainer.devices=0", "trainer.devices=0 is not allowed: give how many devices"),
    # Lightning's ModuleNotFoundError for torch_xla.
    ("trainer.accelerator=tpu", "trainer.accelerator='tpu' is not supported: choose one of "
                                "['auto', 'cpu', 'gpu', 'cuda', 'mps']"),
    # Accepted silently: it validated every optimiser step and doubled the batch.
    ("+trainer.accumulate_grad_batches=2", "trainer.accumulate_grad_batches=2 is not supported: "
                                           "data.batch_size is the batch of one optimiser step"),
])
def test_trainer_settings_lightning_would_refuse_or_misread_are_named(
        composer: Any, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_trainer_config(composer(override).trainer)


@pytest.mark.parametrize(("overrides", "warning"), [
    (("trainer.max_steps=12", "trainer.val_check_interval=1000"),
     "this run never validates (trainer.val_check_interval=1000 > trainer.max_steps=12)"),
    (("trainer.limit_val_batches=0",), "this run never validates (trainer.limit_val_batches=0)"),
    (("trainer.max_steps=25", "trainer.val_check_interval=10"),
     "the last validation is at step 20, 5 steps before the end"),
    (("trainer.max_steps=20", "trainer.val_check_interval=10"), None),
])
def test_a_run_that_never_validates_or_ends_between_validations_is_warned_about(
        composer: Any, caplog: pytest.LogCaptureFixture, overrides: tuple[str, ...],
        warning: str | None) -> None:
    """Such a run finished with exit status 0 and no validation at all: nothing could flag it."""
    with caplog.at_level(logging.WARNING, logger="darkraw"):
        check_trainer_config(composer(*overrides).trainer)
    messages = [record.getMessage() for record in caplog.records]
    if warning is None:
        assert messages == []
    else:
        assert any(message.startswith(warning) for message in messages), messages


def test_no_callbacks_at_all_is_warned_about(composer: Any,
                                             caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="darkraw"):
        check_callbacks_group(composer("~callbacks"))
    assert any("no callbacks at all (~callbacks): no last.ckpt" in record.getMessage()
               for record in caplog.records)
