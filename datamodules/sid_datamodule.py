"""SID Sony as a LightningDataModule: random Bayer-aligned patches from the mmap cache.

Workers never hold whole images: each sample maps its two cache files, copies one crop and
unmaps them, so worker memory stays at a few patches whatever the size of the data set.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from darkraw.errors import ConfigError
from darkraw.log_once import log_once
from datamodules.amplification import DEFAULT_M, MAX_AMPLIFICATION
from datamodules.cache import AMPLIFICATION_MODES, CachedPair, CacheIndex, build_cache, open_cache
from datamodules.patch_stream import PatchStreamSampler, pair_of_sample, sample_rng
from datamodules.raw import CROP_MULTIPLE, normalise, pack_bayer, unpack_bayer
from datamodules.sid_lists import PAIR_SOURCES, Split

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- Bayer-safe geometry


@dataclass(frozen=True)
class PatchPlan:
    """Where to crop (packed coordinates) and how to flip one training patch."""

    y: int
    x: int
    hflip: bool
    vflip: bool
    transpose: bool


def read_window(
    short: np.ndarray, long: np.ndarray, y: int, x: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Copy a packed window and the matching full-resolution target window out of the maps."""
    packed = np.array(short[:, y : y + height, x : x + width])
    target = np.array(long[2 * y : 2 * (y + height), 2 * x : 2 * (x + width)])
    return packed, target


def bayer_augment(
    packed: np.ndarray,
    target: np.ndarray,
    patch: int,
    hflip: bool = False,
    vflip: bool = False,
    transpose: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Flip/transpose a patch without changing its Bayer phase, target transformed identically.

    Flipping an RGGB mosaic turns it into GRBG/GBRG; shifting the flipped window by one pixel
    makes it RGGB again (Liu et al. 2019, "Bayer preserving augmentation"). So a flipped axis
    needs one extra packed row/column in ``packed`` (``patch + 1``), and the shift is exact: each
    output pixel's input and target come from the same scene point. A transpose keeps RGGB as is
    (the two greens swap rows, which the network cannot tell apart).

    ``packed``: (4, ph, pw) with ph, pw in {patch, patch + 1}; ``target``: (2 ph, 2 pw, 3).
    Returns (4, patch, patch) and (2 patch, 2 patch, 3).
    """
    mosaic = unpack_bayer(packed)
    size = 2 * patch
    oy = ox = 0
    if vflip:
        if packed.shape[1] < patch + 1:
            raise ValueError("a vertical flip needs one extra packed row in the window")
        mosaic, target, oy = mosaic[::-1], target[::-1], 1
    if hflip:
        if packed.shape[2] < patch + 1:
            raise ValueError("a horizontal flip needs one extra packed column in the window")
        mosaic, target, ox = mosaic[:, ::-1], target[:, ::-1], 1
    mosaic = mosaic[oy : oy + size, ox : ox + size]
    target = target[oy : oy + size, ox : ox + size]
    if transpose:
        mosaic, target = mosaic.T, target.transpose(1, 0, 2)
    return pack_bayer(np.ascontiguousarray(mosaic)), np.ascontiguousarray(target)


# --------------------------------------------------------------------------- dataset


def _to_tensors(
    packed: np.ndarray, target: np.ndarray, entry_pair: CachedPair, amplification: float
) -> dict[str, Any]:
    """The batch contract: amplified normalised input, [0, 1] target, gain and name."""
    short = entry_pair.short
    data = normalise(packed, short.black_level, short.white_level)
    data *= np.float32(amplification)
    rgb = np.ascontiguousarray(target.transpose(2, 0, 1), dtype=np.float32)
    rgb *= np.float32(1.0 / 65535.0)
    return {
        "input": torch.from_numpy(data),
        "target": torch.from_numpy(rgb),
        "amplification": torch.tensor(amplification, dtype=torch.float32),
        "name": entry_pair.name,
    }


class SIDDataset(Dataset):
    """Training patches (``train=True``) or whole/center-cropped evaluation images.

    Holds only cache paths and per-pair numbers, so it pickles cheaply into workers.
    A training "epoch" is ``length`` random patches (training counts iterations, not epochs).
    Training indices are sample numbers of the run's patch stream, any number from 0 on: the
    pair and the crop of sample ``n`` depend on ``(seed, n)`` alone (datamodules/patch_stream.py),
    so a resumed run trains on the patches the uninterrupted one would have.
    """

    def __init__(
        self,
        pairs: Sequence[CachedPair],
        *,
        train: bool,
        patch_size: int = 512,
        amplification: str = "estimated",
        m: float = DEFAULT_M,
        max_ratio: float = MAX_AMPLIFICATION,
        hflip_prob: float = 0.5,
        vflip_prob: float = 0.2,
        transpose_prob: float = 0.0,
        length: int | None = None,
        full_image: bool = True,
        seed: int = 0,
    ) -> None:
        if not pairs:
            raise ConfigError("SIDDataset got no pairs: the split is empty")
        self.pairs = list(pairs)
        self.train = train
        self.patch = patch_size // 2
        self.full_image = full_image
        self.hflip_prob, self.vflip_prob = hflip_prob, vflip_prob
        self.transpose_prob = transpose_prob
        self.amplifications = [p.amplification(amplification, m, max_ratio) for p in self.pairs]
        self.length = length if length is not None else len(self.pairs)
        self.seed = int(seed)
        if train or not full_image:
            for pair in self.pairs:
                _, h, w = pair.short.shape
                if h < self.patch or w < self.patch:
                    raise ConfigError(
                        f"data.patch_size={patch_size} is larger than {pair.pair.short} "
                        f"({2 * h}x{2 * w} after cropping to multiples of {CROP_MULTIPLE}); "
                        "use a smaller patch_size"
                    )

    def __len__(self) -> int:
        return self.length

    def plan(self, height: int, width: int, rng: np.random.Generator) -> PatchPlan:
        """Random even-offset crop and flips; a flipped axis reserves one extra packed line."""
        p = self.patch
        draws = rng.random(3)
        vflip = bool(draws[0] < self.vflip_prob) and height > p
        hflip = bool(draws[1] < self.hflip_prob) and width > p
        transpose = bool(draws[2] < self.transpose_prob)
        y = int(rng.integers(0, height - p - int(vflip) + 1))
        x = int(rng.integers(0, width - p - int(hflip) + 1))
        return PatchPlan(y=y, x=x, hflip=hflip, vflip=vflip, transpose=transpose)

    def pair_index(self, index: int) -> int:
        if self.train:
            return pair_of_sample(self.seed, index, len(self.pairs))
        return index % len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair_index = self.pair_index(index)
        pair, amplification = self.pairs[pair_index], self.amplifications[pair_index]
        short, long = pair.short.open(), pair.long.open()
        try:
            _, height, width = short.shape
            if self.train:
                plan = self.plan(height, width, sample_rng(self.seed, index))
                packed, target = read_window(
                    short,
                    long,
                    plan.y,
                    plan.x,
                    self.patch + int(plan.vflip),
                    self.patch + int(plan.hflip),
                )
                packed, target = bayer_augment(
                    packed, target, self.patch, plan.hflip, plan.vflip, plan.transpose
                )
            elif self.full_image:
                packed, target = read_window(short, long, 0, 0, height, width)
            else:
                y, x = (height - self.patch) // 2, (width - self.patch) // 2
                packed, target = read_window(short, long, y, x, self.patch, self.patch)
        finally:
            del short, long  # unmap now: mapped pages would otherwise count in worker RSS
        item = _to_tensors(packed, target, pair, amplification)
        if self.train:
            # The sample number, so the data module can tell how far the stream was trained.
            item["sample"] = torch.tensor(index, dtype=torch.int64)
        return item


#: Stop and requeue signals belong to the training process. ``timeout``, ``kill -- -PGID``, a
#: terminal's Ctrl-C and SLURM (preemption, time limit, ``--signal=USR1@90``) signal the whole
#: process group; a loader worker left at the default action dies, and the training loop, which
#: is finishing its step to save ``last.ckpt``, then fails with "DataLoader worker is killed by
#: signal" instead (callbacks/last_checkpoint.py). The main process ends its workers itself.
WORKER_IGNORED_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGUSR1", "SIGUSR2") if hasattr(signal, name)
)


def _obey_sigterm_from_the_parent_only() -> None:
    """SIGTERM ends this worker when the training process sends it, and only then.

    The training process (PyTorch's loader shutdown, multiprocessing's exit handler) ends its
    workers with SIGTERM and waits for them, so a worker that ignored SIGTERM outright would
    hang every exit that finds a live loader. A SIGTERM from anyone else (``timeout``, SLURM,
    ``kill -- -PGID``) is the training process's to handle, and is dropped here; PyTorch's own
    worker handler would die of it. The sender is only known to ``sigwaitinfo`` here: SIGTERM is
    blocked and a thread waits for it. Where that call does not exist (macOS), PyTorch's handler
    stays.
    """
    if not hasattr(signal, "sigwaitinfo"):
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # this thread and those it starts

    def wait_for_the_parent() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
            pass
        # What PyTorch's own worker SIGTERM handler (which this replaces) does when the parent
        # asks: a quiet, successful exit, so the parent does not report a killed worker.
        os._exit(0)

    threading.Thread(target=wait_for_the_parent, name="darkraw-sigterm", daemon=True).start()


def _worker_init(_worker_id: int) -> None:
    """One intra-op thread per worker (workers already run in parallel); stop signals are the
    main process's (:data:`WORKER_IGNORED_SIGNALS`, :func:`_obey_sigterm_from_the_parent_only`)."""
    torch.set_num_threads(1)
    for signum in WORKER_IGNORED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    _obey_sigterm_from_the_parent_only()


# --------------------------------------------------------------------------- selection


def select_scenes(scenes: Sequence[str], fraction: float, seed: int) -> list[str]:
    """A reproducible ``fraction`` of the scenes (rounded, at least one), chosen by ``seed``."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"data.fraction={fraction} must be in (0, 1]")
    unique = sorted(set(scenes))
    if not unique:
        return []
    count = max(1, round(fraction * len(unique)))
    order = np.random.default_rng(seed).permutation(len(unique))
    return sorted(unique[i] for i in order[:count])


def _plain(value: Any) -> Any:
    """Hydra hands nested settings over as OmegaConf containers; the generator wants plain ones."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover
        return value
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


# --------------------------------------------------------------------------- data modules


def validation_overlap_warning(train_pairs: Sequence[CachedPair],
                               val_pairs: Sequence[CachedPair]) -> str | None:
    """Say so when validation scenes are also trained on, as in the authors' subset.

    The authors trained on the train and validation scenes together: with ``pairs=authors``
    val/psnr, the best checkpoint and the plateau alarm then measure fit to training images,
    not how the model does on scenes it has not seen. Only the test scenes tell that.
    """
    trained = {pair.scene for pair in train_pairs}
    shared = sorted({pair.scene for pair in val_pairs} & trained)
    if not shared:
        return None
    return (
        f"{len(shared)} of the validation scenes are also training scenes (e.g. {shared[0]}), as "
        "in the authors' recipe (data.pairs=authors trains on train + val scenes): val/psnr and "
        "the best checkpoint measure fit to training images. For a held-out score use the test "
        "split (test_after_fit=true, or eval.py split=test), or data.pairs=lists"
    )


@dataclass(frozen=True)
class _PendingBatch:
    """A training batch transferred to the device and not yet trained, as Lightning counts."""

    batches_before: int  #: the patch-stream batches trained before it
    ready_before: int  #: Lightning's count of batches made ready before it (``total.ready``)


def _train_batch_progress(trainer: L.Trainer) -> Any:
    """Lightning's training-batch counters (ready, started, processed, completed)."""
    return trainer.fit_loop.epoch_loop.batch_progress


class SIDDataModule(L.LightningDataModule):
    """SID Sony pairs from the cache; every argument is a plain value from conf/data/sid.yaml.

    ``batch_size`` is the global batch (divided by the number of devices in ``setup``);
    ``patches_per_epoch`` is the length of the training dataset; ``fraction`` keeps that share
    of the training scenes; validation and test run on full images with batch size 1.
    """

    def __init__(
        self,
        root: str,
        cache_dir: str,
        pairs: str = "lists",
        amplification: str = "estimated",
        m: float = DEFAULT_M,
        max_ratio: float = MAX_AMPLIFICATION,
        patch_size: int = 512,
        batch_size: int = 8,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        hflip_prob: float = 0.5,
        vflip_prob: float = 0.2,
        transpose_prob: float = 0.0,
        fraction: float = 1.0,
        seed: int = 0,
        patches_per_epoch: int | None = None,
        val_max_images: int | None = None,
        full_image_eval: bool = True,
        cache_workers: int | None = None,
        verify_cache: bool = False,
        progress: bool = True,
    ) -> None:
        super().__init__()
        self._check(pairs, amplification, m, max_ratio, patch_size, batch_size, num_workers)
        for key, value in (
            ("hflip_prob", hflip_prob),
            ("vflip_prob", vflip_prob),
            ("transpose_prob", transpose_prob),
        ):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"data.{key}={value} must be a probability in [0, 1]")
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"data.fraction={fraction} must be in (0, 1]")
        if patches_per_epoch is not None and patches_per_epoch < 1:
            raise ConfigError(f"data.patches_per_epoch={patches_per_epoch} must be >= 1 or null")
        if val_max_images is not None and val_max_images < 1:
            raise ConfigError(f"data.val_max_images={val_max_images} must be >= 1 or null")
        self.save_hyperparameters()
        self.root, self.cache_dir = Path(root), Path(cache_dir)
        self.pairs, self.amplification, self.m, self.max_ratio = pairs, amplification, m, max_ratio
        self.patch_size, self.batch_size = patch_size, batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.persistent_workers = persistent_workers
        self.hflip_prob, self.vflip_prob = hflip_prob, vflip_prob
        self.transpose_prob = transpose_prob
        self.fraction, self.seed = fraction, seed
        self.patches_per_epoch, self.val_max_images = patches_per_epoch, val_max_images
        self.full_image_eval = full_image_eval
        self.cache_workers, self.progress = cache_workers, progress
        self.verify_cache = verify_cache
        self.index: CacheIndex | None = None
        self.train_scenes: list[str] = []
        self.per_device_batch_size = batch_size
        self.datasets: dict[str, SIDDataset] = {}
        # Training batches consumed so far, over every launch of the run: where the patch
        # stream continues after a resume (saved in the checkpoint by ``state_dict``).
        self.batches_trained = 0
        #: The batch transferred last while Lightning had not yet marked it processed.
        self._pending: _PendingBatch | None = None
        #: The splits cached and set up; None: all. eval.py sets its one split, so that scoring
        #: the test images on a fresh cache does not first decode every training pair.
        self.only_splits: tuple[Split, ...] | None = None
        #: Set once prepare_data has built (or checked) everything in this process.
        self._data_prepared = False

    @staticmethod
    def _check(
        pairs: str,
        amplification: str,
        m: float,
        max_ratio: float,
        patch_size: int,
        batch_size: int,
        num_workers: int,
    ) -> None:
        if pairs not in PAIR_SOURCES:
            raise ConfigError(f"data.pairs={pairs!r} is not allowed; choose one of {PAIR_SOURCES}")
        if amplification not in AMPLIFICATION_MODES:
            raise ConfigError(
                f"data.amplification={amplification!r} is not allowed; choose one of "
                f"{AMPLIFICATION_MODES}"
            )
        if m <= 0:
            raise ConfigError(f"data.m={m} must be positive (the paper trains with 5)")
        if max_ratio < 1:
            raise ConfigError(f"data.max_ratio={max_ratio} must be >= 1 (SID uses 300)")
        if patch_size < CROP_MULTIPLE or patch_size % CROP_MULTIPLE:
            raise ConfigError(
                f"data.patch_size={patch_size} must be a positive multiple of {CROP_MULTIPLE} "
                "(full-resolution pixels; the network downsamples by 32), e.g. 512"
            )
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size} must be >= 1")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers={num_workers} must be >= 0")

    # ----------------------------------------------------------------------- Lightning hooks

    def prepare_data(self) -> None:
        """Build or complete the cache; Lightning runs this on one process per node.

        Done once per process: train.py prepares the data before the loggers start and
        Lightning's own call then finds it done (a second ``data.verify_cache=true`` pass over
        the whole cache would cost minutes for nothing).
        """
        if self._data_prepared:
            return
        build_cache(
            self.root,
            self.cache_dir,
            self.pairs,
            self.cache_workers,
            self.progress,
            verify=self.verify_cache,
            splits=self.only_splits,
        )
        self._data_prepared = True

    def _world_size(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.world_size) if trainer is not None else 1

    def setup(self, stage: str | None = None) -> None:
        world = self._world_size()
        if self.batch_size % world:
            raise ConfigError(
                f"data.batch_size={self.batch_size} is the global batch and must divide evenly "
                f"over {world} devices; use a multiple of {world}"
            )
        self.per_device_batch_size = self.batch_size // world
        if self.index is None:
            self.index = open_cache(self.root, self.cache_dir, self.pairs, self.only_splits)
        index = self.index
        common = {
            "patch_size": self.patch_size,
            "amplification": self.amplification,
            "m": self.m,
            "max_ratio": self.max_ratio,
        }
        self.datasets = {}
        if "train" in index.splits:
            train_pairs = index.splits["train"]
            self.train_scenes = select_scenes([p.scene for p in train_pairs], self.fraction,
                                              self.seed)
            keep = set(self.train_scenes)
            train_pairs = [p for p in train_pairs if p.scene in keep]
            self.datasets["train"] = SIDDataset(
                train_pairs,
                train=True,
                hflip_prob=self.hflip_prob,
                vflip_prob=self.vflip_prob,
                transpose_prob=self.transpose_prob,
                length=self.patches_per_epoch or max(len(train_pairs), self.batch_size),
                seed=self.seed,
                **common,
            )
        if "val" in index.splits:
            self.datasets["val"] = SIDDataset(
                index.splits["val"][: self.val_max_images],
                train=False,
                full_image=self.full_image_eval,
                **common,
            )
        if "test" in index.splits:
            self.datasets["test"] = SIDDataset(
                index.splits["test"], train=False, full_image=self.full_image_eval, **common
            )
        counts = [f"{split} {len(dataset.pairs)}" for split, dataset in self.datasets.items()]
        if "train" in self.datasets:
            counts[0] += (f" pairs from {len(self.train_scenes)} scenes "
                          f"(fraction {self.fraction:.2f})")
        log_once(log, logging.INFO, "SID %s pairs: %s", self.pairs, ", ".join(counts))
        if "train" in self.datasets and "val" in self.datasets:
            message = validation_overlap_warning(self.datasets["train"].pairs,
                                                 self.datasets["val"].pairs)
            if message:
                log_once(log, logging.WARNING, message)

    def _loader(self, split: str, batch_size: int, shuffle: bool,
                sampler: PatchStreamSampler | None = None) -> DataLoader:
        if split not in self.datasets:
            if self.datasets:  # set up for other splits (only_splits)
                raise RuntimeError(f"{split}_dataloader(): this data module was set up for "
                                   f"{', '.join(self.datasets)} only (only_splits)")
            raise RuntimeError(f"call setup() before {split}_dataloader()")
        workers = self.num_workers
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            drop_last=sampler is not None,
            num_workers=workers,
            # Pinned memory only speeds up copies to a GPU; without one PyTorch warns each run.
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and workers > 0,
            worker_init_fn=_worker_init if workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        sampler = PatchStreamSampler(
            samples_per_epoch=len(self.datasets["train"]) if "train" in self.datasets else 0,
            batch_per_rank=self.per_device_batch_size,
            num_replicas=int(trainer.world_size) if trainer is not None else 1,
            rank=int(trainer.global_rank) if trainer is not None else 0,
            start_batch=self.batches_trained,
        )
        return self._loader("train", self.per_device_batch_size, shuffle=False, sampler=sampler)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Note how far the patch stream has been trained, from the batch's sample numbers.

        Read off the samples rather than counted: Lightning also passes other inputs through
        this hook (the model summary's example input), and a count would drift.
        """
        trainer = getattr(self, "trainer", None)
        if (trainer is not None and trainer.training and isinstance(batch, Mapping)
                and "sample" in batch):
            reached = int(batch["sample"].max()) // self.batch_size + 1
            if reached > self.batches_trained:
                self._pending = _PendingBatch(
                    batches_before=self.batches_trained,
                    ready_before=_train_batch_progress(trainer).total.ready)
                self.batches_trained = reached
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"batches_trained": self._batches_in_saved_weights(), **self._train_set_identity()}

    def _train_set_identity(self) -> dict[str, Any]:
        """What the patch stream draws from: the training pairs, in order (sample ``n``'s pair
        is an index into them), as a count and a digest of their names."""
        dataset = self.datasets.get("train")
        if dataset is None:
            return {}
        names = "\n".join(pair.name for pair in dataset.pairs).encode()
        return {"train_pairs": len(dataset.pairs),
                "train_pairs_digest": hashlib.sha256(names).hexdigest()[:16]}

    def _say_if_the_train_set_changed(self, saved: Mapping[str, Any]) -> None:
        """A resume on another training set continues on other patches: say so, once.

        The settings are compared before training (darkraw/resume.py), but not the data: files
        added to the set, a new pair list or another ``data.root`` under the same settings
        changed every later patch of an "exact" resume without a word.
        """
        now = self._train_set_identity()
        if not now or "train_pairs_digest" not in saved:
            return  # no training set here, or a checkpoint from before the digest
        if saved["train_pairs_digest"] == now["train_pairs_digest"]:
            return
        trainer = getattr(self, "trainer", None)
        if trainer is not None and not trainer.is_global_zero:
            return
        then, pairs = saved.get("train_pairs"), now["train_pairs"]
        how = (f"{then} training pairs then, {pairs} now" if then != pairs else
               f"{pairs} training pairs then and now, but not the same ones or not in the same "
               "order")
        log.warning(
            "the checkpoint's run trained on another training set than %s holds (%s). Its "
            "patch stream continues at batch %d of this set, so the run goes on with other "
            "patches than it would have: to resume it exactly, give it the set it trained on; "
            "to train on this set from the start, relaunch with resume=false",
            self.root, how, self.batches_trained)

    def _batches_in_saved_weights(self) -> int:
        """The batches trained as of a checkpoint written now, counted as Lightning counts them.

        A batch counts from the moment Lightning marks it processed (its optimizer step done):
        a checkpoint written between its transfer and then (SLURM's requeue signal saves
        ``hpc_ckpt`` in the middle of a step) holds the weights, step and loop counters of the
        batch before, and Lightning resumes it at that batch, so the patch stream must too.
        Counting the batch at transfer made a requeued run skip one batch of patches.
        """
        pending, trainer = self._pending, getattr(self, "trainer", None)
        if pending is None or trainer is None:
            return self.batches_trained
        if _train_batch_progress(trainer).total.processed > pending.ready_before:
            return self.batches_trained
        return pending.batches_before

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the patch stream after the batches the checkpoint's run had trained.

        A checkpoint from before the patch stream existed has no count: the stream then starts
        over at its first batch, as every resume did then.
        """
        self.batches_trained = int(state_dict.get("batches_trained", 0))
        self._pending = None
        self._say_if_the_train_set_changed(state_dict)

    def _eval_batch(self) -> int:
        return 1 if self.full_image_eval else self.per_device_batch_size

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self._eval_batch(), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self._eval_batch(), shuffle=False)


class SyntheticSIDDataModule(SIDDataModule):
    """The same pipeline on a generated SID-style set: runs anywhere, with no download."""

    def __init__(self, *args: Any, synthetic: Mapping[str, Any] | None = None, **kwargs: Any):
        # Plain before super().__init__: save_hyperparameters reads this frame's locals, and an
        # OmegaConf object in a checkpoint makes Lightning's weights-only loading refuse it.
        synthetic = dict(_plain(synthetic) or {})
        from darkraw.instantiate import check_known_keys
        from datamodules.synthetic import generate_synthetic_sid

        # Refused here, by name: generate_synthetic_sid would fail on it only in prepare_data.
        check_known_keys(generate_synthetic_sid, synthetic, prefix="data.synthetic")
        for key, owner in (("progress", "data.progress"), ("replace_other_set", "eval.py")):
            if key in synthetic:
                raise ConfigError(f"data.synthetic.{key} is not a setting of the data set: "
                                  f"{owner} decides it (remove the key)")
        super().__init__(*args, **kwargs)
        self.synthetic = synthetic
        #: False in eval.py: a set generated with other settings is refused, not replaced.
        self.replace_other_set = True

    def prepare_data(self) -> None:
        from datamodules.synthetic import generate_synthetic_sid

        if self._data_prepared:
            return
        options = {"progress": self.progress, **self.synthetic,
                   "replace_other_set": self.replace_other_set}
        generate_synthetic_sid(self.root, **options)
        super().prepare_data()
