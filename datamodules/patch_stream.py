"""The training patch stream: sample ``n`` of a run is a pure function of ``(seed, n)``.

Why: a run stopped and resumed (SIGTERM, preemption, a SLURM requeue, Ctrl-C) must train on the
very patches the uninterrupted run would have. With a shuffling sampler and crops drawn from the
workers' random state, every relaunch re-seeded both and replayed the stream from step 0: each
requeue of a long job trained on the same first patches again, and a resumed run silently
differed from an uninterrupted one. Here nothing is carried in random state:

- the global batch of optimiser step ``j`` is samples ``j * B .. (j + 1) * B - 1`` (``B`` =
  ``data.batch_size``); rank ``r`` of ``R`` takes its contiguous ``B / R`` of them, so a DDP run
  trains on exactly the samples of a one-device run with the same global batch;
- sample ``n`` is pair ``permutation(seed, n // P)[n % P]`` of the ``P`` training pairs (every
  pair once per ``P`` samples, in a fresh order each time) with a crop and flips from
  ``default_rng((seed, n))``; the number of loader workers changes nothing;
- the data module counts the training batches consumed and stores the count in the checkpoint;
  a resumed run's sampler starts at that batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np
from torch.utils.data import DistributedSampler

#: Separate stream names, so the pair order and the crops never share random numbers.
PAIR_ORDER_STREAM = 0
PATCH_STREAM = 1


@lru_cache(maxsize=4)
def pair_order(seed: int, cycle: int, pairs: int) -> np.ndarray:
    """The order of the ``pairs`` training pairs in cycle ``cycle`` (``pairs`` samples long)."""
    return np.random.default_rng((seed, PAIR_ORDER_STREAM, cycle)).permutation(pairs)


def pair_of_sample(seed: int, sample: int, pairs: int) -> int:
    """Which training pair sample number ``sample`` is cut from."""
    return int(pair_order(seed, sample // pairs, pairs)[sample % pairs])


def sample_rng(seed: int, sample: int) -> np.random.Generator:
    """The random numbers of sample ``sample`` alone: its crop position and flips."""
    return np.random.default_rng((seed, PATCH_STREAM, sample))


class PatchStreamSampler(DistributedSampler):
    """Yields this rank's sample numbers, epoch after epoch, from a resume point on.

    A ``DistributedSampler`` so that Lightning, which replaces any other sampler by its own
    under DDP (or wraps it, re-sharding indices that are sharded already), leaves it as it is.
    ``super().__init__`` is not called: it wants a dataset and a process group, neither needed.

    An epoch is ``batches_per_epoch`` optimiser steps. The sampler keeps its own cursor (the
    next global batch) instead of trusting ``set_epoch``: after a resume mid-epoch the first
    epoch yields only its remaining batches, and the epochs after it start where they should.
    """

    def __init__(self, *, samples_per_epoch: int, batch_per_rank: int, num_replicas: int = 1,
                 rank: int = 0, start_batch: int = 0) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} is not one of {num_replicas} ranks")
        self.num_replicas, self.rank = num_replicas, rank
        self.batch_per_rank = batch_per_rank
        self.global_batch = batch_per_rank * num_replicas
        self.batches_per_epoch = max(1, samples_per_epoch // self.global_batch)
        self.next_batch = start_batch
        #: The first global batch of this launch (the checkpoint's count on a resume).
        self.start_batch = start_batch
        # What code that inspects a DistributedSampler reads (Lightning, RankReport).
        self.epoch, self.shuffle, self.seed, self.drop_last = 0, True, 0, True
        self.num_samples = self.batches_per_epoch * batch_per_rank
        self.total_size = self.num_samples * num_replicas

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # kept for inspection only: the cursor decides what comes next

    def batches_of_next_epoch(self) -> range:
        """The global batch numbers the next ``iter`` yields: up to the next epoch boundary."""
        start = self.next_batch
        end = (start // self.batches_per_epoch + 1) * self.batches_per_epoch
        return range(start, end)

    def samples_of_batch(self, batch: int) -> range:
        first = batch * self.global_batch + self.rank * self.batch_per_rank
        return range(first, first + self.batch_per_rank)

    def first_samples(self, count: int) -> list[int]:
        """This rank's first ``count`` sample numbers of this launch, wherever the cursor is.

        Not from the cursor: loader workers start iterating before training does (Lightning
        creates the iterator first), which moves the cursor to the next epoch already.
        """
        samples: list[int] = []
        batch = self.start_batch
        while len(samples) < count:
            samples.extend(self.samples_of_batch(batch))
            batch += 1
        return samples[:count]

    def __iter__(self) -> Iterator[int]:
        batches = self.batches_of_next_epoch()
        # The loader reads indices ahead of training; an epoch's indices are all trained before
        # the next ``iter``, and a stop mid-epoch resumes from the checkpoint's count instead.
        self.next_batch = batches.stop
        for batch in batches:
            yield from self.samples_of_batch(batch)
