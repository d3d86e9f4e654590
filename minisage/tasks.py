"""Seeded toy tasks, generated on the fly, each learnable on a 2-core CPU in well under a minute.

- ``sort``: a causal language-model task. Input ``x1..xn SEP``, the model continues with the sorted
  digits; only the answer positions are scored (the rest carry ``IGNORE``).
- ``modular``: classify ``(a + b) mod p`` from ``CLS a b``, trained on a random part of all pairs
  and evaluated on the held-out rest: a task with a real generalization gap.
- ``finetune``: the fine-tuning pair, the setting where the paper reports SAGE's gains. Sequences
  are random walks mod 16 whose step sizes (1, 2 or 3) follow one of two distributions.
  Pretraining is a masked-language-model task on many walks (``task.pretrain``); fine-tuning
  classifies which step distribution produced a walk, from a labeled set (2,048 walks by
  default; with 256 the model memorizes them, a useful contrast).

Every task is a :class:`Task` with three :class:`Split`\\ s of integer arrays: ``train`` and ``val``
drawn with the task's ``seed`` (a seed gives a new training set), and ``test``, which is the same
for every seed and is meant to be evaluated only for the final report, never for choosing
settings. The finetune task's pretraining corpus is the same for every seed too, so that every run
fine-tunes the same pretrained model. The same seed gives the same arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

IGNORE = -100  # target value for positions that are not scored (cross_entropy's ignore_index)
#: the random streams that every seed shares: the test split and the pretraining corpus
TEST_STREAM, PRETRAIN_STREAM = 2**31 - 1, 2**31 - 2


@dataclass(frozen=True)
class Split:
    ids: np.ndarray  # (N, T) int64 token ids
    targets: np.ndarray  # (N,) class labels, or (N, T) next/masked tokens with IGNORE elsewhere

    def __len__(self) -> int:
        return len(self.ids)

    def head(self, n: int) -> Split:
        """The first ``n`` rows (all of them when there are fewer)."""
        return Split(self.ids[:n], self.targets[:n])


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
    test: Split
    description: str = ""
    #: the best accuracy any classifier can reach on this task (None where not known)
    bayes_accuracy: float | None = None
    pretrain: Task | None = field(default=None, repr=False)  # the "finetune" task's first stage


def _check_size(name: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def sort_task(seed: int = 0, length: int = 5, digits: int = 8, n_train: int = 4096,
              n_val: int = 512, n_test: int = 1024) -> Task:
    """Causal LM: ``x1..xn SEP`` followed by the sorted digits. Vocabulary: digits, then SEP."""
    n_train = _check_size("sort: n_train", n_train, 1)
    sep = digits

    def sequences(rng, n):  # ids (n, 2 length), targets (n, 2 length)
        inputs = rng.integers(0, digits, (n, length))
        full = np.concatenate([inputs, np.full((n, 1), sep), np.sort(inputs, axis=1)], axis=1)
        ids, targets = full[:, :-1], full[:, 1:].copy()  # predict token t+1 from tokens <= t
        targets[:, :length] = IGNORE  # score only the sorted answer
        return Split(ids, targets)

    both = sequences(np.random.default_rng(seed), n_train + n_val)
    return Task(
        name="sort", head="lm", causal=True, vocab_size=digits + 1, seq_len=2 * length,
        num_classes=0, train=both.head(n_train),
        val=Split(both.ids[n_train:], both.targets[n_train:]),
        test=sequences(np.random.default_rng(TEST_STREAM), n_test), bayes_accuracy=1.0,
        description=f"sort {length} digits in [0, {digits}) (causal LM, answer tokens scored)",
    )


def modular_task(seed: int = 0, modulus: int = 17, n_train: int | None = None,
                 val_fraction: float = 0.15) -> Task:
    """Classify (a + b) mod p from ``CLS a b``. All p^2 pairs are split at random (by ``seed``)
    into train (``n_train`` pairs, default 60%), val (``val_fraction``) and test (the rest).
    The test pairs are held out of that seed's training, so accuracy on them is generalization."""
    total = modulus * modulus
    n_train = round(0.6 * total) if n_train is None else n_train
    n_val = round(val_fraction * total)
    n_train = _check_size("modular: n_train", n_train, 1)
    if n_train + n_val >= total:
        raise ValueError(f"modular: n_train must be < {total - n_val} (of {total} pairs, "
                         f"{n_val} are validation and at least one is test), got {n_train}")
    cls = modulus
    a, b = np.divmod(np.random.default_rng(seed).permutation(total), modulus)
    ids = np.stack([np.full_like(a, cls), a, b], axis=1)  # (p^2, 3)
    labels = (a + b) % modulus
    cut = np.cumsum([n_train, n_val])
    parts = [Split(i, t) for i, t in zip(np.split(ids, cut), np.split(labels, cut))]
    return Task(
        name="modular", head="classify", causal=False, vocab_size=modulus + 1, seq_len=3,
        num_classes=modulus, train=parts[0], val=parts[1], test=parts[2], bayes_accuracy=1.0,
        description=f"(a + b) mod {modulus}, {n_train} of {total} pairs for training",
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


def walk_bayes_accuracy(length: int = 16) -> float:
    """The accuracy of the Bayes classifier on walks of ``length`` tokens (equally likely kinds).

    Only the counts of steps matter: the likelihood ratio of kind 0 to kind 1 is
    ``(p1/p3)^(n1 - n3)`` with ``p1/p3 = 0.45/0.30 > 1``, so the best guess is kind 0 when
    ``n1 > n3``, kind 1 when ``n3 > n1``, and either on a tie. By symmetry its accuracy is
    ``P(n1 > n3 | kind 0) + P(n1 = n3 | kind 0) / 2``, summed exactly over the multinomial.
    """
    n, (p1, p2, p3) = length - 1, WALK_STEP_PROBS[0]
    accuracy = 0.0
    for n1 in range(n + 1):
        for n3 in range(n + 1 - n1):
            n2 = n - n1 - n3
            # multinomial probability of the counts (n1, n2, n3) under kind 0
            prob = (math.factorial(n) / (math.factorial(n1) * math.factorial(n2)
                                         * math.factorial(n3)) * p1**n1 * p2**n2 * p3**n3)
            accuracy += prob * (1.0 if n1 > n3 else 0.5 if n1 == n3 else 0.0)
    return accuracy


def finetune_task(seed: int = 0, length: int = 16, n_pretrain: int = 8192, n_labeled: int = 2048,
                  n_val: int = 1024, n_test: int = 4096, mask_fraction: float = 0.15) -> Task:
    """Fine-tune: classify a walk's kind from ``n_labeled`` labeled walks (drawn with ``seed``),
    after masked-LM pretraining on a corpus that every seed shares.

    Vocabulary: states 0..15, then CLS (16), then MASK (17). Every sequence starts with CLS.
    """
    n_labeled = _check_size("finetune: n_labeled", n_labeled, 1)
    cls, mask = WALK_STATES, WALK_STATES + 1
    vocab = WALK_STATES + 2

    def with_cls(walks):
        return np.concatenate([np.full((len(walks), 1), cls), walks], axis=1)  # (N, 1 + length)

    # Pretraining: replace a random 15% of walk tokens by MASK and predict them.
    rng = np.random.default_rng(PRETRAIN_STREAM)
    walks, _ = _random_walks(rng, n_pretrain + 1024, length)
    ids = with_cls(walks)
    masked = np.zeros(ids.shape, dtype=bool)
    masked[:, 1:] = rng.random(walks.shape) < mask_fraction
    targets = np.where(masked, ids, IGNORE)
    ids = np.where(masked, mask, ids)
    pretrain_split = Split(ids[n_pretrain:], targets[n_pretrain:])
    pretrain = Task(
        name="finetune-pretrain", head="lm", causal=False, vocab_size=vocab, seq_len=length + 1,
        num_classes=0, train=Split(ids[:n_pretrain], targets[:n_pretrain]),
        val=pretrain_split, test=pretrain_split,
        description="masked-LM pretraining on random walks mod 16",
    )

    def labeled(rng, n):
        walks, kinds = _random_walks(rng, n, length)
        return Split(with_cls(walks), kinds)

    both = labeled(np.random.default_rng(seed), n_labeled + n_val)
    return Task(
        name="finetune", head="classify", causal=False, vocab_size=vocab, seq_len=length + 1,
        num_classes=2, train=both.head(n_labeled),
        val=Split(both.ids[n_labeled:], both.targets[n_labeled:]),
        test=labeled(np.random.default_rng(TEST_STREAM), n_test), pretrain=pretrain,
        bayes_accuracy=walk_bayes_accuracy(length),
        description=f"classify a walk's step distribution from {n_labeled} labeled walks, "
        "after masked-LM pretraining",
    )


TASKS = {"sort": sort_task, "modular": modular_task, "finetune": finetune_task}
#: each task's argument for the size of its training split
TRAIN_SIZE = {"sort": "n_train", "modular": "n_train", "finetune": "n_labeled"}


def make_task(name: str, seed: int = 0, n_train: int | None = None) -> Task:
    """The task called ``name`` (one of ``TASKS``), generated with ``seed``; ``n_train``: the
    size of its training split (the labeled set of ``finetune``), None for the task's default."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    sizes = {} if n_train is None else {TRAIN_SIZE[name]: n_train}
    return TASKS[name](seed=seed, **sizes)
