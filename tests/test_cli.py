"""The command-line helpers of eval.py and restore.py: path quoting for Hydra, mandatory keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from darkraw.cli import quote_path_arguments, quote_value, require_set
from darkraw.errors import ConfigError

RUN_CKPT = ("outputs/quickstart/runs/trainer.max_steps=80,trainer.val_check_interval=20/"
            "checkpoints/last.ckpt")
KEYS = ("ckpt", "input", "output")


def parsed_value(argument: str) -> object:
    """What Hydra itself makes of one ``key=value`` command-line argument."""
    return OverridesParser.create().parse_override(argument).value()


@pytest.mark.parametrize("path", [
    RUN_CKPT,
    "/photos/it's here/a b.dng",         # a single quote and a space
    "C:\\runs\\x=1\\",                    # backslashes, one of them right before the closing quote
    "odd\\'mix\\\\'of\\quotes",            # backslashes right before quotes
    'say "hi"/[1,2]/{a:b}/(c)',           # double quotes and Hydra's other special characters
])
def test_quoted_values_parse_back_to_the_exact_path(path: str) -> None:
    quoted = quote_value(path)
    assert quoted.startswith("'") and quoted.endswith("'")
    assert parsed_value(f"ckpt={quoted}") == path


def test_unquoted_run_path_fails_in_hydra_but_works_once_quoted() -> None:
    """The user's report: without quoting Hydra's grammar rejects the '=' inside the path."""
    with pytest.raises(Exception, match="mismatched input '='"):
        parsed_value(f"ckpt={RUN_CKPT}")
    [argument] = quote_path_arguments([f"ckpt={RUN_CKPT}"], KEYS)
    assert parsed_value(argument) == RUN_CKPT


def test_quote_path_arguments_quotes_only_path_keys_and_keeps_the_rest() -> None:
    argv = [
        "ckpt=/runs/a=1,b=2/last.ckpt",
        "input=/photos/it's me",
        "+output=/out dir",
        "'m=[1,5]'",                      # not a path key (the shell removed no quotes here)
        "m=[1,5]",
        "amplification=100",
        "tile_size=32",
        "--cfg", "job",
    ]
    assert quote_path_arguments(argv, KEYS) == [
        "ckpt='/runs/a=1,b=2/last.ckpt'",
        "input='/photos/it\\'s me'",
        "+output='/out dir'",
        "'m=[1,5]'",
        "m=[1,5]",
        "amplification=100",
        "tile_size=32",
        "--cfg", "job",
    ]


@pytest.mark.parametrize("argument", [
    "ckpt='/runs/a=1,b=2/last.ckpt'",     # already quoted by the user: unchanged
    'ckpt="/runs/a=1,b=2/last.ckpt"',
    "output=null",                        # null means "not set", not a folder named null
    "output=NULL",
    "output=",
    "ckpts=/x=y",                         # a key that merely starts like a path key
])
def test_already_quoted_null_empty_and_other_keys_are_left_alone(argument: str) -> None:
    assert quote_path_arguments([argument], KEYS) == [argument]


@pytest.mark.parametrize("flag", ["-m", "--multirun"])
def test_multirun_command_lines_are_left_alone(flag: str) -> None:
    """Under -m a ',' separates sweep values, so quoting would turn a sweep into one path."""
    argv = [flag, "ckpt=a.ckpt,b.ckpt"]
    assert quote_path_arguments(argv, KEYS) == argv


def test_require_set_names_the_key_and_how_to_pass_it() -> None:
    cfg = OmegaConf.create({"ckpt": "???", "input": "photos"})
    with pytest.raises(ConfigError, match=r"^ckpt is not set: .* e\.g\. ckpt=outputs/"):
        require_set(cfg, {"input": "input=photos/", "ckpt": "ckpt=outputs/<run>/last.ckpt"})
    require_set(OmegaConf.create({"ckpt": "x"}), {"ckpt": "ckpt=..."})


@pytest.mark.parametrize(("config", "overrides", "message"), [
    ("train", ["model.rbd=after"], "model.rbd is not a setting: did you mean model.rdb?"),
    ("train", ["callbacks.nan_gaurd.max_consecutive=3"],
     "callbacks.nan_gaurd is not a setting: did you mean callbacks.nan_guard?"),
    ("train", ["experiment=papper"], "experiment=papper is not an option of the experiment "
                                     "group: choose one of ['ablation_baseline', 'paper', "
                                     "'quickstart'] (did you mean experiment=paper?)"),
    ("train", ["+sweep=rbd"], "+sweep=rbd is not an option of the sweep group: choose one of "
                              "['ablation', 'lr_decay', 'optuna', 'rdb', 'rdb_seeds'] (did you "
                              "mean +sweep=rdb?)"),
    ("train", ["seed=1", "model.rdb=[a"], "cannot read the override 'model.rdb=[a': no viable "
                                          "alternative at input '[a'"),
    ("eval", ["ckpt=/x", "splitt=val"], "splitt is not a setting: did you mean split?"),
    ("restore", ["tile_siz=3"], "tile_siz is not a setting: did you mean tile_size?"),
    # A comma list without -m: Hydra's five lines ended in HYDRA_FULL_ERROR.
    ("restore", ["ckpt=a", "m=1,5"], "m=1,5 is a comma list, which Hydra takes for a sweep over "
                                     "its values: write m=[1,5] for a list value, or add -m"),
    ("train", ["model.rdb=after,before"], "model.rdb=after,before is a comma list"),
    ("eval", ["ckpt=/x", "split=val,test"], "split=val,test is a comma list"),
    # A group set to null: Hydra's ValueError traceback.
    ("train", ["callbacks=null"], "callbacks=null: callbacks is a config group, set to one of "
                                  "its options ['default', "),
    ("train", ["logger=null"], "logger=null: logger is a config group, set to one of its options "
                               "['csv', 'default', 'none', 'wandb'], not to null (use logger=none "
                               "to turn it off); to leave out one of its entries use "
                               "logger.<name>=null, one of ['wandb', 'csv']"),
    ("train", ["data=null"], "data=null: data is a config group, set to one of its options "
                             "['sid', 'synthetic'], not to null"),
    # ... after any other mistake, which -m would not mend.
    ("train", ["seed=1,2", "model.rbd=after"], "model.rbd is not a setting: did you mean "
                                               "model.rdb?"),
])
def test_a_wrong_override_is_named_in_one_line(config: str, overrides: list[str],
                                               message: str) -> None:
    """Hydra's block (with its config search path, and a '+key=' advice for a typo) becomes
    the override, the closest key or option, and what to choose from."""
    from darkraw.cli import composition_error

    found = composition_error(config, overrides)
    assert found is not None and found.startswith(message), found
    assert "\n" not in found


@pytest.mark.parametrize("overrides", [
    [], ["model.rdb=after", "+sweep=rdb"],
    ["+sweep=rdb", "seed=1,2"],  # the sweep config asks for a multirun: -m is optional there
    ["-m", "model.rdb=after,before"], ["--cfg", "job"], ["model.rbd=after", "--help"],
    ["hydra.job.chdir=abc"],  # a wrong type for one of Hydra's own typed settings: Hydra's
])
def test_good_overrides_flags_and_sweeps_are_left_to_hydra(overrides: list[str]) -> None:
    from darkraw.cli import composition_error

    assert composition_error("train", overrides) is None


def test_a_key_given_twice_is_warned_about_with_the_value_that_counts() -> None:
    from darkraw.cli import repeated_overrides

    assert repeated_overrides(["data.batch_size=16", "model.rdb=after", "+data.batch_size=8",
                               "-m", "--cfg", "job", "seed=1,2"]) == [
        "data.batch_size is given 2 times (data.batch_size=16, then +data.batch_size=8): only "
        "the last counts"]
    assert repeated_overrides(["data.batch_size=16", "data.patch_size=256", "-m"]) == []


def test_a_full_disk_anywhere_is_one_line_naming_the_file(capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    """/dev/full fails every write with ENOSPC, as a full disk does."""
    from darkraw.cli import run_reporting_user_errors

    def write_an_image() -> None:
        with open("/dev/full", "wb") as handle:
            handle.write(b"PNG")

    with pytest.raises(SystemExit) as caught:
        run_reporting_user_errors(write_an_image)
    assert caught.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("darkraw: error: the disk filled up while writing a file (no space "
                          "left on the device): free some space or point the output")
    assert err.count("\n") == 1 and "run the same command" in err

    def other_error() -> None:
        Path("/no/such/folder/file").read_bytes()

    with pytest.raises(FileNotFoundError):  # not every OSError is the user's disk
        run_reporting_user_errors(other_error)


def test_a_full_disk_names_the_free_space_of_the_runs_folders(tmp_path) -> None:
    from darkraw.cli import disk_full_error

    try:
        with open("/dev/full", "wb") as handle:
            handle.write(b"metrics")
    except OSError as error:
        message = str(disk_full_error(error, [tmp_path]))
    assert f"({tmp_path}: " in message and " GB free)" in message


def test_an_error_raised_in_a_loader_worker_is_reported_by_its_own_message() -> None:
    """torch re-raises a worker's exception as the same type around "Caught ... in DataLoader
    worker process 0" and the worker's traceback: that whole block was the "one line"."""
    from torch._utils import ExceptionWrapper

    from darkraw.cli import user_message
    from datamodules.cache import CacheError

    try:
        raise CacheError("cache entry x.npy (of a.dng) is damaged (ValueError: bad header)")
    except CacheError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(CacheError) as caught:
        wrapped.reraise()
    assert str(caught.value).startswith("Caught CacheError in DataLoader worker process 0")
    assert user_message(caught.value) == (
        "cache entry x.npy (of a.dng) is damaged (ValueError: bad header)")
    assert user_message(CacheError("plain")) == "plain"
