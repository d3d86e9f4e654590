"""Seeded toy tasks, generated on the fly, each learnable on a 2-core CPU in well under a minute.

- ``sort``: a causal language-model task. Input ``x1..xn SEP``, the model continues with the sorted
  digits; only the answer positions are scored (the rest carry ``IGNORE``).
- ``modular``: classify ``(a + b) mod p`` from ``CLS a b``, trained on a random part of all pairs
  and evaluated on the held-out rest: a task with a real generalization gap.
- ``finetune``: the fine-tuning pair, the setting where the paper reports SAGE's gains. Sequences
  are random walks mod 16 whose step sizes (1, 2 or 3) follow one of two distributions.
  Pretraining is a masked-language-model task on many walks (``task.pretrain``); fine-tuning
  classifies which step distribution produced a walk, from a small labeled set.

Every task is a :class:`Task` with a ``train`` and a ``val`` :class:`Split` of integer arrays. The
same ``seed`` gives the same arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IGNORE = -100  # target value for positions that are not scored (cross_entropy's ignore_index)


@dataclass(frozen=True)
class Split:
    ids: np.ndarray  # (N, T) int64 token ids
    targets: np.ndarray  # (N,) class labels, or (N, T) next/masked tokens with IGNORE elsewhere

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Task:
    name: str
    head: str  # "lm" (per-position logits) or "classify" (first-token pooling)
    causal: bool
    vocab_size: int
    seq_len: int
    num_classes: int
    train: Split
    val: Split
    description: str = ""
    pretrain: Task | None = field(default=None, repr=False)  # the "finetune" task's first stage

    def batches(self, rng: np.random.Generator, batch_size: int):
        """An endless stream of training batches, reshuffled every epoch with ``rng``."""
        n = len(self.train)
        while True:
            order = rng.permutation(n)
            for start in range(0, n - batch_size + 1, batch_size):
                rows = order[start:start + batch_size]
                yield self.train.ids[rows], self.train.targets[rows]


def sort_task(seed: int = 0, length: int = 5, digits: int = 8, n_train: int = 4096,
              n_val: int = 512) -> Task:
    """Causal LM: ``x1..xn SEP`` followed by the sorted digits. Vocabulary: digits, then SEP."""
    rng = np.random.default_rng(seed)
    sep = digits
    n = n_train + n_val
    inputs = rng.integers(0, digits, (n, length))
    sequences = np.concatenate([inputs, np.full((n, 1), sep), np.sort(inputs, axis=1)], axis=1)
    ids, targets = sequences[:, :-1], sequences[:, 1:].copy()  # predict token t+1 from tokens <= t
    targets[:, :length] = IGNORE  # score only the sorted answer
    return Task(
        name="sort", head="lm", causal=True, vocab_size=digits + 1, seq_len=ids.shape[1],
        num_classes=0, train=Split(ids[:n_train], targets[:n_train]),
        val=Split(ids[n_train:], targets[n_train:]),
        description=f"sort {length} digits in [0, {digits}) (causal LM, answer tokens scored)",
    )


def modular_task(seed: int = 0, modulus: int = 17, train_fraction: float = 0.6) -> Task:
    """Classify (a + b) mod p from ``CLS a b``; the pairs are split at random into train and val."""
    rng = np.random.default_rng(seed)
    cls = modulus
    a, b = np.divmod(rng.permutation(modulus * modulus), modulus)
    ids = np.stack([np.full_like(a, cls), a, b], axis=1)  # (p^2, 3)
    labels = (a + b) % modulus
    n_train = int(round(train_fraction * len(ids)))
    return Task(
        name="modular", head="classify", causal=False, vocab_size=modulus + 1, seq_len=3,
        num_classes=modulus, train=Split(ids[:n_train], labels[:n_train]),
        val=Split(ids[n_train:], labels[n_train:]),
        description=f"(a + b) mod {modulus}, {train_fraction:.0%} of pairs for training",
    )


# Step-size distributions of the two kinds of walk (steps 1, 2, 3), mirror images of each other.
WALK_STEP_PROBS = np.array([[0.45, 0.25, 0.30], [0.30, 0.25, 0.45]])
WALK_STATES = 16


def _random_walks(rng: np.random.Generator, n: int, length: int):
    """n walks mod 16 of ``length`` tokens and the kind (0 or 1) of each."""
    kinds = rng.integers(0, 2, n)
    cumulative = WALK_STEP_PROBS.cumsum(axis=1)[kinds]  # (n, 3)
    steps = 1 + (rng.random((n, length - 1, 1)) > cumulative[:, None, :2]).sum(axis=2)
    start = rng.integers(0, WALK_STATES, (n, 1))
    walks = (start + np.concatenate([np.zeros((n, 1), int), steps.cumsum(axis=1)], axis=1))
    return walks % WALK_STATES, kinds


def finetune_task(seed: int = 0, length: int = 16, n_pretrain: int = 8192, n_labeled: int = 256,
                  n_val: int = 1024, mask_fraction: float = 0.15) -> Task:
    """Fine-tune: classify a walk's kind from 256 labeled walks, after masked-LM pretraining.

    Vocabulary: states 0..15, then CLS (16), then MASK (17). Every sequence starts with CLS.
    """
    rng = np.random.default_rng(seed)
    cls, mask = WALK_STATES, WALK_STATES + 1
    vocab = WALK_STATES + 2

    def with_cls(walks):
        return np.concatenate([np.full((len(walks), 1), cls), walks], axis=1)  # (N, 1 + length)

    # Pretraining: replace a random 15% of walk tokens by MASK and predict them.
    walks, _ = _random_walks(rng, n_pretrain + 1024, length)
    ids = with_cls(walks)
    masked = np.zeros(ids.shape, dtype=bool)
    masked[:, 1:] = rng.random(walks.shape) < mask_fraction
    targets = np.where(masked, ids, IGNORE)
    ids = np.where(masked, mask, ids)
    pretrain = Task(
        name="finetune-pretrain", head="lm", causal=False, vocab_size=vocab, seq_len=length + 1,
        num_classes=0, train=Split(ids[:n_pretrain], targets[:n_pretrain]),
        val=Split(ids[n_pretrain:], targets[n_pretrain:]),
        description="masked-LM pretraining on random walks mod 16",
    )
    walks, kinds = _random_walks(rng, n_labeled + n_val, length)
    ids = with_cls(walks)
    return Task(
        name="finetune", head="classify", causal=False, vocab_size=vocab, seq_len=length + 1,
        num_classes=2, train=Split(ids[:n_labeled], kinds[:n_labeled]),
        val=Split(ids[n_labeled:], kinds[n_labeled:]), pretrain=pretrain,
        description=f"classify a walk's step distribution from {n_labeled} labeled walks, "
        "after masked-LM pretraining",
    )


TASKS = {"sort": sort_task, "modular": modular_task, "finetune": finetune_task}


def make_task(name: str, seed: int = 0) -> Task:
    """The task called ``name`` (one of ``TASKS``), generated with ``seed``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name](seed=seed)
