"""Restore dark raw files with a trained network: any raw rawpy reads, any size.

    python restore.py ckpt=outputs/paper/runs/default/checkpoints/last.ckpt \
        input=photos/ output=restored/ 'm=[1,5,8]'

Paths need no quotes, even with ``=`` or ``,`` in them (as run folders have). Writes only the
restored images into ``output``. stdout lists each image as soon as it is written; progress bars,
warnings and errors go to stderr. In a folder, a file that cannot be restored is reported and
skipped, and the run ends with exit status 1 and one line listing the failures.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from darkraw.cli import (
    exit_on_composition_error,
    quote_path_arguments_in_sys_argv,
    require_set,
    run_reporting_user_errors,
)
from darkraw.errors import ConfigError, DataError

AUTOCAST = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PATH_KEYS = ("ckpt", "input", "output")
REQUIRED = {
    "ckpt": "ckpt=outputs/<experiment>/runs/<run>/checkpoints/best-....ckpt (or last.ckpt)",
    "input": "input=photos/ (a raw file or a folder of them)",
}

log = logging.getLogger(__name__)


def m_given_on_command_line() -> bool:
    """Whether the user set ``m``: only then is "m is ignored" worth saying."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    return any(o.partition("=")[0].lstrip("+") == "m" for o in HydraConfig.get().overrides.task)


def run(cfg: DictConfig) -> list[tuple[Path, float]]:
    """Check every setting, the input, checkpoint and output folder, then restore file by file.

    Settings, the checkpoint and the output folder fail before any network runs; a bad file in a
    folder only after the others are restored (a single input file fails with its own error).
    """
    from darkraw.restoration import (
        TRAINED_M,
        check_amplification,
        check_image_format,
        check_m_values,
        check_orientation,
        check_tiling,
        tiling_warning,
    )

    # Every setting is checked before any file is read or the progress bar starts.
    require_set(cfg, REQUIRED)
    for key in PATH_KEYS:
        if cfg[key] is None or not str(cfg[key]).strip():
            # Path("") is the current folder: input= would restore whatever lies there.
            example = REQUIRED.get(key, "output=restored/ (a folder for the images)")
            raise ConfigError(f"{key}= is empty: give {example}")
    precision = str(cfg.precision)
    if precision not in AUTOCAST:
        raise ConfigError(f"precision={precision!r} is not allowed: choose one of {list(AUTOCAST)}")
    # m=trained is resolved once the checkpoint is read; numbers are checked here.
    m_from_checkpoint = cfg.m == TRAINED_M
    m_values = [] if m_from_checkpoint else check_m_values(
        list(cfg.m) if OmegaConf.is_list(cfg.m) else [cfg.m])
    amplification = check_amplification(cfg.amplification)
    image_format = check_image_format(cfg.format)
    check_tiling(cfg.tile_size, cfg.tile_overlap)
    orientation = check_orientation(cfg.orientation)
    seams = tiling_warning(cfg.tile_size, cfg.tile_overlap)
    if seams:
        log.warning("darkraw: warning: %s", seams)
    if not isinstance(amplification, str) and m_given_on_command_line() and m_values:
        log.warning("darkraw: warning: m=%s is ignored with a fixed amplification=%g (m only "
                    "tunes amplification=estimated); writing one image per file", m_values,
                    amplification)

    from darkraw.checkpoints import (
        load_inference_network,
        pick_device,
        read_darkraw_checkpoint,
    )
    from darkraw.evaluation import checkpoint_record
    from darkraw.restoration import (
        ConsoleReporter,
        format_number,
        list_raw_files,
        listed_names,
        output_stems,
        prepare_output_dir,
        restore_all,
        trained_m,
    )
    from datamodules.amplification import DEFAULT_M

    device = pick_device(cfg.device)
    listing = list_raw_files(cfg.input)
    files = listing.files
    skipped = listing.skipped_message()
    if skipped:
        log.warning("darkraw: warning: input=%s: %s", cfg.input, skipped)
    checkpoint = read_darkraw_checkpoint(cfg.ckpt)  # read once: the network and its settings
    if isinstance(amplification, str):
        trained_data = checkpoint_record(checkpoint).trained_data
        m_trained, source = trained_m(trained_data)
        # Said only for a knob the checkpoint records, and one other than the paper's default.
        recorded = trained_data.get("amplification") == "estimated"
        if m_from_checkpoint:
            m_values = [m_trained]
            if m_trained != DEFAULT_M:
                log.info("darkraw: m=%g (m=trained: %s)", m_trained, source)
        elif recorded and m_trained not in m_values:
            log.info("darkraw: note: m=[%s] gives other brightness than the network was trained "
                     "at: m=%g (%s); m=trained uses it",
                     ", ".join(f"{m:g}" for m in m_values), m_trained, source)
    # Files sharing a stem get the extension in their images' names, or the run is refused here
    # when even that collides: before the network is loaded, not after the first images.
    stems = output_stems(files)
    renamed = [path for path in files if stems[path] != path.stem]
    if renamed:
        label = (f"m{format_number(m_values[0])}" if isinstance(amplification, str)
                 else f"x{format_number(amplification)}")
        log.warning("darkraw: warning: %d files share their name with another file (%s): their "
                    "images carry the extension too, e.g. %s_%s.%s", len(renamed),
                    listed_names(renamed), stems[renamed[0]], label, image_format)
    # The fast inference form: folded weight norm, channels-last (1.6x on a CPU, BENCHMARKS.md).
    net = load_inference_network(cfg.ckpt, device, checkpoint)
    del checkpoint
    output = prepare_output_dir(cfg.output)
    reporter = ConsoleReporter(len(files))
    try:
        with reporter:
            report = restore_all(
                net, files, output, reporter=reporter,
                # A single file's failure is the run's failure: its own error line, not a summary.
                skip_failures=Path(cfg.input).is_dir(),
                m_values=m_values, amplification=amplification, image_format=image_format,
                tile_size=cfg.tile_size, tile_overlap=cfg.tile_overlap, device=device,
                autocast_dtype=AUTOCAST[precision], orientation=orientation,
            )
    except KeyboardInterrupt:
        # Each image is renamed into place once complete: what is listed above is whole.
        print(f"\ndarkraw: interrupted (Ctrl-C): {reporter.images_written} image(s) written into "
              f"{output} (listed above), each complete; the file being restored has none",
              file=sys.stderr)
        raise SystemExit(130) from None
    if report.failed:
        raise DataError(report.failure_message())
    print(f"darkraw: restored {len(files)} file(s) into {output}", file=sys.stderr)
    return report.written


@hydra.main(version_base="1.3", config_path="conf", config_name="restore")
def main(cfg: DictConfig) -> None:
    run_reporting_user_errors(run, cfg)


if __name__ == "__main__":
    quote_path_arguments_in_sys_argv(PATH_KEYS)
    exit_on_composition_error("restore", sys.argv[1:])
    main()
