"""Module and Parameter, with torch.nn's names: ``named_parameters`` (dotted names), ``parameters``,
``train``/``eval``, ``zero_grad``, ``state_dict``/``load_state_dict``.

A Module finds its parameters and sub-modules by walking its attributes in the order they were set,
descending into lists of modules (``blocks.0.…``), so no registration calls are needed.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from minisage.autograd import Tensor


class Parameter(Tensor):
    """A leaf tensor that a Module owns and an optimizer updates (it always requires grad)."""

    __slots__ = ()

    def __init__(self, data, name: str | None = None):
        super().__init__(data, requires_grad=True, name=name)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class Module:
    """Base class: subclasses set Parameters, Modules and lists of Modules as attributes."""

    training: bool = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{name}.{i}", item

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """Every parameter with its dotted name, e.g. ``blocks.0.attention.self.query.weight``."""
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
        for name, child in self.named_children():
            yield from child.named_parameters(prefix=f"{prefix}{name}.")

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def modules(self) -> Iterator[Module]:
        yield self
        for _, child in self.named_children():
            yield from child.modules()

    def train(self, mode: bool = True) -> Module:
        for module in self.modules():
            module.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of every parameter's array, by dotted name (exact: no conversion)."""
        return {name: p.data.copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict[str, np.ndarray], strict: bool = True) -> None:
        """Copy arrays into the parameters, in place. Checks every name, shape and dtype first,
        so a mismatch raises ValueError and changes nothing. ``strict=False`` allows names
        missing on either side (e.g. loading a pretrained body under a new head)."""
        own = dict(self.named_parameters())
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if strict and (missing or unexpected):
            raise ValueError(
                f"load_state_dict: missing parameters {missing}, unexpected {unexpected}"
            )
        for name in set(own) & set(state):
            value = np.asarray(state[name])
            if value.shape != own[name].shape or value.dtype != own[name].dtype:
                raise ValueError(
                    f"load_state_dict: {name} has shape {value.shape} and dtype {value.dtype}, "
                    f"the model expects {own[name].shape} and {own[name].dtype}"
                )
        for name in set(own) & set(state):
            own[name].data[...] = state[name]
