"""The torch optimizers across processes: DistributedDataParallel and FSDP2 (``fully_shard``).

Two processes (spawned, not forked: the test process may already run jax's and BLAS's threads,
which a fork does not survive; gloo on the loopback interface only, rendezvous through a file,
so no port is chosen by hand) each train on half of a batch; their parameters after three steps must
equal one process trained on the whole batch. The only difference is the order of the gradient
averaging (a sum over ranks, then a division), so float64 agrees to rounding: 1e-12 relative
(measured: about 1e-16). Skipped where torch, gloo or a loopback interface is missing;
FSDP2 where this torch has no ``fully_shard``.
"""

from __future__ import annotations

import os
import socket

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
mp = pytest.importorskip("torch.multiprocessing")

from minisage.backends import torch as tb  # noqa: E402

LOOPBACK = next((n for _, n in socket.if_nameindex() if n.startswith("lo")), None) \
    if hasattr(socket, "if_nameindex") else None
pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available() and LOOPBACK),
    reason="needs torch.distributed with gloo and a loopback interface")

STEPS = 3
# the official presets clip each tensor at 0.05, so that the clipping (whose norm FSDP2 takes
# over the shards of every rank) is active
OPTIMIZERS = {"AdamWSAGE": {"lr": 1e-2, "max_grad_norm": 0.05},
              "AdamaxSAGE": {"lr": 1e-2, "max_grad_norm": 0.05},
              "AdamSAGE": {"lr": 1e-2}}


def _batch():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(8, 4, generator=g, dtype=torch.float64),
            torch.randn(8, 2, generator=g, dtype=torch.float64))


def _model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(),
                               torch.nn.Linear(6, 2)).double()


def _train(named, model, name, x, y):
    """STEPS steps of optimizer ``name`` on (x, y); SAGE on the first layer and the last weight."""
    groups = tb.sage_param_groups(named, sage_patterns=("0.", "2.weight"), on_no_sage="raise")
    opt = getattr(tb, name)(groups, **OPTIMIZERS[name])
    for _ in range(STEPS):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


def _child(rank: int, folder: str, modes: list[str]) -> None:
    """In each mode, train a fresh model with each optimizer on this rank's half of the batch;
    rank 0 saves the whole parameters (one file per mode). One pair of processes does every
    mode: starting one costs seconds, the training milliseconds."""
    os.environ["GLOO_SOCKET_IFNAME"] = LOOPBACK  # this process only
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank,
                            world_size=2)
    try:
        for mode in modes:
            _train_mode(rank, folder, mode)
    finally:
        dist.destroy_process_group()


def _train_mode(rank: int, folder: str, mode: str) -> None:
    """One mode (``ddp`` or ``fsdp2``) of :func:`_child`."""
    results = {}
    for name in OPTIMIZERS:
        model = _model()
        if mode == "ddp":
            model = torch.nn.parallel.DistributedDataParallel(model)
            named = [(n.removeprefix("module."), p) for n, p in model.named_parameters()]
        else:
            from torch.distributed.fsdp import fully_shard

            for layer in (model[0], model[2]):
                fully_shard(layer)
            fully_shard(model)
            named = list(model.named_parameters())
        x, y = _batch()
        half = slice(4 * rank, 4 * rank + 4)
        _train(named, model, name, x[half], y[half])
        results[name] = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p)
                         .detach().clone() for n, p in named}
    if rank == 0:
        torch.save(results, f"{folder}/{mode}.pt")


def _fsdp2_available() -> bool:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The folder where the two processes saved each mode's parameters."""
    folder = tmp_path_factory.mktemp("distributed")
    modes = ["ddp", "fsdp2"] if _fsdp2_available() else ["ddp"]
    mp.start_processes(_child, args=(str(folder), modes), nprocs=2, start_method="spawn")
    return folder


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_two_processes_equal_one_on_the_whole_batch(mode, trained):
    if mode == "fsdp2" and not _fsdp2_available():
        pytest.skip(f"torch {torch.__version__} has no torch.distributed.fsdp.fully_shard")
    results = torch.load(trained / f"{mode}.pt", weights_only=True)
    for name in OPTIMIZERS:
        model = _model()
        x, y = _batch()
        _train(list(model.named_parameters()), model, name, x, y)
        for n, p in model.named_parameters():
            expected = p.detach()
            assert not torch.equal(expected, _model().state_dict()[n])  # it trained
            torch.testing.assert_close(results[name][n], expected, rtol=1e-12, atol=1e-15,
                                       msg=f"{name}: {n}")
