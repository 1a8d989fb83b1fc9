"""Exponential moving average of a module's parameters (state_dict layout of the original LitEma)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class LitEma(nn.Module):
    """Keeps one buffer per trainable parameter, named by its path with the dots removed."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, use_num_updates: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError("EMA decay must be between 0 and 1")
        self.m_name2s_name: dict[str, str] = {}
        self.register_buffer("decay", torch.tensor(decay, dtype=torch.float32))
        self.register_buffer("num_updates", torch.tensor(0 if use_num_updates else -1, dtype=torch.int))
        for name, p in model.named_parameters():
            if p.requires_grad:
                s_name = name.replace(".", "")
                self.m_name2s_name[name] = s_name
                self.register_buffer(s_name, p.clone().detach().data)
        self.collected_params: list[torch.Tensor] = []

    @torch.no_grad()
    def forward(self, model: nn.Module) -> None:
        """Update the averages from `model` (called once per optimisation step, not during inference)."""
        decay = float(self.decay)
        if self.num_updates >= 0:
            self.num_updates += 1
            decay = min(decay, (1 + int(self.num_updates)) / (10 + int(self.num_updates)))
        one_minus_decay = 1.0 - decay
        shadow = dict(self.named_buffers())
        for name, p in model.named_parameters():
            if p.requires_grad and name in self.m_name2s_name:
                s = shadow[self.m_name2s_name[name]]
                s.sub_(one_minus_decay * (s - p.detach().to(s.dtype)))

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        shadow = dict(self.named_buffers())
        for name, p in model.named_parameters():
            if name in self.m_name2s_name:
                p.data.copy_(shadow[self.m_name2s_name[name]].data)

    def store(self, parameters: Iterable[torch.Tensor]) -> None:
        self.collected_params = [p.clone() for p in parameters]

    def restore(self, parameters: Iterable[torch.Tensor]) -> None:
        for c_param, param in zip(self.collected_params, parameters):
            param.data.copy_(c_param.data)
